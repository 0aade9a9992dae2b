package policy

// Kernel tests: the real nft, real packets, inside throwaway network
// namespaces (skipped when not root, and with -short). The topology:
//
//	a 10.244.1.2 ─┐
//	b 10.244.1.3 ─┼─ cni0 10.244.1.1/24 ── node ── eth0 192.168.56.11 ── router 192.168.56.100 ── far 192.168.57.2
//	c 10.244.1.4 ─┘   (bridge, br_netfilter)          (ip_forward)         (the far link has MTU 1000)
//
// The policies are API objects, resolved by Resolve and written by the
// Enforcer inside the node; a DNAT rule in a table of the test's own stands
// in for the Service proxy (10.96.0.10:80 -> b:8080).

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/knftables"

	"github.com/podnet/podnet/internal/netnstest"
)

type kernelLab struct {
	node, router, far *netnstest.NS
	pods              map[string]*netnstest.NS // by name
	objs              []*corev1.Pod
	nss               []*corev1.Namespace
	enf               *Enforcer
}

var kernelPods = []struct{ name, ip, app string }{
	{"a", "10.244.1.2", "pod-a"}, {"b", "10.244.1.3", "pod-b"}, {"c", "10.244.1.4", "pod-c"},
}

func requireKernel(t *testing.T) {
	t.Helper()
	netnstest.RequireNFT(t)
}

func writeSysctl(t *testing.T, ns *netnstest.NS, path, v string) {
	t.Helper()
	if err := ns.Do(func() error { return os.WriteFile(path, []byte(v), 0o644) }); err != nil {
		t.Fatalf("%s in %s: %v", path, ns.Name, err)
	}
}

func newKernelLab(t *testing.T) *kernelLab {
	t.Helper()
	k := &kernelLab{node: netnstest.New(t, "plnode"), router: netnstest.New(t, "plrtr"), far: netnstest.New(t, "plfar"),
		pods: map[string]*netnstest.NS{}}
	n := k.node
	n.MustRun(t, "ip", "link", "set", "lo", "up")
	n.MustRun(t, "ip", "link", "add", "cni0", "type", "bridge")
	n.MustRun(t, "ip", "addr", "add", "10.244.1.1/24", "dev", "cni0")
	n.MustRun(t, "ip", "link", "set", "cni0", "up")
	for i, p := range kernelPods {
		pod := netnstest.New(t, "plpod"+p.name)
		k.pods[p.name] = pod
		host := fmt.Sprintf("veth%d", i+1)
		n.MustRun(t, "ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", pod.Name)
		n.MustRun(t, "ip", "link", "set", host, "master", "cni0")
		n.MustRun(t, "ip", "link", "set", host, "type", "bridge_slave", "hairpin", "on")
		n.MustRun(t, "ip", "link", "set", host, "up")
		pod.MustRun(t, "ip", "link", "set", "lo", "up")
		pod.MustRun(t, "ip", "addr", "add", p.ip+"/24", "dev", "eth0")
		pod.MustRun(t, "ip", "link", "set", "eth0", "up")
		pod.MustRun(t, "ip", "route", "add", "default", "via", "10.244.1.1")
		obj := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: p.name, Labels: map[string]string{"app": p.app}},
			Spec:   corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "c"}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.ip}}
		k.objs = append(k.objs, obj)
	}
	// "web" is 8080 on b and 9090 on c: one name, two numbers.
	k.objs[1].Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "web", ContainerPort: 8080}}
	k.objs[2].Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "web", ContainerPort: 9090}}
	k.nss = []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "default", Labels: map[string]string{"kubernetes.io/metadata.name": "default"}}}}

	n.MustRun(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", k.router.Name)
	n.MustRun(t, "ip", "addr", "add", "192.168.56.11/24", "dev", "eth0")
	n.MustRun(t, "ip", "link", "set", "eth0", "up")
	n.MustRun(t, "ip", "route", "add", "192.168.57.0/24", "via", "192.168.56.100")
	r := k.router
	r.MustRun(t, "ip", "link", "set", "lo", "up")
	r.MustRun(t, "ip", "addr", "add", "192.168.56.100/24", "dev", "eth0")
	r.MustRun(t, "ip", "link", "set", "eth0", "up")
	r.MustRun(t, "ip", "route", "add", "10.244.1.0/24", "via", "192.168.56.11")
	r.MustRun(t, "ip", "route", "add", "10.96.0.0/12", "via", "192.168.56.11")
	// far's end keeps MTU 1500 (so its MSS does not shrink a's segments):
	// the router must send "fragmentation needed".
	r.MustRun(t, "ip", "link", "add", "eth1", "mtu", "1000", "type", "veth", "peer", "name", "eth0", "netns", k.far.Name)
	r.MustRun(t, "ip", "addr", "add", "192.168.57.1/24", "dev", "eth1")
	r.MustRun(t, "ip", "link", "set", "eth1", "up")
	f := k.far
	f.MustRun(t, "ip", "link", "set", "lo", "up")
	f.MustRun(t, "ip", "addr", "add", "192.168.57.2/24", "dev", "eth0")
	f.MustRun(t, "ip", "link", "set", "eth0", "up")
	f.MustRun(t, "ip", "route", "add", "default", "via", "192.168.57.1")
	for _, ns := range []*netnstest.NS{n, r} {
		writeSysctl(t, ns, "/proc/sys/net/ipv4/ip_forward", "1")
	}
	writeSysctl(t, n, "/proc/sys/net/bridge/bridge-nf-call-iptables", "1")

	// The stand-in for the Service proxy: DNAT before the policy's hook.
	n.MustRun(t, "nft", "add table ip svc; add chain ip svc pre { type nat hook prerouting priority -100; }; "+
		"add rule ip svc pre ip daddr 10.96.0.10 tcp dport 80 dnat to 10.244.1.3:8080; "+
		"add chain ip svc post { type nat hook postrouting priority 100; }; "+
		"add rule ip svc post ct status dnat ip saddr 10.244.1.3 ip daddr 10.244.1.3 masquerade")
	k.enf = NewEnforcer(netnstest.GuardedNFT(t, n, knftables.InetFamily, TableName), Config{Conntrack: NewConntrack()})
	return k
}

// apply resolves policies against the lab's pods and syncs them into the
// node, as podnetd does.
func (k *kernelLab) apply(t *testing.T, policies ...*networkingv1.NetworkPolicy) {
	t.Helper()
	pp, problems := Resolve(policies, k.objs, k.nss)
	if len(problems) > 0 {
		t.Fatalf("resolve: %v", problems)
	}
	if err := k.node.Do(func() error { return k.enf.Sync(context.Background(), pp) }); err != nil {
		t.Fatalf("sync: %v", err)
	}
}

// listen starts TCP servers on ports in ns that answer with name, and a UDP
// echo on 5353.
func listen(t *testing.T, ns *netnstest.NS, name string, ports ...int) {
	t.Helper()
	for _, port := range ports {
		var ln net.Listener
		if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); return err }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					_, _ = c.Write([]byte(name))
					// after the client's half-close: how much came
					n, _ := io.Copy(io.Discard, c)
					_, _ = fmt.Fprintf(c, " %d", n)
				}()
			}
		}()
	}
	var pc net.PacketConn
	if err := ns.Do(func() (err error) { pc, err = net.ListenPacket("udp", ":5353"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(name), from)
		}
	}()
}

// outcome of one TCP connect from ns to addr: "answered NAME", "timed out"
// (dropped) or the error.
func tcpOutcome(ns *netnstest.NS, addr string) string {
	var c net.Conn
	err := ns.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr, 700*time.Millisecond); return err })
	if err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return "timed out"
		}
		return err.Error()
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, 16)
	n, _ := c.Read(b)
	return "answered " + string(b[:n])
}

func udpOutcome(ns *netnstest.NS, addr string) string {
	var c net.Conn
	if err := ns.Do(func() (err error) { c, err = net.Dial("udp", addr); return err }); err != nil {
		return err.Error()
	}
	defer c.Close()
	_, _ = c.Write([]byte("hi"))
	_ = c.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
	b := make([]byte, 16)
	n, err := c.Read(b)
	if err != nil {
		return "timed out"
	}
	return "answered " + string(b[:n])
}

type probe struct {
	from, to string // pod name or "node", "router", "far"; to may be an address
	port     int
	want     string // the peer's name, or "" for dropped
}

func (k *kernelLab) ns(name string) *netnstest.NS {
	switch name {
	case "node":
		return k.node
	case "router":
		return k.router
	case "far":
		return k.far
	}
	return k.pods[name]
}

func labAddr(name string) string {
	for _, p := range kernelPods {
		if p.name == name {
			return p.ip
		}
	}
	return map[string]string{"node": "10.244.1.1", "router": "192.168.56.100", "far": "192.168.57.2"}[name]
}

func (k *kernelLab) check(t *testing.T, probes ...probe) {
	t.Helper()
	for _, p := range probes {
		to := p.to
		if !strings.Contains(to, ".") {
			to = labAddr(to)
		}
		got := tcpOutcome(k.ns(p.from), fmt.Sprintf("%s:%d", to, p.port))
		want := "timed out"
		if p.want != "" {
			want = "answered " + p.want
		}
		if got != want {
			t.Errorf("%s -> %s:%d: %s, want %s", p.from, p.to, p.port, got, want)
		}
	}
}

func netpol(name string, spec networkingv1.NetworkPolicySpec) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name}, Spec: spec}
}

func app(a string) metav1.LabelSelector {
	return metav1.LabelSelector{MatchLabels: map[string]string{"app": a}}
}

func tcpPort(p int) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(intstr.FromInt32(int32(p)))}
}

func TestKernelPolicy(t *testing.T) {
	requireKernel(t)
	k := newKernelLab(t)
	for _, n := range []string{"a", "b", "c"} {
		listen(t, k.pods[n], n, 8080, 9090)
	}
	listen(t, k.node, "node", 8080)
	listen(t, k.router, "router", 8080)
	listen(t, k.far, "far", 8080)

	// allow-from-pod-a, seed 001: b takes 8080 from a only.
	allowFromA := netpol("allow-from-pod-a", networkingv1.NetworkPolicySpec{PodSelector: app("pod-b"),
		Ingress: []networkingv1.NetworkPolicyIngressRule{{
			From:  []networkingv1.NetworkPolicyPeer{{PodSelector: ptr.To(app("pod-a"))}},
			Ports: []networkingv1.NetworkPolicyPort{tcpPort(8080)}}}})

	t.Run("no policy: everything open", func(t *testing.T) {
		k.apply(t)
		k.check(t, probe{"a", "b", 8080, "b"}, probe{"c", "b", 8080, "b"}, probe{"router", "b", 9090, "b"}, probe{"b", "far", 8080, "far"})
	})

	t.Run("allow-from-pod-a: same bridge, from outside, through the Service, hairpin", func(t *testing.T) {
		k.apply(t, allowFromA)
		k.check(t,
			probe{"a", "b", 8080, "b"},            // allowed peer and port
			probe{"a", "b", 9090, ""},             // allowed peer, other port
			probe{"c", "b", 8080, ""},             // other pod, same bridge
			probe{"router", "b", 8080, ""},        // from outside the node
			probe{"node", "b", 9090, "b"},         // the node itself (kubelet's probes)
			probe{"b", "a", 8080, "a"},            // b's egress is not isolated
			probe{"a", "10.96.0.10", 80, "b"},     // through the Service: the backend's policy
			probe{"c", "10.96.0.10", 80, ""},      // ... governs the ClusterIP too
			probe{"b", "10.96.0.10", 80, ""},      // hairpin: b is not pod-a
			probe{"router", "10.96.0.10", 80, ""}, // from outside through the Service
		)
		if got := udpOutcome(k.pods["a"], "10.244.1.3:5353"); got != "timed out" {
			t.Errorf("UDP a -> b:5353 with a TCP-only policy: %s, want timed out", got)
		}
	})

	t.Run("tightening cuts established flows it forbids; loosening keeps every flow", func(t *testing.T) {
		k.apply(t)
		c := dialKeep(t, k.pods["c"], "10.244.1.3:8080") // will be forbidden
		a := dialKeep(t, k.pods["a"], "10.244.1.3:8080") // stays allowed
		k.apply(t, allowFromA)
		if err := roundTrip(c); err == nil {
			t.Error("c's connection to b still carries data after allow-from-pod-a forbade it")
		}
		if err := roundTrip(a); err != nil {
			t.Errorf("a's connection to b, still allowed, broke: %v", err)
		}
		k.check(t, probe{"c", "b", 8080, ""})
		a2 := dialKeep(t, k.pods["a"], "10.244.1.3:8080")
		k.apply(t) // loosen: a's flow keeps going
		if err := roundTrip(a2); err != nil {
			t.Errorf("a's connection broke when the policy was removed: %v", err)
		}
	})

	t.Run("deny log: each drop names the pod, direction and policy, and is counted", func(t *testing.T) {
		k.apply(t, allowFromA)
		drops := k.readDrops(t)
		time.Sleep(100 * time.Millisecond) // bound
		k.check(t, probe{"c", "b", 8080, ""})
		select {
		case d := <-drops:
			want := Drop{Chain: chainName(Ingress, nn("default", "b")), Src: netip.MustParseAddr("10.244.1.4"),
				Dst: netip.MustParseAddr("10.244.1.3"), Proto: 6, Port: 8080}
			if d != want {
				t.Errorf("logged %+v, want %+v", d, want)
			}
			info, ok := k.enf.Chain(d.Chain)
			if !ok || info.Pod != nn("default", "b") || info.Direction != Ingress || len(info.By) != 1 || info.By[0] != "default/allow-from-pod-a" {
				t.Errorf("chain %s stands for %+v (%v), want ingress of default/b by default/allow-from-pod-a", d.Chain, info, ok)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("no drop logged")
		}
		var counts map[string]uint64
		if err := k.node.Do(func() (err error) { counts, err = k.enf.Drops(context.Background()); return err }); err != nil {
			t.Fatal(err)
		}
		// the SYN and its retransmits
		if n := counts[chainName(Ingress, nn("default", "b"))]; n < 1 {
			t.Errorf("drop counters %v: none for b's ingress", counts)
		}
	})

	t.Run("ipBlock with except, from outside", func(t *testing.T) {
		k.apply(t, netpol("from-outside", networkingv1.NetworkPolicySpec{PodSelector: app("pod-b"),
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				IPBlock: &networkingv1.IPBlock{CIDR: "192.168.0.0/16", Except: []string{"192.168.57.0/24"}}}}}}}))
		k.check(t, probe{"router", "b", 9090, "b"}, probe{"far", "b", 9090, ""}, probe{"a", "b", 8080, ""})
		k.apply(t, netpol("from-outside", networkingv1.NetworkPolicySpec{PodSelector: app("pod-b"),
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				IPBlock: &networkingv1.IPBlock{CIDR: "192.168.0.0/16"}}}}}}))
		k.check(t, probe{"router", "b", 9090, "b"}, probe{"far", "b", 9090, "b"})
	})

	t.Run("egress by named port: one name, two numbers", func(t *testing.T) {
		k.apply(t, netpol("web-only", networkingv1.NetworkPolicySpec{PodSelector: app("pod-a"),
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{
				{Port: ptr.To(intstr.FromString("web"))}}}}}))
		k.check(t,
			probe{"a", "b", 8080, "b"}, probe{"a", "b", 9090, ""}, // web is 8080 on b
			probe{"a", "c", 9090, "c"}, probe{"a", "c", 8080, ""}, // and 9090 on c
			probe{"a", "node", 8080, ""}, // the node's own address is egress too (input hook)
			probe{"a", "far", 8080, ""},
			probe{"b", "c", 8080, "c"}, // b is not isolated
		)
	})

	t.Run("egress endPort range and UDP", func(t *testing.T) {
		k.apply(t, netpol("range", networkingv1.NetworkPolicySpec{PodSelector: app("pod-a"),
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{
				{Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(intstr.FromInt32(8000)), EndPort: ptr.To(int32(8100))},
				{Protocol: ptr.To(corev1.ProtocolUDP), Port: ptr.To(intstr.FromInt32(5353))}}}}}))
		k.check(t, probe{"a", "b", 8080, "b"}, probe{"a", "b", 9090, ""}, probe{"a", "far", 8080, "far"})
		if got := udpOutcome(k.pods["a"], "10.244.1.4:5353"); got != "answered c" {
			t.Errorf("UDP a -> c:5353 allowed by port: %s", got)
		}
	})

	t.Run("fragmentation needed reaches an isolated pod: path MTU discovery works", func(t *testing.T) {
		// a may only talk to far:8080 and takes no ingress at all; the
		// router's link to far has MTU 1000, so a's 1500-byte packets
		// (DF set) come back as ICMP "fragmentation needed", which must
		// pass as related, or the transfer stalls.
		k.apply(t, netpol("only-far", networkingv1.NetworkPolicySpec{PodSelector: app("pod-a"),
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{
				To:    []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "192.168.57.2/32"}}},
				Ports: []networkingv1.NetworkPolicyPort{tcpPort(8080)}}}}))
		k.pods["a"].MustRun(t, "ip", "route", "flush", "cache")
		var c net.Conn
		if err := k.pods["a"].Do(func() (err error) { c, err = net.DialTimeout("tcp", "192.168.57.2:8080", time.Second); return err }); err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(make([]byte, 1<<20)); err != nil {
			t.Fatalf("1 MiB to far through the MTU-1000 link: %v", err)
		}
		_ = c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		if want := fmt.Sprintf("far %d", 1<<20); string(got) != want || err != nil {
			t.Errorf("far says %q (%v), want %q", got, err, want)
		}
		out := k.pods["a"].MustRun(t, "ip", "route", "get", "192.168.57.2")
		if !strings.Contains(out, "mtu 1000") {
			t.Errorf("a's route to far learned no path MTU: %s", out)
		}
		k.check(t, probe{"router", "a", 8080, ""})
	})

	t.Run("restart: a new Enforcer adopts the table without a gap", func(t *testing.T) {
		k.apply(t, allowFromA)
		k.enf = NewEnforcer(netnstest.GuardedNFT(t, k.node, knftables.InetFamily, TableName), Config{Conntrack: NewConntrack()})
		k.apply(t, allowFromA)
		k.check(t, probe{"a", "b", 8080, "b"}, probe{"c", "b", 8080, ""})
	})

	t.Run("pods gone: their chains are emptied, then deleted", func(t *testing.T) {
		k.apply(t, allowFromA)
		k.apply(t)
		k.check(t, probe{"c", "b", 8080, "b"})
		time.Sleep(staleChainDelay)
		k.apply(t)
		out := k.node.MustRun(t, "nft", "list", "table", "inet", TableName)
		if strings.Contains(out, "chain "+ingressPrefix) || strings.Contains(out, "set "+ingressPrefix) {
			t.Errorf("stale pod objects left:\n%s", out)
		}
	})

	t.Run("cleanup deletes the table", func(t *testing.T) {
		k.apply(t, allowFromA)
		if err := k.node.Do(func() error { return k.enf.Cleanup(context.Background()) }); err != nil {
			t.Fatal(err)
		}
		if out, err := k.node.Run("nft", "list", "table", "inet", TableName); err == nil {
			t.Errorf("table still there:\n%s", out)
		}
		k.check(t, probe{"c", "b", 8080, "b"})
	})
}

// readDrops reads the node's deny log (ReadDrops) until the test ends.
func (k *kernelLab) readDrops(t *testing.T) <-chan Drop {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	drops := make(chan Drop, 64)
	done := make(chan error, 1)
	go func() {
		done <- k.node.Do(func() error { return ReadDrops(ctx, LogGroup, func(d Drop) { drops <- d }) })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ReadDrops: %v", err)
		}
	})
	return drops
}

// dialKeep opens a TCP connection from ns and reads the server's name.
func dialKeep(t *testing.T, ns *netnstest.NS, addr string) net.Conn {
	t.Helper()
	var c net.Conn
	if err := ns.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr, time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	b := make([]byte, 16)
	if _, err := c.Read(b); err != nil {
		t.Fatalf("connect to %s: %v", addr, err)
	}
	return c
}

// roundTrip writes on c and waits for the server's TCP acknowledgement:
// the server answers nothing (it discards), so a tiny write followed by a
// half-close shows whether the stream still works: the server, seeing EOF,
// writes its byte count.
func roundTrip(c net.Conn) error {
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
	b := make([]byte, 32)
	n, err := c.Read(b)
	if n > 0 {
		return nil
	}
	return err
}

func nn(ns, name string) types.NamespacedName { return types.NamespacedName{Namespace: ns, Name: name} }

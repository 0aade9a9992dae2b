package kernel

// podnet first in a conflist, followed by the reference meta plugins
// (containernetworking/plugins v1.9.1): portmap, bandwidth, firewall and
// tuning. Every assertion is about an outcome — bytes that arrive or do
// not, a sysctl's value, a qdisc in the kernel, what DEL leaves behind.
//
// The topology of every test here, all of it inside throwaway namespaces:
//
//	client (192.168.56.20) ── veth ── uplink0 (192.168.56.11) node ── cni0 (10.244.x.1) ── veth ── eth0 pod

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/cnitest"
	"github.com/podnet/podnet/internal/netnstest"
	"github.com/podnet/podnet/pkg/ipam"
	"github.com/podnet/podnet/pkg/wire"
)

const (
	nodeAddr   = "192.168.56.11" // the node's address on its uplink
	clientAddr = "192.168.56.20" // a machine on the node's L2 segment
	uplinkName = "uplink0"       // the node's end of the uplink veth
	hostPort   = 18080
)

// TestChain runs ADD, CHECK and DEL of [podnet, portmap, bandwidth,
// firewall, tuning], at the current spec version and at 0.4.0 (the oldest
// the firewall plugin speaks).
func TestChain(t *testing.T) {
	for _, v := range []string{"1.1.0", "0.4.0"} {
		t.Run(v, func(t *testing.T) { testChain(t, v) })
	}
}

func testChain(t *testing.T, version string) {
	cnitest.RefDir(t, "portmap", "bandwidth", "firewall", "tuning")
	node := cnitest.NewNode(t)
	pod := cnitest.NewPod(t, "pod")
	client := netnstest.New(t, "client")
	uplink(t, node, client)
	serve(t, pod.NS, ":80", greet)
	serve(t, client, clientAddr+":9000", greet)

	subnet := netip.MustParsePrefix("10.244.1.0/24")
	const network = "chain"
	list := cnitest.List(t, version, network,
		node.PodnetConf(subnet.String(), ""),
		`{"type":"portmap","backend":"nftables","capabilities":{"portMappings":true}}`,
		`{"type":"bandwidth","capabilities":{"bandwidth":true}}`,
		`{"type":"firewall","backend":"iptables"}`,
		`{"type":"tuning","sysctl":{"net.ipv4.conf.eth0.accept_redirects":"0"}}`)
	rt := pod.RT()
	const rate, burst = 100_000_000, 10_000_000 // bits/s and bits: present, never in the way
	rt.CapabilityArgs = map[string]any{
		"portMappings": []map[string]any{{"hostPort": hostPort, "containerPort": 80, "protocol": "tcp"}},
		"bandwidth":    map[string]any{"ingressRate": rate, "ingressBurst": burst, "egressRate": rate, "egressBurst": burst},
	}

	res, err := node.Add(list, rt)
	if err != nil {
		t.Fatalf("ADD of the chain: %v", err)
	}
	// prevResult flowed through all four plugins: the chain's final result
	// still names podnet's eth0 in the pod with its address, and the host
	// veth podnet created (bandwidth found the veth through it).
	cur, podIP := podAddress(t, res, pod, subnet)
	hostVeth := wire.HostName(pod.ContainerID, pod.IfName)
	if !hasInterface(cur, hostVeth, "") {
		t.Errorf("the chain's result lost the host veth %s: %v", hostVeth, cur.Interfaces)
	}
	// bandwidth appended its ifb: the result went through bandwidth and on
	// through firewall and tuning unchanged.
	ifb := ""
	for _, in := range cur.Interfaces {
		if strings.HasPrefix(in.Name, "bwp") {
			ifb = in.Name
		}
	}
	if ifb == "" {
		t.Errorf("the chain's result has no ifb device from bandwidth: %v", cur.Interfaces)
	}

	// tuning: the sysctl is set on the pod's eth0, and it is not the value
	// the interface would have had anyway.
	if got := sysctl(t, pod.NS, "net.ipv4.conf.default.accept_redirects"); got != "1" {
		t.Errorf("default accept_redirects in the pod is %q; the test needs 1 to tell tuning's write apart", got)
	}
	if got := sysctl(t, pod.NS, "net.ipv4.conf.eth0.accept_redirects"); got != "0" {
		t.Errorf("tuning did not set net.ipv4.conf.eth0.accept_redirects in the pod: it is %q", got)
	}
	// bandwidth: its tbf shapes the host veth.
	if findTbf(qdiscs(t, node, hostVeth), rate/8) == nil {
		t.Errorf("no tbf with rate %d B/s on %s: %v", rate/8, hostVeth, qdiscs(t, node, hostVeth))
	}
	// portmap: the hostPort on the node's address reaches the pod, and the
	// pod sees the client's own address (no SNAT for a remote client).
	if got, err := fetch(client, nodeAddr, hostPort); err != nil || got != "hello "+clientAddr {
		t.Errorf("client → %s:%d (hostPort) = %q, %v; want %q", nodeAddr, hostPort, got, err, "hello "+clientAddr)
	}
	// firewall: with the node's FORWARD policy at DROP, the pod can still
	// open connections out (firewall accepts its address, which it read from
	// prevResult), while a new inbound forwarded connection is now dropped —
	// the witness that the policy bites and the pass above is firewall's.
	node.NS.MustRun(t, "iptables", "-P", "FORWARD", "DROP")
	if got, err := fetch(pod.NS, clientAddr, 9000); err != nil || got != "hello "+podIP.String() {
		t.Errorf("pod → client with FORWARD DROP = %q, %v; want %q (firewall's accept of the pod)", got, err, "hello "+podIP.String())
	}
	if got, err := fetchWithin(client, nodeAddr, hostPort, time.Second); !isTimeout(err) {
		t.Errorf("client → hostPort with FORWARD DROP = %q, %v; want a timeout (the policy must bite)", got, err)
	}

	if err := node.Check(list, rt); err != nil {
		t.Errorf("CHECK of the chain: %v", err)
	}
	// CHECK really reaches the last plugin with prevResult: undo tuning's
	// sysctl and CHECK must fail, restore it and CHECK passes again.
	pod.NS.MustRun(t, "sysctl", "-qw", "net.ipv4.conf.eth0.accept_redirects=1")
	if err := node.Check(list, rt); err == nil {
		t.Errorf("CHECK passed with tuning's sysctl undone")
	}
	pod.NS.MustRun(t, "sysctl", "-qw", "net.ipv4.conf.eth0.accept_redirects=0")
	if err := node.Check(list, rt); err != nil {
		t.Errorf("CHECK after restoring the sysctl: %v", err)
	}

	if err := node.Del(list, rt); err != nil {
		t.Fatalf("DEL of the chain: %v", err)
	}
	assertNodeClean(t, node, network)
	if _, err := pod.NS.Run("ip", "link", "show", "dev", pod.IfName); err == nil {
		t.Errorf("the pod still has %s after DEL", pod.IfName)
	}
	if err := node.Del(list, rt); err != nil {
		t.Errorf("second DEL of the chain: %v", err)
	}
}

// TestHostPort maps hostPort 18080 on the node to port 80 of the pod with
// portmap, through each of its backends, and connects from a client on the
// node's network (the honest case) and from the node itself to its own
// address. After DEL the same connection is refused.
func TestHostPort(t *testing.T) {
	for _, backend := range []string{"nftables", "iptables"} {
		t.Run(backend, func(t *testing.T) { testHostPort(t, backend) })
	}
}

func testHostPort(t *testing.T, backend string) {
	cnitest.RefDir(t, "portmap")
	node := cnitest.NewNode(t)
	if backend == "iptables" {
		if out, err := node.NS.Run("iptables", "-t", "nat", "-S"); err != nil {
			t.Skipf("iptables does not work in a network namespace here: %v: %s", err, out)
		}
	}
	pod := cnitest.NewPod(t, "pod")
	client := netnstest.New(t, "client")
	uplink(t, node, client)
	serve(t, pod.NS, ":80", greet)

	subnet := netip.MustParsePrefix("10.244.1.0/24")
	const network = "hostport"
	list := cnitest.List(t, "1.1.0", network, node.PodnetConf(subnet.String(), ""),
		fmt.Sprintf(`{"type":"portmap","backend":%q,"capabilities":{"portMappings":true}}`, backend))
	rt := pod.RT()
	rt.CapabilityArgs = map[string]any{
		"portMappings": []map[string]any{{"hostPort": hostPort, "containerPort": 80, "protocol": "tcp"}},
	}
	res, err := node.Add(list, rt)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	podAddress(t, res, pod, subnet)

	// The reply carries the source address the pod saw: the client's own
	// (DNAT only, no SNAT), and for the node's own connection the node's.
	if got, err := fetch(client, nodeAddr, hostPort); err != nil || got != "hello "+clientAddr {
		t.Errorf("client → %s:%d = %q, %v; want %q", nodeAddr, hostPort, got, err, "hello "+clientAddr)
	}
	if got, err := fetch(node.NS, nodeAddr, hostPort); err != nil || got != "hello "+nodeAddr {
		t.Errorf("node → its own %s:%d = %q, %v; want %q", nodeAddr, hostPort, got, err, "hello "+nodeAddr)
	}
	// localhost:hostPort needs what portmap does with snat (its default):
	// route_localnet on the interface towards the pod, so 127.0.0.1 may be
	// routed out of cni0, and a masquerade of 127.0.0.1 (the pod could not
	// answer it) to the node's address on cni0.
	gw := subnet.Addr().Next().String()
	if got, err := fetch(node.NS, "127.0.0.1", hostPort); err != nil || got != "hello "+gw {
		t.Errorf("node → 127.0.0.1:%d = %q, %v; want %q", hostPort, got, err, "hello "+gw)
	}
	if err := node.Check(list, rt); err != nil {
		t.Errorf("CHECK: %v", err)
	}

	if err := node.Del(list, rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	// Refused, not timed out or unreachable: with the DNAT gone the SYN is
	// delivered to the node itself, where nothing listens. A DNAT left
	// behind would send it towards the deleted pod instead.
	for _, from := range []*netnstest.NS{client, node.NS} {
		if got, err := fetch(from, nodeAddr, hostPort); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s → hostPort after DEL = %q, %v; want connection refused", from.Name, got, err)
		}
	}
	assertNodeClean(t, node, network)
}

// TestBandwidth shapes both directions of a pod with the bandwidth plugin:
// a tbf on the host veth for traffic to the pod, and an ingress qdisc
// redirecting the pod's traffic to an ifb with its own tbf. It measures
// that a transfer really takes as long as the rate says.
func TestBandwidth(t *testing.T) {
	cnitest.RefDir(t, "bandwidth")
	node := cnitest.NewNode(t)
	pod := cnitest.NewPod(t, "pod")
	const size = 1 << 20
	serve(t, pod.NS, ":81", func(c net.Conn) { // sink: count what arrives
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "%d", n)
	})
	serve(t, pod.NS, ":82", func(c net.Conn) { _, _ = c.Write(make([]byte, size)) }) // source

	subnet := netip.MustParsePrefix("10.244.3.0/24")
	const network = "bandwidth"
	list := cnitest.List(t, "1.1.0", network, node.PodnetConf(subnet.String(), ""),
		`{"type":"bandwidth","capabilities":{"bandwidth":true}}`)
	rt := pod.RT()
	// 4 Mbit/s = 500 kB/s each way: 1 MiB takes about two seconds, where an
	// unshaped veth moves it in milliseconds.
	const rate, burst = 4_000_000, 200_000
	rt.CapabilityArgs = map[string]any{"bandwidth": map[string]any{
		"ingressRate": rate, "ingressBurst": burst, "egressRate": rate, "egressBurst": burst}}
	res, err := node.Add(list, rt)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	cur, podIP := podAddress(t, res, pod, subnet)
	hostVeth := wire.HostName(pod.ContainerID, pod.IfName)

	// To the pod: a tbf at the root of the host veth.
	if findTbf(qdiscs(t, node, hostVeth), rate/8) == nil {
		t.Errorf("no root tbf with rate %d B/s on %s: %v", rate/8, hostVeth, qdiscs(t, node, hostVeth))
	}
	// From the pod: an ingress qdisc on the host veth, an ifb with a tbf.
	hasIngress := false
	for _, q := range qdiscs(t, node, hostVeth) {
		_, ok := q.(*netlink.Ingress)
		hasIngress = hasIngress || ok
	}
	if !hasIngress {
		t.Errorf("no ingress qdisc on %s: %v", hostVeth, qdiscs(t, node, hostVeth))
	}
	ifb := ""
	for _, in := range cur.Interfaces {
		if strings.HasPrefix(in.Name, "bwp") {
			ifb = in.Name
		}
	}
	if ifb == "" {
		t.Fatalf("bandwidth added no ifb to the result: %v", cur.Interfaces)
	}
	if findTbf(qdiscs(t, node, ifb), rate/8) == nil {
		t.Errorf("no tbf with rate %d B/s on the ifb %s: %v", rate/8, ifb, qdiscs(t, node, ifb))
	}

	in := timedSend(t, node.NS, podIP, 81, size)
	out := timedReceive(t, node.NS, podIP, 82, size)
	t.Logf("1 MiB to the pod in %v, from the pod in %v (limit %d bit/s each way)", in, out, rate)
	if in < time.Second {
		t.Errorf("1 MiB reached the pod in %v: the ingress limit of %d bit/s is not applied", in, rate)
	}
	if out < time.Second {
		t.Errorf("1 MiB left the pod in %v: the egress limit of %d bit/s is not applied", out, rate)
	}

	if err := node.Check(list, rt); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := node.Del(list, rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	assertNodeClean(t, node, network)
}

// ---- helpers shared by the kernel tests of this package ----

// uplink gives the node an address on a veth whose other end is eth0 of the
// client namespace, as a node's NIC on the underlay and another machine on
// it. Both ends are created where they live (never in the host's namespace).
func uplink(t *testing.T, node *cnitest.Node, client *netnstest.NS) {
	t.Helper()
	node.NS.MustRun(t, "ip", "link", "set", "lo", "up")
	node.NS.MustRun(t, "ip", "link", "add", uplinkName, "type", "veth", "peer", "name", "eth0", "netns", client.Name)
	node.NS.MustRun(t, "ip", "addr", "add", nodeAddr+"/24", "dev", uplinkName)
	node.NS.MustRun(t, "ip", "link", "set", uplinkName, "up")
	client.MustRun(t, "ip", "link", "set", "lo", "up")
	client.MustRun(t, "ip", "addr", "add", clientAddr+"/24", "dev", "eth0")
	client.MustRun(t, "ip", "link", "set", "eth0", "up")
	// The client reaches pods through the node, as a routed underlay would.
	client.MustRun(t, "ip", "route", "add", "10.244.0.0/16", "via", nodeAddr)
}

// greet answers every connection with "hello <the peer's address>".
func greet(c net.Conn) {
	host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
	_, _ = io.WriteString(c, "hello "+host)
}

// serve listens on addr inside ns (the socket is created on a thread in ns,
// and stays in ns whichever thread uses it later) and runs handle for each
// connection until the test ends.
func serve(t *testing.T, ns *netnstest.NS, addr string, handle func(net.Conn)) {
	t.Helper()
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, ns.Name, err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				handle(c)
			}()
		}
	}()
}

// dial connects from inside ns.
func dial(ns *netnstest.NS, ip string, port int, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = (&net.Dialer{Timeout: timeout}).Dial("tcp4", net.JoinHostPort(ip, strconv.Itoa(port)))
		return err
	})
	return c, err
}

// fetch connects from ns and returns everything the server sends.
func fetch(ns *netnstest.NS, ip string, port int) (string, error) {
	return fetchWithin(ns, ip, port, 5*time.Second)
}

func fetchWithin(ns *netnstest.NS, ip string, port int, timeout time.Duration) (string, error) {
	c, err := dial(ns, ip, port, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	return string(b), err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// timedSend writes size bytes to a sink server and waits for its count.
func timedSend(t *testing.T, ns *netnstest.NS, ip netip.Addr, port, size int) time.Duration {
	t.Helper()
	start := time.Now()
	c, err := dial(ns, ip.String(), port, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s:%d: %v", ip, port, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(make([]byte, size)); err != nil {
		t.Fatalf("send %d bytes to %s:%d: %v", size, ip, port, err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != strconv.Itoa(size) {
		t.Fatalf("the pod counted %q bytes (%v); sent %d", b, err, size)
	}
	return time.Since(start)
}

// timedReceive reads everything a source server sends.
func timedReceive(t *testing.T, ns *netnstest.NS, ip netip.Addr, port, size int) time.Duration {
	t.Helper()
	start := time.Now()
	c, err := dial(ns, ip.String(), port, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s:%d: %v", ip, port, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if err != nil || n != int64(size) {
		t.Fatalf("received %d bytes (%v); the pod sends %d", n, err, size)
	}
	return time.Since(start)
}

// podAddress checks that a result names the pod's interface, in the pod's
// namespace, with an IPv4 address inside subnet, and that the kernel agrees;
// it returns the result at the current version and the address.
func podAddress(t *testing.T, res types.Result, pod *cnitest.Pod, subnet netip.Prefix) (*current.Result, netip.Addr) {
	t.Helper()
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatalf("convert the result: %v", err)
	}
	var ip netip.Addr
	for _, ipc := range cur.IPs {
		if ipc.Interface == nil || *ipc.Interface < 0 || *ipc.Interface >= len(cur.Interfaces) {
			continue
		}
		in := cur.Interfaces[*ipc.Interface]
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if in.Name == pod.IfName && in.Sandbox == pod.NS.Path && ok && a.Unmap().Is4() {
			ip = a.Unmap()
		}
	}
	if !ip.IsValid() {
		t.Fatalf("the result gives %s in %s no IPv4 address: %s", pod.IfName, pod.NS.Path, js(cur))
	}
	if !subnet.Contains(ip) {
		t.Fatalf("the pod's address %s is outside %s", ip, subnet)
	}
	out := pod.NS.MustRun(t, "ip", "-4", "-o", "addr", "show", "dev", pod.IfName)
	if !strings.Contains(out, " "+netip.PrefixFrom(ip, subnet.Bits()).String()+" ") {
		t.Fatalf("%s in the pod does not carry %s/%d: %s", pod.IfName, ip, subnet.Bits(), out)
	}
	return cur, ip
}

func hasInterface(r *current.Result, name, sandbox string) bool {
	for _, in := range r.Interfaces {
		if in.Name == name && in.Sandbox == sandbox {
			return true
		}
	}
	return false
}

func js(r *current.Result) string {
	var b strings.Builder
	_ = r.PrintTo(&b)
	return b.String()
}

func sysctl(t *testing.T, ns *netnstest.NS, key string) string {
	t.Helper()
	return strings.TrimSpace(ns.MustRun(t, "sysctl", "-n", key))
}

// qdiscs lists the qdiscs of a link of the node.
func qdiscs(t *testing.T, node *cnitest.Node, link string) []netlink.Qdisc {
	t.Helper()
	var qs []netlink.Qdisc
	err := node.NS.Do(func() error {
		l, err := netlinksafe.LinkByName(link)
		if err != nil {
			return err
		}
		qs, err = netlinksafe.QdiscList(l)
		return err
	})
	if err != nil {
		t.Fatalf("list qdiscs of %s: %v", link, err)
	}
	return qs
}

// findTbf returns the root tbf with the given rate in bytes/s.
func findTbf(qs []netlink.Qdisc, rate uint64) *netlink.Tbf {
	for _, q := range qs {
		if tbf, ok := q.(*netlink.Tbf); ok && tbf.Parent == netlink.HANDLE_ROOT && tbf.Rate == rate {
			return tbf
		}
	}
	return nil
}

// assertNodeClean checks that the node holds no veth (other than its
// uplink) and no ifb, and that no address of network is reserved.
func assertNodeClean(t *testing.T, node *cnitest.Node, network string) {
	t.Helper()
	var links []netlink.Link
	if err := node.NS.Do(func() error {
		var err error
		links, err = netlinksafe.LinkList()
		return err
	}); err != nil {
		t.Fatalf("list links of the node: %v", err)
	}
	for _, l := range links {
		if (l.Type() == "veth" && l.Attrs().Name != uplinkName) || l.Type() == "ifb" {
			t.Errorf("the node still has %s %s after DEL", l.Type(), l.Attrs().Name)
		}
	}
	if _, err := os.Stat(node.DataDir); err != nil {
		return // never written: nothing reserved
	}
	store, err := ipam.NewDiskStore(node.DataDir, network)
	if err != nil {
		t.Fatalf("open the IPAM store: %v", err)
	}
	unlock, err := store.Lock()
	if err != nil {
		t.Fatalf("lock the IPAM store: %v", err)
	}
	defer unlock()
	held, err := store.List()
	if err != nil {
		t.Fatalf("list reservations: %v", err)
	}
	for _, r := range held {
		t.Errorf("%s is still reserved for %s/%s after DEL", r.IP, r.ContainerID, r.IfName)
	}
}

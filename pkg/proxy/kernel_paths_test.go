package proxy

import (
	"errors"
	"log/slog"
	"net"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podnet/podnet/internal/netnstest"
)

// kernelObjects are the Services of the kernel test (pod1 10.244.1.2 and
// pod2 10.244.1.3 serve; pod2 counts as on node-2 for ETP Local).
func kernelObjects(dnsEndpoint string) ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
	http := []discoveryv1.EndpointPort{esPort("http", corev1.ProtocolTCP, 8080)}
	both := []discoveryv1.Endpoint{endpointOn("10.244.1.2", "node-1"), endpointOn("10.244.1.3", "node-2")}
	svcs := []*corev1.Service{
		service("default", "web", "10.96.0.10", []corev1.ServicePort{svcPort("http", corev1.ProtocolTCP, 80, intstr.FromString("web"))}, nodePorts(30080)),
		service("default", "empty", "10.96.0.11", []corev1.ServicePort{tcp("http", 80)}, nodePorts(30082)),
		service("default", "self", "10.96.0.12", []corev1.ServicePort{tcp("http", 80)}),
		service("default", "sticky", "10.96.0.13", []corev1.ServicePort{tcp("http", 80)}, affinity(300)),
		service("default", "dns", "10.96.0.14", []corev1.ServicePort{udp("dns", 53)}),
		service("default", "local", "10.96.0.15", []corev1.ServicePort{tcp("http", 80)}, nodePorts(30081), loadBalancer("198.51.100.15"), etpLocal(0)),
	}
	sl := []*discoveryv1.EndpointSlice{
		epSlice("default", "web", "web-1", http, both...),
		epSlice("default", "self", "self-1", http, endpointOn("10.244.1.2", "node-1")),
		epSlice("default", "sticky", "sticky-1", http, both...),
		epSlice("default", "dns", "dns-1", []discoveryv1.EndpointPort{esPort("dns", corev1.ProtocolUDP, 5353)}, endpointOn(dnsEndpoint, "node-1")),
		epSlice("default", "local", "local-1", http, both...),
	}
	return svcs, sl
}

// kernelRun is the kernel test's cluster: the topology, the servers in
// pod1 and pod2, and the Proxier syncing in the node.
type kernelRun struct {
	*kernelTopo
	p            *Proxier
	servers      map[string]*server
	pod1, pod3   *netnstest.NS
	logs         strings.Builder
	syncServices func(svcs []*corev1.Service, sl []*discoveryv1.EndpointSlice)
}

func TestKernelProxy(t *testing.T) {
	requireKernel(t)
	k := &kernelRun{kernelTopo: newKernelTopo(t)}
	k.node.MustRun(t, "ip", "route", "add", "default", "via", "192.168.56.100") // the node's own uplink
	k.servers = map[string]*server{"pod1": serve(t, k.pods["10.244.1.2"], "pod1"), "pod2": serve(t, k.pods["10.244.1.3"], "pod2")}
	k.pod1, k.pod3 = k.pods["10.244.1.2"], k.pods["10.244.1.4"]
	// A table that is not ours, which must stay as it is.
	k.node.MustRun(t, "nft", "add table ip other; add chain ip other c; add rule ip other c ip daddr 10.96.0.10 counter")
	other := k.node.MustRun(t, "nft", "list", "table", "ip", "other")

	k.p = New(netnstest.GuardedNFT(t, k.node, IPv4.NFT, TableName), Config{Conntrack: NewConntrack(IPv4), Log: slog.New(slog.NewTextHandler(&k.logs, nil))})
	k.syncServices = func(svcs []*corev1.Service, sl []*discoveryv1.EndpointSlice) {
		t.Helper()
		if err := k.node.Do(func() error { return k.p.Sync(ctx, Build(IPv4, kernelNode, svcs, sl)) }); err != nil {
			t.Fatalf("Sync in the node: %v", err)
		}
	}
	sync := func(dnsEndpoint string) { k.syncServices(kernelObjects(dnsEndpoint)) }
	sync("10.244.1.2")
	t.Logf("nft list table ip podnet-proxy, in the node:\n%s", k.node.MustRun(t, "nft", "list", "table", "ip", TableName))

	t.Run("ClusterIP reaches every endpoint", k.clusterIP)
	t.Run("no endpoints: refused at once", k.refused)
	t.Run("hairpin: a pod reaches itself through its Service", k.hairpin)
	t.Run("NodePort: masqueraded (Cluster) or client kept (Local)", k.nodePorts)
	t.Run("session affinity", func(t *testing.T) {
		if got := reached(t, k.pod3, "10.96.0.13:80", 20); len(got) != 1 {
			t.Errorf("20 connections of one client reached %v, want one endpoint", got)
		}
	})
	t.Run("UDP flows leave a removed endpoint", func(t *testing.T) { udpFlowMoves(t, k.pod3, sync) })
	t.Run("partial sync, drift, full sync", k.partialDriftFull)

	if err := k.node.Do(func() error { return k.p.Cleanup(ctx) }); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if out := k.node.MustRun(t, "nft", "list", "tables"); strings.Contains(out, TableName) {
		t.Errorf("the table is left after Cleanup:\n%s", out)
	}
	if got := k.node.MustRun(t, "nft", "list", "table", "ip", "other"); got != other {
		t.Errorf("another table changed:\n%s\nwas:\n%s", got, other)
	}
	// Every transaction went through as written: no partial sync fell
	// back to a full one, no full sync had to re-create the table.
	if k.logs.Len() > 0 {
		t.Errorf("the proxy logged:\n%s", k.logs.String())
	}
}

func (k *kernelRun) clusterIP(t *testing.T) {
	if got := reached(t, k.pod3, "10.96.0.10:80", 60); !slices.Equal(got, []string{"pod1", "pod2"}) {
		t.Errorf("60 connections from a pod reached %v", got)
	}
	for name, s := range k.servers {
		if src := s.lastSeen(); src != "10.244.1.4" {
			t.Errorf("%s saw the client as %s, want the pod's own address", name, src)
		}
	}
	if got := reached(t, k.node, "10.96.0.10:80", 30); !slices.Equal(got, []string{"pod1", "pod2"}) {
		t.Errorf("30 connections from the node itself reached %v", got)
	}
}

func (k *kernelRun) refused(t *testing.T) {
	for _, from := range []struct {
		ns   *netnstest.NS
		addr string
	}{{k.pod3, "10.96.0.11:80"}, {k.node, "10.96.0.11:80"}, {k.outside, "192.168.56.11:30082"}} {
		start := time.Now()
		_, err := connect(from.ns, from.addr)
		if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > time.Second {
			t.Errorf("%s → %s: %v after %v, want connection refused at once", from.ns.Name, from.addr, err, time.Since(start))
		}
	}
}

func (k *kernelRun) hairpin(t *testing.T) {
	if got, err := connect(k.pod1, "10.96.0.12:80"); err != nil || got != "pod1" {
		t.Fatalf("pod1 → its own Service: %q, %v", got, err)
	}
	if src := k.servers["pod1"].lastSeen(); src != "10.244.1.1" {
		t.Errorf("pod1 saw itself as %s, want the masqueraded 10.244.1.1", src)
	}
}

func (k *kernelRun) nodePorts(t *testing.T) {
	if got := reached(t, k.outside, "192.168.56.11:30080", 30); !slices.Equal(got, []string{"pod1", "pod2"}) {
		t.Errorf("Cluster: 30 connections reached %v", got)
	}
	if src := k.servers["pod1"].lastSeen(); src != "10.244.1.1" {
		t.Errorf("Cluster: the endpoint saw %s, want the masqueraded 10.244.1.1", src)
	}
	if got := reached(t, k.outside, "192.168.56.11:30081", 20); !slices.Equal(got, []string{"pod1"}) {
		t.Errorf("Local: 20 connections reached %v, want only the local endpoint", got)
	}
	if src := k.servers["pod1"].lastSeen(); src != "192.168.56.100" {
		t.Errorf("Local: the endpoint saw %s, want the client's own address", src)
	}
}

// partialDriftFull: an endpoint change (a partial sync), then the table
// deleted behind the Proxier's back and repaired by a full sync.
func (k *kernelRun) partialDriftFull(t *testing.T) {
	svcs, sl := kernelObjects("10.244.1.3")
	sl[0].Endpoints = sl[0].Endpoints[:1] // web: pod1 only
	k.syncServices(svcs, sl)
	if got := reached(t, k.pod3, "10.96.0.10:80", 20); !slices.Equal(got, []string{"pod1"}) {
		t.Errorf("after a partial sync, reached %v", got)
	}
	k.node.MustRun(t, "nft", "delete", "table", "ip", TableName)
	if got, err := connect(k.pod3, "10.96.0.12:80"); err == nil {
		t.Fatalf("with the table deleted, the Service still answers (%q)", got)
	}
	k.p.RequestFullSync()
	k.syncServices(svcs, sl)
	if got := reached(t, k.pod3, "10.96.0.10:80", 20); !slices.Equal(got, []string{"pod1"}) {
		t.Errorf("after a full sync, reached %v", got)
	}
}

// reached connects n times and returns the distinct servers that answered.
func reached(t *testing.T, ns *netnstest.NS, addr string, n int) []string {
	t.Helper()
	var got []string
	for range n {
		name, err := connect(ns, addr)
		if err != nil {
			t.Fatalf("connect to %s from %s: %v", addr, ns.Name, err)
		}
		if !slices.Contains(got, name) {
			got = append(got, name)
		}
	}
	slices.Sort(got)
	return got
}

// udpFlowMoves keeps one UDP socket (one conntrack flow) talking to the
// DNS-like Service while its endpoint moves from pod1 to pod2. pod1 stays
// up: only the conntrack cleanup can make the flow's next datagram reach
// pod2.
func udpFlowMoves(t *testing.T, from *netnstest.NS, sync func(string)) {
	t.Helper()
	var c net.Conn
	if err := from.Do(func() (err error) { c, err = net.Dial("udp", "10.96.0.14:53"); return err }); err != nil {
		t.Fatalf("dial udp 10.96.0.14:53: %v", err)
	}
	defer c.Close()
	ask := func() string {
		b := make([]byte, 64)
		for range 10 {
			_, _ = c.Write([]byte("q"))
			_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if n, err := c.Read(b); err == nil {
				return string(b[:n])
			}
		}
		return ""
	}
	if got := ask(); got != "pod1" {
		t.Fatalf("before: %q answered, want pod1", got)
	}
	sync("10.244.1.3")
	if got := ask(); got != "pod2" {
		t.Errorf("after the endpoint moved, the same flow reached %q, want pod2", got)
	}
}

package proxy

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

func filterStrings(fs []FlowFilter) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.String())
	}
	slices.Sort(out)
	return out
}

// dnsFixture: kube-dns-like UDP and TCP ports, with a NodePort and an
// external IP so every kind of destination is covered.
func dnsFixture(eps ...discoveryv1.Endpoint) ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
	svcs := []*corev1.Service{service("kube-system", "dns", "10.96.0.10", []corev1.ServicePort{udp("dns", 53), tcp("dns-tcp", 53)},
		nodePorts(30053, 30054), externalIPs("203.0.113.53"))}
	var sl []*discoveryv1.EndpointSlice
	if len(eps) > 0 {
		sl = append(sl, epSlice("kube-system", "dns", "dns-1",
			[]discoveryv1.EndpointPort{esPort("dns", corev1.ProtocolUDP, 5353), esPort("dns-tcp", corev1.ProtocolTCP, 5353)}, eps...))
	}
	return svcs, sl
}

func TestConntrackCleanup(t *testing.T) {
	ct := &FakeConntrack{}
	p := New(newFake(), Config{Conntrack: ct})
	sync := func(eps ...discoveryv1.Endpoint) []string {
		t.Helper()
		ct.Calls = nil
		svcs, sl := dnsFixture(eps...)
		syncState(t, p, labNode, svcs, sl)
		return filterStrings(ct.Filters())
	}
	a, b := endpointOn("10.244.1.5", "node-1"), endpointOn("10.244.2.7", "node-2")

	// Before the first sync a client may have sent to the Service address
	// with nothing to DNAT it: such flows are cleared when it gets
	// endpoints. TCP is never touched.
	if got, want := sync(a, b), []string{
		"udp 10.244.1.1:30053 not NATed", "udp 10.96.0.10:53 not NATed",
		"udp 192.168.56.11:30053 not NATed", "udp 203.0.113.53:53 not NATed",
	}; !slices.Equal(got, want) {
		t.Errorf("first sync: %v, want %v", got, want)
	}
	if got := sync(a, b); len(got) != 0 {
		t.Errorf("nothing changed, yet %v", got)
	}
	// b goes: its flows, from every destination of the port, are cleared.
	if got, want := sync(a), []string{
		"udp *:30053 to 10.244.2.7:5353", "udp 10.96.0.10:53 to 10.244.2.7:5353",
		"udp 203.0.113.53:53 to 10.244.2.7:5353",
	}; !slices.Equal(got, want) {
		t.Errorf("endpoint removed: %v, want %v", got, want)
	}
	// Not ready is as good as gone.
	if got := sync(endpointOn("10.244.1.5", "node-1", notReady)); len(got) != 3 {
		t.Errorf("endpoint not ready: %v", got)
	}
	if got := sync(a); len(got) != 4 {
		t.Errorf("back from no endpoint: %v", got)
	}
	if got := sync(); len(got) != 3 { // the Service has no endpoint left
		t.Errorf("all endpoints gone: %v", got)
	}

	// A conntrack failure is logged, not a failed sync.
	ct.Err = errors.New("netlink: operation not permitted")
	svcs, sl := dnsFixture(a)
	if err := p.Sync(ctx, Build(IPv4, labNode, svcs, sl)); err != nil {
		t.Errorf("Sync failed for conntrack: %v", err)
	}
}

// flow is a conntrack entry: a client sending to dst, the reply coming
// from replySrc (the endpoint if the flow was DNATed, dst if not).
func flow(proto uint8, src, dst, replySrc string) *netlink.ConntrackFlow {
	s, d, r := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst), netip.MustParseAddrPort(replySrc)
	f := &netlink.ConntrackFlow{FamilyType: unix.AF_INET}
	f.Forward.Protocol, f.Reverse.Protocol = proto, proto
	f.Forward.SrcIP, f.Forward.DstIP = net.IP(s.Addr().AsSlice()), net.IP(d.Addr().AsSlice())
	f.Forward.SrcPort, f.Forward.DstPort = s.Port(), d.Port()
	f.Reverse.SrcIP, f.Reverse.DstIP = net.IP(r.Addr().AsSlice()), net.IP(s.Addr().AsSlice())
	f.Reverse.SrcPort, f.Reverse.DstPort = r.Port(), s.Port()
	return f
}

func TestFlowIndexMatches(t *testing.T) {
	ix := newFlowIndex([]FlowFilter{
		{Dst: netip.MustParseAddr("10.96.0.10"), DstPort: 53, Endpoint: mustAddrPort("10.244.2.7:5353")},
		{DstPort: 30053, Endpoint: mustAddrPort("10.244.2.7:5353")},
		{Dst: netip.MustParseAddr("10.96.0.11"), DstPort: 53},
	})
	for _, c := range []struct {
		what string
		f    *netlink.ConntrackFlow
		want bool
	}{
		{"to the ClusterIP, DNATed to the removed endpoint", flow(unix.IPPROTO_UDP, "10.244.1.9:40000", "10.96.0.10:53", "10.244.2.7:5353"), true},
		{"to the ClusterIP, DNATed to another endpoint", flow(unix.IPPROTO_UDP, "10.244.1.9:40000", "10.96.0.10:53", "10.244.1.5:5353"), false},
		{"same endpoint address, other port", flow(unix.IPPROTO_UDP, "10.244.1.9:40000", "10.96.0.10:53", "10.244.2.7:53"), false},
		{"TCP", flow(unix.IPPROTO_TCP, "10.244.1.9:40000", "10.96.0.10:53", "10.244.2.7:5353"), false},
		{"to the NodePort on any address, to the endpoint", flow(unix.IPPROTO_UDP, "192.168.56.100:40000", "192.168.56.11:30053", "10.244.2.7:5353"), true},
		{"not NATed, to a port that got endpoints", flow(unix.IPPROTO_UDP, "10.244.1.9:40000", "10.96.0.11:53", "10.96.0.11:53"), true},
		{"to that port, NATed", flow(unix.IPPROTO_UDP, "10.244.1.9:40000", "10.96.0.11:53", "10.244.1.5:5353"), false},
		{"unrelated", flow(unix.IPPROTO_UDP, "10.244.1.9:40000", "10.244.2.7:5353", "10.244.2.7:5353"), false},
	} {
		if got := ix.MatchConntrackFlow(c.f); got != c.want {
			t.Errorf("%s: match %v, want %v", c.what, got, c.want)
		}
	}
}

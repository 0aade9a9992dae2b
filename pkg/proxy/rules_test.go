package proxy

// Where packets go, traced through the rules the Proxier wrote into the
// knftables Fake. Packets come from a pod of this node (10.244.1.9), a pod
// of another node (10.244.2.9), the node itself (local) or a client
// outside the cluster (192.168.56.100).

import (
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"sigs.k8s.io/knftables"
)

const (
	podHere  = "10.244.1.9"
	outside  = "192.168.56.100"
	nodeIP   = "192.168.56.11"
	otherIP  = "192.168.56.12" // another node: not an address of this one
	bridgeIP = "10.244.1.1"
)

// programmed syncs a fresh Proxier on a Fake with the objects and returns
// a tracer over the result.
func programmed(t *testing.T, node Node, svcs []*corev1.Service, sl []*discoveryv1.EndpointSlice) (*tracer, *knftables.Fake) {
	t.Helper()
	f := newFake()
	syncState(t, New(f, Config{}), node, svcs, sl)
	return newTracer(t, f, addrStrings(node.IPs)...), f
}

func addrStrings(as []netip.Addr) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}

func TestClusterIPMultiPortNamedTargetPorts(t *testing.T) {
	svcs, sl := webFixture()
	tr, _ := programmed(t, labNode, svcs, sl)
	httpEPs := []string{"10.244.1.5:8080", "10.244.2.7:8080", "10.244.2.8:8081"}
	statsEPs := []string{"10.244.1.5:9100", "10.244.2.7:9100", "10.244.2.8:9101"}

	tr.expect("pod → ClusterIP tcp/80", packet{src: podHere, dst: "10.96.0.20", proto: TCP, dport: 80},
		expect{endpoints: httpEPs, verdict: "accept", masq: "none"})
	tr.expect("pod → ClusterIP udp/9000", packet{src: podHere, dst: "10.96.0.20", proto: UDP, dport: 9000},
		expect{endpoints: statsEPs, verdict: "accept", masq: "none"})
	tr.expect("pod of another node → ClusterIP (routed here)", packet{src: "10.244.2.9", dst: "10.96.0.20", proto: TCP, dport: 80},
		expect{endpoints: httpEPs, verdict: "accept", masq: "none"})
	// From outside the cluster CIDR: masqueraded, so the reply comes back here.
	tr.expect("node → ClusterIP", packet{src: nodeIP, dst: "10.96.0.20", proto: TCP, dport: 80, local: true},
		expect{endpoints: httpEPs, verdict: "accept", masq: "all"})
	tr.expect("outside client → ClusterIP", packet{src: outside, dst: "10.96.0.20", proto: UDP, dport: 9000},
		expect{endpoints: statsEPs, verdict: "accept", masq: "all"})
	// Not Service ports: left alone.
	tr.expect("ClusterIP, undefined port", packet{src: podHere, dst: "10.96.0.20", proto: TCP, dport: 443},
		expect{verdict: "accept", masq: "none"})
	tr.expect("ClusterIP, tcp on the udp port", packet{src: podHere, dst: "10.96.0.20", proto: TCP, dport: 9000},
		expect{verdict: "accept", masq: "none"})
	tr.expect("pod → pod", packet{src: podHere, dst: "10.244.2.7", proto: TCP, dport: 8080},
		expect{verdict: "accept", masq: "none"})
}

func TestEqualSpreading(t *testing.T) {
	var eps []discoveryv1.Endpoint
	var want []string
	for i := range 7 {
		ip := "10.244." + []string{"1", "2", "3"}[i%3] + "." + string(rune('0'+i+1))
		eps = append(eps, endpointOn(ip, "node-x"))
		want = append(want, ip+":8080")
	}
	slices.Sort(want)
	svcs := []*corev1.Service{service("default", "many", "10.96.0.30", []corev1.ServicePort{tcp("http", 80)})}
	sl := []*discoveryv1.EndpointSlice{epSlice("default", "many", "many-1", []discoveryv1.EndpointPort{esPort("http", corev1.ProtocolTCP, 8080)}, eps...)}
	tr, _ := programmed(t, labNode, svcs, sl)
	out := tr.expect("pod → ClusterIP", packet{src: podHere, dst: "10.96.0.30", proto: TCP, dport: 80},
		expect{endpoints: want, verdict: "accept", masq: "none"})
	// One path per numgen outcome (the tracer checked they are 0..N-1):
	// each endpoint exactly once, so each gets 1/N of new connections.
	count := map[string]int{}
	for _, o := range out {
		count[o.dnat]++
	}
	for _, e := range want {
		if count[e] != 1 {
			t.Errorf("endpoint %s is %d numgen outcomes, want 1 (all: %v)", e, count[e], count)
		}
	}
	if len(out) != len(want) {
		t.Errorf("%d numgen outcomes for %d endpoints", len(out), len(want))
	}
}

func nodePortFixture(opts ...svcOpt) ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
	svcs := []*corev1.Service{service("default", "np", "10.96.0.40", []corev1.ServicePort{tcp("http", 80), udp("dns", 53)},
		append([]svcOpt{nodePorts(30080, 30053)}, opts...)...)}
	sl := []*discoveryv1.EndpointSlice{epSlice("default", "np", "np-1",
		[]discoveryv1.EndpointPort{esPort("http", corev1.ProtocolTCP, 8080), esPort("dns", corev1.ProtocolUDP, 5353)},
		endpointOn("10.244.1.5", "node-1"), endpointOn("10.244.2.7", "node-2"))}
	return svcs, sl
}

func TestNodePort(t *testing.T) {
	svcs, sl := nodePortFixture()
	tr, _ := programmed(t, labNode, svcs, sl)
	all := []string{"10.244.1.5:8080", "10.244.2.7:8080"}
	for _, dst := range []string{nodeIP, bridgeIP} { // every local address of the node
		tr.expect("outside → NodePort on "+dst, packet{src: outside, dst: dst, proto: TCP, dport: 30080},
			expect{endpoints: all, verdict: "accept", masq: "all"})
	}
	tr.expect("outside → NodePort udp", packet{src: outside, dst: nodeIP, proto: UDP, dport: 30053},
		expect{endpoints: []string{"10.244.1.5:5353", "10.244.2.7:5353"}, verdict: "accept", masq: "all"})
	tr.expect("pod → NodePort of this node", packet{src: podHere, dst: nodeIP, proto: TCP, dport: 30080},
		expect{endpoints: all, verdict: "accept", masq: "all"})
	tr.expect("node → its own NodePort", packet{src: nodeIP, dst: nodeIP, proto: TCP, dport: 30080, local: true},
		expect{endpoints: all, verdict: "accept", masq: "all"})
	// Not this node's address: the packet is only passing through.
	tr.expect("pod → NodePort of another node", packet{src: podHere, dst: otherIP, proto: TCP, dport: 30080},
		expect{verdict: "accept", masq: "none"})
	tr.expect("node → localhost NodePort", packet{src: "127.0.0.1", dst: "127.0.0.1", proto: TCP, dport: 30080, local: true},
		expect{verdict: "accept", masq: "none"})
	tr.expect("NodePort number on the wrong protocol", packet{src: outside, dst: nodeIP, proto: UDP, dport: 30080},
		expect{verdict: "accept", masq: "none"})

	t.Run("nodePortAddresses", func(t *testing.T) {
		node := labNode
		node.NodePortAddresses = prefixList("192.168.56.0/24")
		tr, _ := programmed(t, node, svcs, sl)
		tr.expect("on the node network address", packet{src: outside, dst: nodeIP, proto: TCP, dport: 30080},
			expect{endpoints: all, verdict: "accept", masq: "all"})
		tr.expect("on the bridge address (not in nodePortAddresses)", packet{src: podHere, dst: bridgeIP, proto: TCP, dport: 30080},
			expect{verdict: "accept", masq: "none"})
	})
}

func TestExternalAndLoadBalancerIPs(t *testing.T) {
	svcs, sl := nodePortFixture(loadBalancer("198.51.100.9"), externalIPs("203.0.113.7", "fd00::7"))
	tr, _ := programmed(t, labNode, svcs, sl)
	all := []string{"10.244.1.5:8080", "10.244.2.7:8080"}
	for _, dst := range []string{"198.51.100.9", "203.0.113.7"} {
		tr.expect("outside → "+dst, packet{src: outside, dst: dst, proto: TCP, dport: 80},
			expect{endpoints: all, verdict: "accept", masq: "all"})
		tr.expect("pod → "+dst, packet{src: podHere, dst: dst, proto: TCP, dport: 80},
			expect{endpoints: all, verdict: "accept", masq: "all"})
		tr.expect(dst+" on a port the Service lacks", packet{src: outside, dst: dst, proto: TCP, dport: 81},
			expect{verdict: "accept", masq: "none"})
	}
}

func TestExternalTrafficPolicyLocal(t *testing.T) {
	svcs, sl := nodePortFixture(loadBalancer("198.51.100.9"), etpLocal(32000))
	tr, _ := programmed(t, labNode, svcs, sl)
	local := []string{"10.244.1.5:8080"}
	all := []string{"10.244.1.5:8080", "10.244.2.7:8080"}
	for _, d := range []struct{ what, dst string }{{"LB IP", "198.51.100.9"}, {"NodePort", nodeIP}} {
		port := uint16(80)
		if d.what == "NodePort" {
			port = 30080
		}
		// From outside: this node's endpoints only, and the client's address kept.
		tr.expect("outside → "+d.what, packet{src: outside, dst: d.dst, proto: TCP, dport: port},
			expect{endpoints: local, verdict: "accept", masq: "none"})
		// This node's pods and the node itself: served like ClusterIP traffic.
		tr.expect("pod here → "+d.what, packet{src: podHere, dst: d.dst, proto: TCP, dport: port},
			expect{endpoints: all, verdict: "accept", masq: "none"})
		tr.expect("node → "+d.what, packet{src: nodeIP, dst: d.dst, proto: TCP, dport: port, local: true},
			expect{endpoints: all, verdict: "accept", masq: "all"})
	}
	tr.expect("pod → ClusterIP (the policy is for external traffic only)", packet{src: podHere, dst: "10.96.0.40", proto: TCP, dport: 80},
		expect{endpoints: all, verdict: "accept", masq: "none"})

	t.Run("node without local endpoints", func(t *testing.T) {
		node := labNode
		node.Name = "node-3"
		tr, _ := programmed(t, node, svcs, sl)
		// As upstream: dropped (the load balancer's health check sends
		// nothing here), not sent to another node.
		tr.expect("outside → LB IP", packet{src: outside, dst: "198.51.100.9", proto: TCP, dport: 80},
			expect{verdict: "drop", masq: "n/a"})
		tr.expect("outside → NodePort", packet{src: outside, dst: nodeIP, proto: TCP, dport: 30080},
			expect{verdict: "drop", masq: "n/a"})
		tr.expect("pod here → LB IP", packet{src: podHere, dst: "198.51.100.9", proto: TCP, dport: 80},
			expect{endpoints: all, verdict: "accept", masq: "none"})
	})
}

func TestInternalTrafficPolicyLocal(t *testing.T) {
	svcs, sl := nodePortFixture(itpLocal)
	tr, _ := programmed(t, labNode, svcs, sl)
	tr.expect("pod → ClusterIP", packet{src: podHere, dst: "10.96.0.40", proto: TCP, dport: 80},
		expect{endpoints: []string{"10.244.1.5:8080"}, verdict: "accept", masq: "none"})
	tr.expect("node → ClusterIP", packet{src: nodeIP, dst: "10.96.0.40", proto: TCP, dport: 80, local: true},
		expect{endpoints: []string{"10.244.1.5:8080"}, verdict: "accept", masq: "all"})
	tr.expect("outside → NodePort (Cluster policy)", packet{src: outside, dst: nodeIP, proto: TCP, dport: 30080},
		expect{endpoints: []string{"10.244.1.5:8080", "10.244.2.7:8080"}, verdict: "accept", masq: "all"})

	node := labNode
	node.Name = "node-3"
	tr, _ = programmed(t, node, svcs, sl)
	tr.expect("pod → ClusterIP, no endpoint on this node", packet{src: podHere, dst: "10.96.0.40", proto: TCP, dport: 80},
		expect{verdict: "drop", masq: "n/a"})
}

func TestHairpin(t *testing.T) {
	svcs := []*corev1.Service{service("default", "self", "10.96.0.50", []corev1.ServicePort{tcp("http", 80)})}
	sl := []*discoveryv1.EndpointSlice{epSlice("default", "self", "self-1", []discoveryv1.EndpointPort{esPort("http", corev1.ProtocolTCP, 8080)},
		endpointOn("10.244.1.5", "node-1"))}
	tr, _ := programmed(t, labNode, svcs, sl)
	tr.expect("the endpoint → its own Service", packet{src: "10.244.1.5", dst: "10.96.0.50", proto: TCP, dport: 80},
		expect{endpoints: []string{"10.244.1.5:8080"}, verdict: "accept", masq: "all"})
	tr.expect("another pod → the Service", packet{src: podHere, dst: "10.96.0.50", proto: TCP, dport: 80},
		expect{endpoints: []string{"10.244.1.5:8080"}, verdict: "accept", masq: "none"})
}

func TestNoEndpointsRejects(t *testing.T) {
	svcs, _ := nodePortFixture(externalIPs("203.0.113.7"))
	notReadyOnly := []*discoveryv1.EndpointSlice{epSlice("default", "np", "np-1",
		[]discoveryv1.EndpointPort{esPort("http", corev1.ProtocolTCP, 8080), esPort("dns", corev1.ProtocolUDP, 5353)},
		endpointOn("10.244.1.5", "node-1", notReady), endpointOn("10.244.2.7", "node-2", terminatingNotServing))}
	for name, sl := range map[string][]*discoveryv1.EndpointSlice{"no slices": nil, "no usable endpoint": notReadyOnly} {
		t.Run(name, func(t *testing.T) {
			tr, _ := programmed(t, labNode, svcs, sl)
			for _, p := range []packet{
				{src: podHere, dst: "10.96.0.40", proto: TCP, dport: 80},
				{src: podHere, dst: "10.96.0.40", proto: UDP, dport: 53},
				{src: nodeIP, dst: "10.96.0.40", proto: TCP, dport: 80, local: true},
				{src: outside, dst: nodeIP, proto: TCP, dport: 30080},
				{src: outside, dst: nodeIP, proto: UDP, dport: 30053},
				{src: outside, dst: "203.0.113.7", proto: TCP, dport: 80},
			} {
				tr.expect("rejected", p, expect{verdict: "reject", masq: "n/a"})
			}
		})
	}
}

func TestTerminatingFallback(t *testing.T) {
	svcs := []*corev1.Service{service("default", "roll", "10.96.0.60", []corev1.ServicePort{tcp("http", 80)}, nodePorts(30060), etpLocal(0))}
	ports := []discoveryv1.EndpointPort{esPort("http", corev1.ProtocolTCP, 8080)}
	pkt := packet{src: podHere, dst: "10.96.0.60", proto: TCP, dport: 80}
	ext := packet{src: outside, dst: nodeIP, proto: TCP, dport: 30060}
	for _, c := range []struct {
		name     string
		eps      []discoveryv1.Endpoint
		internal []string
		external []string // nil: dropped
	}{
		{"ready ones only while one is ready",
			[]discoveryv1.Endpoint{endpointOn("10.244.1.5", "node-1", terminating), endpointOn("10.244.2.7", "node-2")},
			[]string{"10.244.2.7:8080"}, []string{"10.244.1.5:8080"}}, // locally, only a terminating one: used
		{"serving terminating ones when none is ready",
			[]discoveryv1.Endpoint{endpointOn("10.244.1.5", "node-1", terminating), endpointOn("10.244.2.7", "node-2", terminatingNotServing),
				endpointOn("10.244.2.8", "node-2", notReady)},
			[]string{"10.244.1.5:8080"}, []string{"10.244.1.5:8080"}},
		{"ready local one preferred to a terminating local one",
			[]discoveryv1.Endpoint{endpointOn("10.244.1.5", "node-1", terminating), endpointOn("10.244.1.6", "node-1")},
			[]string{"10.244.1.6:8080"}, []string{"10.244.1.6:8080"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr, _ := programmed(t, labNode, svcs, []*discoveryv1.EndpointSlice{epSlice("default", "roll", "roll-1", ports, c.eps...)})
			tr.expect("ClusterIP", pkt, expect{endpoints: c.internal, verdict: "accept", masq: "none"})
			tr.expect("NodePort (Local)", ext, expect{endpoints: c.external, verdict: "accept", masq: "none"})
		})
	}
}

func TestSessionAffinity(t *testing.T) {
	svcs, sl := nodePortFixture(affinity(600))
	tr, f := programmed(t, labNode, svcs, sl)
	p := packet{src: podHere, dst: "10.96.0.40", proto: TCP, dport: 80}
	out := tr.expect("first connection", p, expect{endpoints: []string{"10.244.1.5:8080", "10.244.2.7:8080"}, verdict: "accept", masq: "none"})
	// Every path records the client in the set of the endpoint it chose;
	// the sets time out after the Service's timeout.
	byEndpoint := map[string]string{}
	for _, o := range out {
		set := f.Table.Sets[o.sticky]
		if set == nil {
			t.Fatalf("path to %s records the client in no affinity set", o.dnat)
		}
		if set.Timeout == nil || *set.Timeout != 600e9 || !slices.Contains(set.Flags, knftables.DynamicFlag) {
			t.Errorf("affinity set %s: timeout %v, flags %v", set.Name, set.Timeout, set.Flags)
		}
		byEndpoint[o.dnat] = o.sticky
	}
	if len(byEndpoint) != 2 || byEndpoint["10.244.1.5:8080"] == byEndpoint["10.244.2.7:8080"] {
		t.Fatalf("affinity sets per endpoint: %v", byEndpoint)
	}
	// The client is now in 10.244.2.7's set: it is checked before numgen.
	tr.stuck[byEndpoint["10.244.2.7:8080"]] = true
	tr.expect("next connection of the same client", p, expect{endpoints: []string{"10.244.2.7:8080"}, verdict: "accept", masq: "none"})
	tr.expect("via the NodePort too", packet{src: podHere, dst: nodeIP, proto: TCP, dport: 30080},
		expect{endpoints: []string{"10.244.2.7:8080"}, verdict: "accept", masq: "all"})
}

func TestHeadlessAndExternalNameNotProxied(t *testing.T) {
	headless := service("default", "db", corev1.ClusterIPNone, []corev1.ServicePort{tcp("pg", 5432)})
	extName := service("default", "ext", "", []corev1.ServicePort{tcp("https", 443)})
	extName.Spec.Type, extName.Spec.ExternalName = corev1.ServiceTypeExternalName, "example.com"
	extName.Spec.ClusterIPs = nil
	sl := []*discoveryv1.EndpointSlice{epSlice("default", "db", "db-1", []discoveryv1.EndpointPort{esPort("pg", corev1.ProtocolTCP, 5432)},
		endpointOn("10.244.1.5", "node-1"))}
	tr, f := programmed(t, labNode, []*corev1.Service{headless, extName}, sl)
	for _, m := range f.Table.Maps {
		if len(m.Elements) != 0 {
			t.Errorf("map %s has elements for Services that are not proxied: %v", m.Name, m.Elements)
		}
	}
	tr.expect("pod → headless endpoint directly", packet{src: podHere, dst: "10.244.1.5", proto: TCP, dport: 5432},
		expect{verdict: "accept", masq: "none"})
}

// The same program for IPv6 (family-parameterised; the lab runs IPv4).
func TestIPv6Family(t *testing.T) {
	node := Node{Name: "node-1", IPs: addrList("fd00:192:168:56::11"),
		ClusterCIDRs: prefixList("fd00:10:244::/48"), PodCIDRs: prefixList("fd00:10:244:1::/64")}
	svc := service("default", "web", "fd00:10:96::20", []corev1.ServicePort{tcp("http", 80)}, nodePorts(30080))
	sl := epSlice("default", "web", "web-v6", []discoveryv1.EndpointPort{esPort("http", corev1.ProtocolTCP, 8080)},
		endpointOn("fd00:10:244:1::5", "node-1"), endpointOn("fd00:10:244:2::7", "node-2"))
	sl.AddressType = discoveryv1.AddressTypeIPv6
	f := knftables.NewFake(IPv6.NFT, TableName)
	if err := New(f, Config{Family: IPv6}).Sync(ctx, Build(IPv6, node, []*corev1.Service{svc}, []*discoveryv1.EndpointSlice{sl})); err != nil {
		t.Fatal(err)
	}
	tr := newTracer(t, f, "fd00:192:168:56::11")
	all := []string{"[fd00:10:244:1::5]:8080", "[fd00:10:244:2::7]:8080"}
	tr.expect("pod → ClusterIP", packet{src: "fd00:10:244:1::9", dst: "fd00:10:96::20", proto: TCP, dport: 80},
		expect{endpoints: all, verdict: "accept", masq: "none"})
	tr.expect("outside → NodePort", packet{src: "fd00:192:168:56::100", dst: "fd00:192:168:56::11", proto: TCP, dport: 30080},
		expect{endpoints: all, verdict: "accept", masq: "all"})
	out := tr.expect("hairpin", packet{src: "fd00:10:244:1::5", dst: "fd00:10:96::20", proto: TCP, dport: 80},
		expect{endpoints: all, verdict: "accept", masq: "mixed"})
	for _, o := range out {
		if o.masq != (o.dnat == all[0]) {
			t.Errorf("to %s from %s itself: masquerade %v", o.dnat, all[0], o.masq)
		}
	}
}

package proxy

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func portOf(t *testing.T, st *State, ns, name, port string, proto Protocol) *ServicePort {
	t.Helper()
	sp := st.Ports[ServicePortName{Namespace: ns, Name: name, Port: port, Protocol: proto}]
	if sp == nil {
		t.Fatalf("no port %s/%s:%s/%s in %v", ns, name, port, proto, keysOf(st))
	}
	return sp
}

func keysOf(st *State) []string {
	var out []string
	for n := range st.Ports {
		out = append(out, n.String())
	}
	slices.Sort(out)
	return out
}

func epStrings(eps []Endpoint) []string {
	var out []string
	for _, e := range eps {
		out = append(out, e.String())
	}
	return out
}

func TestBuildNamedTargetPortPerSlice(t *testing.T) {
	svcs, sl := webFixture()
	st := Build(IPv4, labNode, svcs, sl)
	if len(st.Ports) != 2 {
		t.Fatalf("ports %v, want http and stats", keysOf(st))
	}
	http := portOf(t, st, "default", "web", "http", TCP)
	if http.ClusterIP != netip.MustParseAddr("10.96.0.20") || http.Port != 80 || http.NodePort != 0 || http.External() {
		t.Errorf("http port: %+v", http)
	}
	// Pods that name "web" 8080 and those that name it 8081 are in
	// different slices; each slice's port number is used for its pods.
	if got, want := epStrings(http.Endpoints), []string{"10.244.1.5:8080", "10.244.2.7:8080", "10.244.2.8:8081"}; !slices.Equal(got, want) {
		t.Errorf("http endpoints %v, want %v", got, want)
	}
	stats := portOf(t, st, "default", "web", "stats", UDP)
	if got, want := epStrings(stats.Endpoints), []string{"10.244.1.5:9100", "10.244.2.7:9100", "10.244.2.8:9101"}; !slices.Equal(got, want) {
		t.Errorf("stats endpoints %v, want %v", got, want)
	}
	if !http.Endpoints[0].Local || http.Endpoints[1].Local {
		t.Errorf("local flags: %+v", http.Endpoints)
	}
}

func TestBuildEndpointConditions(t *testing.T) {
	ports := []discoveryv1.EndpointPort{esPort("http", corev1.ProtocolTCP, 8080)}
	svcs := []*corev1.Service{service("default", "roll", "10.96.0.60", []corev1.ServicePort{tcp("http", 80)})}
	for _, c := range []struct {
		name          string
		eps           []discoveryv1.Endpoint
		cluster, loc  []string
		localReady    int
		wantEndpoints int
	}{
		{"ready only; terminating ignored while one is ready",
			[]discoveryv1.Endpoint{endpointOn("10.244.1.5", "node-1", terminating), endpointOn("10.244.2.7", "node-2"), endpointOn("10.244.2.8", "node-2", notReady)},
			[]string{"10.244.2.7:8080"}, []string{"10.244.1.5:8080"}, 0, 3},
		{"no ready endpoint: the serving terminating ones",
			[]discoveryv1.Endpoint{endpointOn("10.244.1.5", "node-1", terminating), endpointOn("10.244.2.7", "node-2", terminating),
				endpointOn("10.244.2.8", "node-2", terminatingNotServing)},
			[]string{"10.244.1.5:8080", "10.244.2.7:8080"}, []string{"10.244.1.5:8080"}, 0, 3},
		{"none serving: none",
			[]discoveryv1.Endpoint{endpointOn("10.244.1.5", "node-1", notReady), endpointOn("10.244.2.8", "node-2", terminatingNotServing)},
			nil, nil, 0, 2},
		{"conditions unset mean ready",
			[]discoveryv1.Endpoint{endpointOn("10.244.1.5", "node-1")},
			[]string{"10.244.1.5:8080"}, []string{"10.244.1.5:8080"}, 1, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := Build(IPv4, labNode, svcs, []*discoveryv1.EndpointSlice{epSlice("default", "roll", "roll-1", ports, c.eps...)})
			sp := portOf(t, st, "default", "roll", "http", TCP)
			if got := epStrings(sp.ClusterEndpoints()); !slices.Equal(got, c.cluster) {
				t.Errorf("cluster endpoints %v, want %v", got, c.cluster)
			}
			if got := epStrings(sp.LocalEndpoints()); !slices.Equal(got, c.loc) {
				t.Errorf("local endpoints %v, want %v", got, c.loc)
			}
			if sp.LocalReadyCount() != c.localReady || len(sp.Endpoints) != c.wantEndpoints {
				t.Errorf("local ready %d (want %d), endpoints %d (want %d)", sp.LocalReadyCount(), c.localReady, len(sp.Endpoints), c.wantEndpoints)
			}
		})
	}
}

func TestBuildDuplicateEndpointsAcrossSlices(t *testing.T) {
	ports := []discoveryv1.EndpointPort{esPort("http", corev1.ProtocolTCP, 8080)}
	svcs := []*corev1.Service{service("default", "web", "10.96.0.20", []corev1.ServicePort{tcp("http", 80)})}
	// The controller moves 10.244.1.5 between slices: for a moment both
	// list it, one with stale conditions. Once, ready.
	sl := []*discoveryv1.EndpointSlice{
		epSlice("default", "web", "web-a", ports, endpointOn("10.244.1.5", "node-1", notReady)),
		epSlice("default", "web", "web-b", ports, endpointOn("10.244.1.5", "node-1"), endpointOn("10.244.2.7", "node-2")),
	}
	sp := portOf(t, Build(IPv4, labNode, svcs, sl), "default", "web", "http", TCP)
	if got := epStrings(sp.ClusterEndpoints()); !slices.Equal(got, []string{"10.244.1.5:8080", "10.244.2.7:8080"}) || len(sp.Endpoints) != 2 {
		t.Errorf("endpoints %v (all %v)", got, sp.Endpoints)
	}
}

func TestBuildTrafficPoliciesAndAffinity(t *testing.T) {
	svcs := []*corev1.Service{
		service("default", "lb", "10.96.0.70", []corev1.ServicePort{tcp("http", 80)}, nodePorts(30070), loadBalancer("198.51.100.9"), etpLocal(32070), affinity(0)),
		service("default", "cip", "10.96.0.71", []corev1.ServicePort{tcp("http", 80)}, etpLocal(0), itpLocal, affinity(30)),
	}
	st := Build(IPv4, labNode, svcs, nil)
	lb := portOf(t, st, "default", "lb", "http", TCP)
	if !lb.ExternalLocal || lb.InternalLocal || lb.HealthCheckNodePort != 32070 || lb.NodePort != 30070 ||
		!slices.Equal(lb.LoadBalancerIPs, addrList("198.51.100.9")) || lb.AffinityTimeout != DefaultAffinityTimeout {
		t.Errorf("lb: %+v", lb)
	}
	cip := portOf(t, st, "default", "cip", "http", TCP)
	// externalTrafficPolicy means nothing without an external destination.
	if cip.ExternalLocal || !cip.InternalLocal || cip.HealthCheckNodePort != 0 || cip.AffinityTimeout != 30*time.Second {
		t.Errorf("cip: %+v", cip)
	}
}

func TestBuildSkipsWhatIsNotProxied(t *testing.T) {
	headless := service("default", "headless", corev1.ClusterIPNone, []corev1.ServicePort{tcp("http", 80)})
	extName := service("default", "extname", "", []corev1.ServicePort{tcp("http", 80)})
	extName.Spec.Type, extName.Spec.ClusterIPs = corev1.ServiceTypeExternalName, nil
	unallocated := service("default", "pending", "", []corev1.ServicePort{tcp("http", 80)})
	v6only := service("default", "v6", "fd00:10:96::5", []corev1.ServicePort{tcp("http", 80)})
	sctp := service("default", "sctp", "10.96.0.80", []corev1.ServicePort{
		svcPort("assoc", corev1.ProtocolSCTP, 3868, intstr.FromInt32(3868)), tcp("http", 80)})
	proxyMode := service("default", "proxied-lb", "10.96.0.81", []corev1.ServicePort{tcp("http", 80)}, loadBalancer("198.51.100.1", "198.51.100.2"))
	mode := corev1.LoadBalancerIPModeProxy
	proxyMode.Status.LoadBalancer.Ingress[0].IPMode = &mode
	st := Build(IPv4, labNode, []*corev1.Service{headless, extName, unallocated, v6only, sctp, proxyMode}, nil)
	if got, want := keysOf(st), []string{"default/proxied-lb:http/tcp", "default/sctp:http/tcp"}; !slices.Equal(got, want) {
		t.Errorf("ports %v, want %v", got, want)
	}
	// An ingress IP in Proxy mode belongs to a load balancer that proxies
	// to the nodes itself: not captured.
	if got := portOf(t, st, "default", "proxied-lb", "http", TCP).LoadBalancerIPs; !slices.Equal(got, addrList("198.51.100.2")) {
		t.Errorf("load-balancer IPs %v, want only the VIP-mode one", got)
	}
}

func TestBuildSelectorlessServiceWithManualSlices(t *testing.T) {
	svc := service("default", "external-db", "10.96.0.90", []corev1.ServicePort{tcp("", 5432)})
	svc.Spec.Selector = nil
	// Written by a person: no owner, no nodeName, unnamed port.
	name, proto, port := "", corev1.ProtocolTCP, int32(5432)
	manual := epSlice("default", "external-db", "external-db-manual",
		[]discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
		discoveryv1.Endpoint{Addresses: []string{"192.168.56.200"}})
	other := epSlice("default", "someone-else", "x", []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
		discoveryv1.Endpoint{Addresses: []string{"192.168.56.201"}})
	sp := portOf(t, Build(IPv4, labNode, []*corev1.Service{svc}, []*discoveryv1.EndpointSlice{manual, other}), "default", "external-db", "", TCP)
	if got := epStrings(sp.ClusterEndpoints()); !slices.Equal(got, []string{"192.168.56.200:5432"}) || sp.Endpoints[0].Local {
		t.Errorf("endpoints %v (%+v)", got, sp.Endpoints)
	}
}

func TestBuildDualStack(t *testing.T) {
	svc := service("default", "ds", "10.96.0.95", []corev1.ServicePort{tcp("http", 80)}, externalIPs("203.0.113.9", "2001:db8::9"))
	svc.Spec.ClusterIPs = []string{"fd00:10:96::95", "10.96.0.95"} // IPv6 primary
	ports := []discoveryv1.EndpointPort{esPort("http", corev1.ProtocolTCP, 8080)}
	v4 := epSlice("default", "ds", "ds-v4", ports, endpointOn("10.244.1.5", "node-1"))
	v6 := epSlice("default", "ds", "ds-v6", ports, endpointOn("fd00:10:244:1::5", "node-1"))
	v6.AddressType = discoveryv1.AddressTypeIPv6
	fqdn := epSlice("default", "ds", "ds-fqdn", ports, endpointOn("db.example.com", "node-1"))
	fqdn.AddressType = discoveryv1.AddressTypeFQDN
	bad := epSlice("default", "ds", "ds-bad", ports, endpointOn("fd00::bad", "node-1")) // v6 in a v4 slice
	node := labNode
	node.IPs = append(node.IPs, netip.MustParseAddr("fd00:192:168:56::11"))
	node.ClusterCIDRs = append(node.ClusterCIDRs, netip.MustParsePrefix("fd00:10:244::/48"), netip.MustParsePrefix("10.244.7.0/24"))
	all := []*discoveryv1.EndpointSlice{v4, v6, fqdn, bad}

	st4 := Build(IPv4, node, []*corev1.Service{svc}, all)
	sp4 := portOf(t, st4, "default", "ds", "http", TCP)
	if sp4.ClusterIP.String() != "10.96.0.95" || !slices.Equal(sp4.ExternalIPs, addrList("203.0.113.9")) ||
		!slices.Equal(epStrings(sp4.Endpoints), []string{"10.244.1.5:8080"}) {
		t.Errorf("IPv4: %+v", sp4)
	}
	if !slices.Equal(st4.Node.IPs, addrList("10.244.1.1", "192.168.56.11")) || !slices.Equal(st4.Node.ClusterCIDRs, prefixList("10.244.0.0/16")) {
		t.Errorf("IPv4 node facts: %+v", st4.Node)
	}
	sp6 := portOf(t, Build(IPv6, node, []*corev1.Service{svc}, all), "default", "ds", "http", TCP)
	if sp6.ClusterIP.String() != "fd00:10:96::95" || !slices.Equal(sp6.ExternalIPs, addrList("2001:db8::9")) ||
		!slices.Equal(epStrings(sp6.Endpoints), []string{"[fd00:10:244:1::5]:8080"}) {
		t.Errorf("IPv6: %+v", sp6)
	}
}

func TestNamesAreValidAndStable(t *testing.T) {
	long := ServicePortName{Namespace: "a-very-long-namespace-name-that-goes-on-and-on-to-sixty-three-ch",
		Name: "and-a-service-name-that-is-just-as-long-as-the-api-allows-it-ok", Port: "and-a-port-name-too", Protocol: UDP}
	pn := namesFor(long)
	e := Endpoint{IP: netip.MustParseAddr("fd00:10:244:1::1234"), Port: 65535}
	names := []string{pn.svc, pn.loc, pn.ext, pn.endpointChain(e), pn.affinitySet(e, time.Hour)}
	for _, n := range names {
		if len(n) > maxNameLen {
			t.Errorf("%q is %d characters", n, len(n))
		}
		for _, r := range n {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' || r == '/') {
				t.Errorf("%q has %q, not allowed in an nft name", n, r)
			}
		}
	}
	// Truncated, yet distinct: the hash covers the whole identity.
	other := long
	other.Port = "and-a-port-name-two"
	if namesFor(other).svc == pn.svc {
		t.Errorf("two ports share the chain name %s", pn.svc)
	}
	if pn.affinitySet(e, time.Hour) == pn.affinitySet(e, 2*time.Hour) {
		t.Error("a new affinity timeout must be a new set")
	}
	if namesFor(long) != pn {
		t.Error("names are not stable")
	}
}

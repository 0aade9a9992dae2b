package proxy

import (
	"context"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/knftables"
)

var ctx = context.Background()

// The lab's node-1 (ARCHITECTURE.md): 10.244.1.0/24 of 10.244.0.0/16.
var labNode = Node{
	Name:         "node-1",
	IPs:          addrList("192.168.56.11", "10.244.1.1"),
	ClusterCIDRs: prefixList("10.244.0.0/16"),
	PodCIDRs:     prefixList("10.244.1.0/24"),
}

func addrList(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func prefixList(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// svcOpt changes a Service under construction.
type svcOpt func(*corev1.Service)

// service is a ClusterIP Service (cip "None": headless).
func service(ns, name, cip string, ports []corev1.ServicePort, opts ...svcOpt) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: cip, ClusterIPs: []string{cip}, Ports: ports},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func svcPort(name string, proto corev1.Protocol, port int32, target intstr.IntOrString) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: proto, Port: port, TargetPort: target}
}

func tcp(name string, port int32) corev1.ServicePort {
	return svcPort(name, corev1.ProtocolTCP, port, intstr.FromInt32(port))
}

func udp(name string, port int32) corev1.ServicePort {
	return svcPort(name, corev1.ProtocolUDP, port, intstr.FromInt32(port))
}

// nodePorts makes it a NodePort Service with these node ports, in order.
func nodePorts(nps ...int32) svcOpt {
	return func(s *corev1.Service) {
		if s.Spec.Type == corev1.ServiceTypeClusterIP {
			s.Spec.Type = corev1.ServiceTypeNodePort
		}
		for i := range nps {
			s.Spec.Ports[i].NodePort = nps[i]
		}
	}
}

// loadBalancer makes it a LoadBalancer with these ingress IPs.
func loadBalancer(ips ...string) svcOpt {
	return func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		for _, ip := range ips {
			s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip})
		}
	}
}

func externalIPs(ips ...string) svcOpt {
	return func(s *corev1.Service) { s.Spec.ExternalIPs = ips }
}

func etpLocal(healthCheckNodePort int32) svcOpt {
	return func(s *corev1.Service) {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = healthCheckNodePort
	}
}

func itpLocal(s *corev1.Service) {
	l := corev1.ServiceInternalTrafficPolicyLocal
	s.Spec.InternalTrafficPolicy = &l
}

func affinity(seconds int32) svcOpt {
	return func(s *corev1.Service) {
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		if seconds > 0 {
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &seconds}}
		}
	}
}

func esPort(name string, proto corev1.Protocol, port int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: &name, Protocol: &proto, Port: &port}
}

// epSlice is an IPv4 EndpointSlice of Service ns/svc.
func epSlice(ns, svc, name string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       ports,
		Endpoints:   eps,
	}
}

// epOpt sets an endpoint's conditions.
type epOpt func(*discoveryv1.Endpoint)

// endpointOn is a ready endpoint ip on node.
func endpointOn(ip, node string, opts ...epOpt) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{ip}, NodeName: &node}
	for _, o := range opts {
		o(&e)
	}
	return e
}

func notReady(e *discoveryv1.Endpoint) {
	f := false
	e.Conditions.Ready, e.Conditions.Serving = &f, &f
}

// terminating is an endpoint being deleted that still serves.
func terminating(e *discoveryv1.Endpoint) {
	f, t := false, true
	e.Conditions.Ready, e.Conditions.Serving, e.Conditions.Terminating = &f, &t, &t
}

// terminatingNotServing is an endpoint being deleted that no longer serves.
func terminatingNotServing(e *discoveryv1.Endpoint) {
	f, t := false, true
	e.Conditions.Ready, e.Conditions.Serving, e.Conditions.Terminating = &f, &f, &t
}

func newFake() *knftables.Fake { return knftables.NewFake(IPv4.NFT, TableName) }

// syncState builds the state and syncs p with it, failing the test on error.
func syncState(t *testing.T, p *Proxier, node Node, svcs []*corev1.Service, sl []*discoveryv1.EndpointSlice) *State {
	t.Helper()
	st := Build(IPv4, node, svcs, sl)
	if err := p.Sync(ctx, st); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	return st
}

// webFixture is one ClusterIP Service default/web with two named ports
// (http → the pods' "web" port, dns-ish udp), three pods on two nodes, one
// of them naming its port differently (so in a slice of its own).
func webFixture() ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
	svcs := []*corev1.Service{service("default", "web", "10.96.0.20", []corev1.ServicePort{
		svcPort("http", corev1.ProtocolTCP, 80, intstr.FromString("web")),
		svcPort("stats", corev1.ProtocolUDP, 9000, intstr.FromString("stats")),
	})}
	sl := []*discoveryv1.EndpointSlice{
		epSlice("default", "web", "web-a", []discoveryv1.EndpointPort{
			esPort("http", corev1.ProtocolTCP, 8080), esPort("stats", corev1.ProtocolUDP, 9100)},
			endpointOn("10.244.1.5", "node-1"), endpointOn("10.244.2.7", "node-2")),
		epSlice("default", "web", "web-b", []discoveryv1.EndpointPort{
			esPort("http", corev1.ProtocolTCP, 8081), esPort("stats", corev1.ProtocolUDP, 9101)},
			endpointOn("10.244.2.8", "node-2")),
	}
	return svcs, sl
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

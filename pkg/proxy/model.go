package proxy

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/podnet/podnet/internal/cidrset"
)

// Protocol is a Service port's transport protocol, spelled as nft spells it.
// SCTP is not proxied: the kernels podnet targets build it as a module the
// lab does not load, and upstream users of SCTP Services are rare.
type Protocol string

// The protocols the proxy programs.
const (
	TCP Protocol = "tcp"
	UDP Protocol = "udp"
)

// DefaultAffinityTimeout is the sessionAffinity ClientIP timeout when the
// Service sets none (the API default, 3 hours).
const DefaultAffinityTimeout = 10800 * time.Second

// Node is what the proxy needs to know about the node it runs on.
type Node struct {
	// Name is the Node's name: endpoints with this nodeName are local.
	Name string
	// IPs are the node's addresses. With NodePortAddresses they are the
	// addresses NodePorts answer on.
	IPs []netip.Addr
	// ClusterCIDRs are the pod networks. A connection to a ClusterIP from
	// outside them (the node itself, or a router sending the Service range
	// to this node) is masqueraded, so its replies come back through this
	// node; pods keep their own address. Empty: only hairpin connections
	// are masqueraded, as kube-proxy does without --cluster-cidr.
	ClusterCIDRs []netip.Prefix
	// PodCIDRs are this node's pod subnets. Pods here that reach an
	// external destination (NodePort, external or load-balancer IP) of an
	// externalTrafficPolicy: Local Service are served like ClusterIP
	// traffic, by every endpoint, as if the connection had gone out to the
	// load balancer and come back. Empty: ClusterCIDRs.
	PodCIDRs []netip.Prefix
	// NodePortAddresses restrict NodePorts to the node IPs inside these
	// prefixes (kube-proxy's --nodeport-addresses). Empty: every local
	// address of the node but loopback.
	NodePortAddresses []netip.Prefix
}

// ServicePortName names one port of one Service.
type ServicePortName struct {
	Namespace, Name string
	Port            string // the Service port's name ("" for a single unnamed port)
	Protocol        Protocol
}

func (n ServicePortName) String() string {
	return fmt.Sprintf("%s/%s:%s/%s", n.Namespace, n.Name, n.Port, n.Protocol)
}

// Endpoint is one backend of a Service port, as its EndpointSlice gives
// it: the port is the slice's, so a named targetPort is already resolved
// (per slice: pods that name the port differently land in different slices).
type Endpoint struct {
	IP   netip.Addr
	Port uint16
	// Local: the endpoint's nodeName is this node.
	Local bool
	// The EndpointSlice conditions, with the API's defaults applied
	// (ready and serving nil mean true, terminating nil means false).
	Ready, Serving, Terminating bool
}

func (e Endpoint) String() string { return netip.AddrPortFrom(e.IP, e.Port).String() }

// ServicePort is the desired proxy state of one Service port.
type ServicePort struct {
	Name      ServicePortName
	ClusterIP netip.Addr
	Port      uint16
	// NodePort is 0 when the Service has none.
	NodePort        uint16
	ExternalIPs     []netip.Addr
	LoadBalancerIPs []netip.Addr
	// ExternalLocal is externalTrafficPolicy: Local on a Service with an
	// external destination: those keep the client's address and go only to
	// endpoints on this node.
	ExternalLocal bool
	// InternalLocal is internalTrafficPolicy: Local: the ClusterIP goes
	// only to endpoints on this node.
	InternalLocal bool
	// AffinityTimeout is sessionAffinity: ClientIP's timeout; 0 is none.
	AffinityTimeout time.Duration
	// HealthCheckNodePort serves the local endpoint count to load
	// balancers (externalTrafficPolicy: Local LoadBalancers); 0 is none.
	HealthCheckNodePort uint16
	// Endpoints, sorted by address and port, without duplicates.
	Endpoints []Endpoint
}

// External says whether the port has a destination beyond its ClusterIP.
func (sp *ServicePort) External() bool {
	return sp.NodePort != 0 || len(sp.ExternalIPs) > 0 || len(sp.LoadBalancerIPs) > 0
}

// ClusterEndpoints are the endpoints that traffic under the Cluster
// policy uses: the ready ones, or, when none is ready anywhere, the
// serving terminating ones (so a rolling update that briefly has no ready
// pod drains gracefully instead of failing), as upstream does.
func (sp *ServicePort) ClusterEndpoints() []Endpoint {
	return pick(sp.Endpoints, func(e Endpoint) bool { return true })
}

// LocalEndpoints are the endpoints that traffic under the Local policy
// uses: the same choice as ClusterEndpoints, among this node's only.
func (sp *ServicePort) LocalEndpoints() []Endpoint {
	return pick(sp.Endpoints, func(e Endpoint) bool { return e.Local })
}

// LocalReadyCount is what a load balancer's health check learns: the
// number of ready endpoints on this node (terminating ones do not count,
// so a draining node stops receiving new traffic).
func (sp *ServicePort) LocalReadyCount() int {
	n := 0
	for _, e := range sp.Endpoints {
		if e.Local && e.Ready {
			n++
		}
	}
	return n
}

func pick(eps []Endpoint, in func(Endpoint) bool) []Endpoint {
	var ready, fallback []Endpoint
	for _, e := range eps {
		switch {
		case !in(e):
		case e.Ready:
			ready = append(ready, e)
		case e.Serving && e.Terminating:
			fallback = append(fallback, e)
		}
	}
	if len(ready) > 0 {
		return ready
	}
	return fallback
}

// Equal says whether two ports have the same desired state.
func (sp *ServicePort) Equal(o *ServicePort) bool {
	return sp.Name == o.Name && sp.ClusterIP == o.ClusterIP && sp.Port == o.Port &&
		sp.NodePort == o.NodePort && sp.ExternalLocal == o.ExternalLocal &&
		sp.InternalLocal == o.InternalLocal && sp.AffinityTimeout == o.AffinityTimeout &&
		sp.HealthCheckNodePort == o.HealthCheckNodePort &&
		slices.Equal(sp.ExternalIPs, o.ExternalIPs) && slices.Equal(sp.LoadBalancerIPs, o.LoadBalancerIPs) &&
		slices.Equal(sp.Endpoints, o.Endpoints)
}

// State is the whole desired proxy state of one family on one node.
type State struct {
	Family Family
	Node   Node
	Ports  map[ServicePortName]*ServicePort
}

// Build computes the desired state from the API objects: every port of
// every proxied Service, with its endpoints. It is pure: the same inputs
// give the same State. Not proxied: headless Services (clusterIP None),
// ExternalName Services, Services without a ClusterIP of this family, SCTP
// ports. Addresses of the other family are ignored everywhere (dual-stack
// Services, IPv6 EndpointSlices, external IPs); so are FQDN slices.
func Build(fam Family, node Node, services []*corev1.Service, epSlices []*discoveryv1.EndpointSlice) *State {
	st := &State{Family: fam, Node: node.forFamily(fam), Ports: map[ServicePortName]*ServicePort{}}
	bySvc := slicesByService(fam, epSlices)
	for _, svc := range services {
		for _, sp := range servicePorts(fam, svc) {
			sp.Endpoints = endpointsFor(fam, sp.Name, bySvc[svcKey{svc.Namespace, svc.Name}], node.Name)
			st.Ports[sp.Name] = sp
		}
	}
	return st
}

// forFamily keeps only the node facts of fam, normalized.
func (n Node) forFamily(fam Family) Node {
	out := Node{Name: n.Name}
	for _, a := range n.IPs {
		if fam.has(a) {
			out.IPs = append(out.IPs, a)
		}
	}
	keep := func(ps []netip.Prefix) []netip.Prefix {
		var r []netip.Prefix
		for _, p := range ps {
			if p.IsValid() && fam.has(p.Addr()) {
				r = append(r, p.Masked())
			}
		}
		return cidrset.Minimal(r)
	}
	out.ClusterCIDRs, out.PodCIDRs, out.NodePortAddresses = keep(n.ClusterCIDRs), keep(n.PodCIDRs), keep(n.NodePortAddresses)
	slices.SortFunc(out.IPs, netip.Addr.Compare)
	out.IPs = slices.Compact(out.IPs)
	return out
}

// equal says whether two (normalized) node facts are the same.
func (n Node) equal(o Node) bool {
	return n.Name == o.Name && slices.Equal(n.IPs, o.IPs) && slices.Equal(n.ClusterCIDRs, o.ClusterCIDRs) &&
		slices.Equal(n.PodCIDRs, o.PodCIDRs) && slices.Equal(n.NodePortAddresses, o.NodePortAddresses)
}

// servicePorts is the ports of one Service, without endpoints.
func servicePorts(fam Family, svc *corev1.Service) []*ServicePort {
	spec := &svc.Spec
	if spec.Type == corev1.ServiceTypeExternalName || spec.ClusterIP == corev1.ClusterIPNone {
		return nil
	}
	cip, ok := clusterIP(fam, spec)
	if !ok {
		return nil
	}
	externalIPs := addrs(fam, spec.ExternalIPs)
	var lbIPs []netip.Addr
	if spec.Type == corev1.ServiceTypeLoadBalancer {
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			// An ingress in Proxy mode is a load balancer that proxies to
			// the nodes itself: its IP is not captured here (as upstream).
			if ing.IPMode != nil && *ing.IPMode == corev1.LoadBalancerIPModeProxy {
				continue
			}
			if a, ok := fam.parseAddr(ing.IP); ok {
				lbIPs = append(lbIPs, a)
			}
		}
		lbIPs = sortedUnique(lbIPs)
	}
	var affinity time.Duration
	if spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		affinity = DefaultAffinityTimeout
		if c := spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			affinity = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
		}
	}
	var out []*ServicePort
	for _, p := range spec.Ports {
		proto, ok := protocol(p.Protocol)
		if !ok || p.Port <= 0 || p.Port > 65535 {
			continue
		}
		sp := &ServicePort{
			Name:      ServicePortName{Namespace: svc.Namespace, Name: svc.Name, Port: p.Name, Protocol: proto},
			ClusterIP: cip, Port: uint16(p.Port),
			ExternalIPs: externalIPs, LoadBalancerIPs: lbIPs,
			InternalLocal:   spec.InternalTrafficPolicy != nil && *spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal,
			AffinityTimeout: affinity,
		}
		if (spec.Type == corev1.ServiceTypeNodePort || spec.Type == corev1.ServiceTypeLoadBalancer) && p.NodePort > 0 && p.NodePort <= 65535 {
			sp.NodePort = uint16(p.NodePort)
		}
		sp.ExternalLocal = spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal && sp.External()
		if sp.ExternalLocal && spec.Type == corev1.ServiceTypeLoadBalancer && spec.HealthCheckNodePort > 0 && spec.HealthCheckNodePort <= 65535 {
			sp.HealthCheckNodePort = uint16(spec.HealthCheckNodePort)
		}
		out = append(out, sp)
	}
	return out
}

// clusterIP is the Service's ClusterIP of fam: spec.clusterIPs holds one
// per family of a dual-stack Service; older objects only spec.clusterIP.
func clusterIP(fam Family, spec *corev1.ServiceSpec) (netip.Addr, bool) {
	ips := spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{spec.ClusterIP}
	}
	for _, s := range ips {
		if a, ok := fam.parseAddr(s); ok {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func protocol(p corev1.Protocol) (Protocol, bool) {
	switch p {
	case corev1.ProtocolTCP, "":
		return TCP, true
	case corev1.ProtocolUDP:
		return UDP, true
	}
	return "", false
}

func addrs(fam Family, ss []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if a, ok := fam.parseAddr(s); ok {
			out = append(out, a)
		}
	}
	return sortedUnique(out)
}

func sortedUnique(as []netip.Addr) []netip.Addr {
	slices.SortFunc(as, netip.Addr.Compare)
	return slices.Compact(as)
}

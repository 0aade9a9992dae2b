package proxy

import (
	"cmp"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

type svcKey struct{ namespace, name string }

// slicesByService groups the EndpointSlices of fam by the Service their
// kubernetes.io/service-name label names. The label, not an owner
// reference, is the contract: slices a person or a controller writes for
// a Service without a selector are used exactly like the controller's.
func slicesByService(fam Family, all []*discoveryv1.EndpointSlice) map[svcKey][]*discoveryv1.EndpointSlice {
	out := map[svcKey][]*discoveryv1.EndpointSlice{}
	for _, s := range all {
		name := s.Labels[discoveryv1.LabelServiceName]
		if name == "" || s.AddressType != fam.AddressType {
			continue
		}
		k := svcKey{s.Namespace, name}
		out[k] = append(out[k], s)
	}
	return out
}

// endpointsFor collects the endpoints of one Service port from its
// Service's slices: in each slice, the port with the Service port's name
// and protocol gives the port number. An endpoint listed twice (slices
// overlap while the controller moves endpoints between them) is kept once,
// with the best of its conditions.
func endpointsFor(fam Family, name ServicePortName, svcSlices []*discoveryv1.EndpointSlice, nodeName string) []Endpoint {
	seen := map[netip.AddrPort]int{}
	var out []Endpoint
	for _, s := range svcSlices {
		port, ok := slicePort(s, name)
		if !ok {
			continue
		}
		for i := range s.Endpoints {
			e, ok := endpoint(fam, &s.Endpoints[i], port, nodeName)
			if !ok {
				continue
			}
			k := netip.AddrPortFrom(e.IP, e.Port)
			if j, dup := seen[k]; dup {
				if rank(e) > rank(out[j]) {
					out[j] = e
				}
				continue
			}
			seen[k] = len(out)
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b Endpoint) int {
		return cmp.Or(a.IP.Compare(b.IP), cmp.Compare(a.Port, b.Port))
	})
	return out
}

// slicePort finds the slice's port for the Service port.
func slicePort(s *discoveryv1.EndpointSlice, name ServicePortName) (uint16, bool) {
	for _, p := range s.Ports {
		pname, proto := "", corev1.ProtocolTCP
		if p.Name != nil {
			pname = *p.Name
		}
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		if pp, ok := protocol(proto); !ok || pp != name.Protocol || pname != name.Port {
			continue
		}
		if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
			return 0, false
		}
		return uint16(*p.Port), true
	}
	return 0, false
}

// endpoint reads one slice endpoint. Only its first address counts: the
// API defines the others as interchangeable, and proxies use the first.
func endpoint(fam Family, ep *discoveryv1.Endpoint, port uint16, nodeName string) (Endpoint, bool) {
	if len(ep.Addresses) == 0 {
		return Endpoint{}, false
	}
	ip, ok := fam.parseAddr(ep.Addresses[0])
	if !ok {
		return Endpoint{}, false
	}
	c := ep.Conditions
	return Endpoint{
		IP: ip, Port: port,
		Local:       ep.NodeName != nil && *ep.NodeName == nodeName && nodeName != "",
		Ready:       c.Ready == nil || *c.Ready,
		Serving:     c.Serving == nil || *c.Serving,
		Terminating: c.Terminating != nil && *c.Terminating,
	}, true
}

// rank orders the conditions of duplicates: ready, then serving
// terminating, then the rest.
func rank(e Endpoint) int {
	switch {
	case e.Ready:
		return 2
	case e.Serving && e.Terminating:
		return 1
	}
	return 0
}

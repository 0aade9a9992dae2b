package proxy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// The objects of one Service port, as plain data: render computes them
// from the ServicePort alone (and a few node facts), so that a sync can
// compare what it would write with what it wrote last, port by port.

// chainObj is a regular chain and its rules, in order.
type chainObj struct {
	name  string
	rules []string
}

// setObj is an affinity set: client addresses, each forgotten timeout
// after its last connection.
type setObj struct {
	name    string
	timeout time.Duration
}

// elemObj is a verdict-map element (see newElem).
type elemObj struct {
	mapName string
	key     []string
	value   string
	id      string // map name and key
}

// portObjects is everything one Service port owns in the table.
type portObjects struct {
	chains []chainObj
	sets   []setObj
	elems  []elemObj
	// endpoints are the endpoints that traffic can reach (the union of
	// the Cluster and Local choices), for conntrack hygiene.
	endpoints []Endpoint
}

func (o *portObjects) ruleCount() int {
	n := 0
	for _, c := range o.chains {
		n += len(c.rules)
	}
	return n
}

// renderCtx holds the node facts that shape per-port rules.
type renderCtx struct {
	fam Family
	// masqOutside: cluster CIDRs are known, so ClusterIP traffic from
	// outside them is masqueraded.
	masqOutside bool
	// podShortcut: pod CIDRs are known, so this node's pods reaching an
	// externalTrafficPolicy: Local destination use every endpoint.
	podShortcut bool
}

func newRenderCtx(fam Family, n Node) renderCtx {
	return renderCtx{fam: fam, masqOutside: len(n.ClusterCIDRs) > 0, podShortcut: len(n.ClusterCIDRs)+len(n.PodCIDRs) > 0}
}

// render computes the objects of sp. The port's traffic classes:
//
//   - its ClusterIP goes to the svc- chain (every usable endpoint), or with
//     internalTrafficPolicy Local to the loc- chain (this node's); with no
//     endpoint at all it is rejected, with none here under Local dropped;
//   - its external destinations (NodePort, external IPs, load-balancer
//     IPs) go to the ext- chain, which masquerades and continues to svc-
//     (externalTrafficPolicy Cluster), or keeps the client's address and
//     continues to loc- (Local), with no endpoint at all they are rejected.
func render(rc renderCtx, sp *ServicePort) *portObjects {
	pn := namesFor(sp.Name)
	cl, lo := sp.ClusterEndpoints(), sp.LocalEndpoints()
	useSvc := len(cl) > 0 && (!sp.InternalLocal || sp.External())
	useLoc := len(lo) > 0 && (sp.InternalLocal || sp.ExternalLocal)
	internal := ""
	switch {
	case !sp.InternalLocal && len(cl) > 0:
		internal = pn.svc
	case sp.InternalLocal && len(lo) > 0:
		internal = pn.loc
	}
	o := &portObjects{}
	o.elems = destinations(sp, pn, internal, len(cl) > 0)
	if useSvc {
		o.endpoints = append(o.endpoints, cl...)
	}
	if useLoc {
		o.endpoints = union(o.endpoints, lo)
	}
	for _, e := range o.endpoints {
		o.chains = append(o.chains, endpointChain(rc.fam, sp, pn, e))
		if sp.AffinityTimeout > 0 {
			o.sets = append(o.sets, setObj{name: pn.affinitySet(e, sp.AffinityTimeout), timeout: sp.AffinityTimeout})
		}
	}
	if useSvc {
		o.chains = append(o.chains, policyChain(rc, sp, pn, pn.svc, cl, internal == pn.svc))
	}
	if useLoc {
		o.chains = append(o.chains, policyChain(rc, sp, pn, pn.loc, lo, internal == pn.loc))
	}
	if sp.External() && len(cl) > 0 {
		o.chains = append(o.chains, externalChain(rc, sp, pn, len(lo) > 0))
	}
	return o
}

// The static chains, sets and maps that per-port objects refer to.
const (
	mapServiceIPs      = "service-ips"
	mapServiceNodePort = "service-nodeports"
	mapNoEndpointIPs   = "no-endpoint-services"
	mapNoEndpointPorts = "no-endpoint-nodeports"
	chainReject        = "reject-chain"
	chainMarkMasq      = "mark-for-masquerade"
	setClusterCIDRs    = "cluster-cidrs"
	setPodCIDRs        = "pod-cidrs"
)

// destinations are the port's map elements: where each of its addresses
// (and its NodePort) leads.
func destinations(sp *ServicePort, pn portNames, internal string, hasAny bool) []elemObj {
	proto, port := string(sp.Name.Protocol), strconv.Itoa(int(sp.Port))
	var out []elemObj
	cipKey := []string{sp.ClusterIP.String(), proto, port}
	switch {
	case internal != "":
		out = append(out, newElem(mapServiceIPs, cipKey, "goto "+internal))
	case !hasAny:
		out = append(out, newElem(mapNoEndpointIPs, cipKey, "goto "+chainReject))
	default: // internalTrafficPolicy Local, no endpoint here: as upstream, drop
		out = append(out, newElem(mapNoEndpointIPs, cipKey, "drop"))
	}
	ipMap, npMap, verdict := mapServiceIPs, mapServiceNodePort, "goto "+pn.ext
	if !hasAny {
		ipMap, npMap, verdict = mapNoEndpointIPs, mapNoEndpointPorts, "goto "+chainReject
	}
	for _, a := range union2(sp.ExternalIPs, sp.LoadBalancerIPs) {
		out = append(out, newElem(ipMap, []string{a.String(), proto, port}, verdict))
	}
	if sp.NodePort != 0 {
		out = append(out, newElem(npMap, []string{proto, strconv.Itoa(int(sp.NodePort))}, verdict))
	}
	return out
}

// policyChain spreads new connections equally over eps: one numgen
// lookup, whatever their number. Clients with affinity go first to the
// endpoint they used last.
func policyChain(rc renderCtx, sp *ServicePort, pn portNames, name string, eps []Endpoint, internal bool) chainObj {
	c := chainObj{name: name}
	if internal && rc.masqOutside {
		c.rules = append(c.rules, fmt.Sprintf("%s daddr %s %s saddr != @%s jump %s",
			rc.fam.IP, sp.ClusterIP, rc.fam.IP, setClusterCIDRs, chainMarkMasq))
	}
	if sp.AffinityTimeout > 0 {
		for _, e := range eps {
			c.rules = append(c.rules, fmt.Sprintf("%s saddr @%s goto %s",
				rc.fam.IP, pn.affinitySet(e, sp.AffinityTimeout), pn.endpointChain(e)))
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "numgen random mod %d vmap { ", len(eps))
	for i, e := range eps {
		if i > 0 {
			b.WriteString(" , ") // spaced: the Fake checks "goto <chain>" word by word
		}
		fmt.Fprintf(&b, "%d : goto %s", i, pn.endpointChain(e))
	}
	b.WriteString(" }")
	c.rules = append(c.rules, b.String())
	return c
}

// externalChain handles the external destinations. Cluster policy:
// masquerade (the endpoint may be on another node, and its reply must come
// back here to be un-NATed), then any endpoint. Local policy: keep the
// client's address and use this node's endpoints only; pods of this node
// and the node itself are served like ClusterIP traffic instead (the node
// masqueraded: its source would be the destination address itself).
func externalChain(rc renderCtx, sp *ServicePort, pn portNames, hasLocal bool) chainObj {
	c := chainObj{name: pn.ext}
	if !sp.ExternalLocal {
		c.rules = []string{"jump " + chainMarkMasq, "goto " + pn.svc}
		return c
	}
	if rc.podShortcut {
		c.rules = append(c.rules, fmt.Sprintf("%s saddr @%s goto %s", rc.fam.IP, setPodCIDRs, pn.svc))
	}
	c.rules = append(c.rules, "fib saddr type local jump "+chainMarkMasq, "fib saddr type local goto "+pn.svc)
	if hasLocal {
		c.rules = append(c.rules, "goto "+pn.loc)
	} else {
		c.rules = append(c.rules, "drop") // as upstream: the load balancer's health check steers clear
	}
	return c
}

// endpointChain DNATs to one endpoint. A connection from the endpoint to
// itself (a pod reaching its own Service: hairpin) is masqueraded, or the
// pod would get its own packet back from itself and drop it.
func endpointChain(fam Family, sp *ServicePort, pn portNames, e Endpoint) chainObj {
	c := chainObj{name: pn.endpointChain(e)}
	c.rules = append(c.rules, fmt.Sprintf("%s saddr %s jump %s", fam.IP, e.IP, chainMarkMasq))
	if sp.AffinityTimeout > 0 {
		c.rules = append(c.rules, fmt.Sprintf("update @%s { %s saddr }", pn.affinitySet(e, sp.AffinityTimeout), fam.IP))
	}
	c.rules = append(c.rules, fmt.Sprintf("meta l4proto %s dnat to %s", sp.Name.Protocol, netip.AddrPortFrom(e.IP, e.Port)))
	return c
}

// union is a followed by the endpoints of b that a lacks.
func union(a, b []Endpoint) []Endpoint {
	out := append([]Endpoint(nil), a...)
	for _, e := range b {
		dup := false
		for _, x := range a {
			if x.IP == e.IP && x.Port == e.Port {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, e)
		}
	}
	return out
}

func union2(a, b []netip.Addr) []netip.Addr {
	return sortedUnique(append(append([]netip.Addr(nil), a...), b...))
}

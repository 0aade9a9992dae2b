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

// elemObj is a map element (see newElem), or a set element (no value).
type elemObj struct {
	mapName string // or set name
	key     []string
	value   string // "" for a set element
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
	// picks are the policy chains, which own key ranges of pick maps.
	picks []string
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
	// alloc hands out the policy chains' ranges of pick-map keys.
	alloc *pickAlloc
}

func newRenderCtx(fam Family, n Node, alloc *pickAlloc) renderCtx {
	return renderCtx{fam: fam, masqOutside: len(n.ClusterCIDRs) > 0, podShortcut: len(n.ClusterCIDRs)+len(n.PodCIDRs) > 0, alloc: alloc}
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
func render(rc renderCtx, sp *ServicePort) (*portObjects, error) {
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
		// Hairpin: a connection from the endpoint to itself is masqueraded.
		// It can only be DNATed on the endpoint's own node (any other
		// node's pods reach the Service through their own node).
		if e.Local {
			o.elems = append(o.elems, newElem(setHairpin, []string{e.IP.String(), e.IP.String()}, ""))
		}
		if sp.AffinityTimeout > 0 {
			o.chains = append(o.chains, endpointChain(rc.fam, sp, pn, e))
			o.sets = append(o.sets, setObj{name: pn.affinitySet(e, sp.AffinityTimeout), timeout: sp.AffinityTimeout})
		}
	}
	for _, pc := range []struct {
		use  bool
		name string
		eps  []Endpoint
	}{{useSvc, pn.svc, cl}, {useLoc, pn.loc, lo}} {
		if !pc.use {
			continue
		}
		c, elems, err := policyChain(rc, sp, pn, pc.name, pc.eps, internal == pc.name)
		if err != nil {
			return nil, err
		}
		o.chains, o.elems = append(o.chains, c), append(o.elems, elems...)
		if len(elems) > 0 {
			o.picks = append(o.picks, pc.name)
		}
	}
	if sp.External() && len(cl) > 0 {
		o.chains = append(o.chains, externalChain(rc, sp, pn, len(lo) > 0))
	}
	return o, nil
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
	setHairpin         = "hairpin"
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

// policyChain spreads new connections equally over eps with one numgen
// draw and one lookup, whatever the number of endpoints or Services: the
// draw is one of N keys of the chain's range in a pick map (see pick.go),
// whose element is the endpoint to DNAT to. With sessionAffinity, clients
// seen before go first to their endpoint, and the draw leads to a chain
// per endpoint that records the client (an anonymous verdict map: rare
// enough for its kernel cost not to matter).
func policyChain(rc renderCtx, sp *ServicePort, pn portNames, name string, eps []Endpoint, internal bool) (chainObj, []elemObj, error) {
	c := chainObj{name: name}
	if internal && rc.masqOutside {
		c.rules = append(c.rules, fmt.Sprintf("%s daddr %s %s saddr != @%s jump %s",
			rc.fam.IP, sp.ClusterIP, rc.fam.IP, setClusterCIDRs, chainMarkMasq))
	}
	if sp.AffinityTimeout > 0 {
		var b strings.Builder
		for i, e := range eps {
			c.rules = append(c.rules, fmt.Sprintf("%s saddr @%s goto %s",
				rc.fam.IP, pn.affinitySet(e, sp.AffinityTimeout), pn.endpointChain(e)))
			if i > 0 {
				b.WriteString(" , ") // spaced: the Fake checks "goto <chain>" word by word
			}
			fmt.Fprintf(&b, "%d : goto %s", i, pn.endpointChain(e))
		}
		c.rules = append(c.rules, fmt.Sprintf("numgen random mod %d vmap { %s }", len(eps), b.String()))
		return c, nil, nil
	}
	b, err := rc.alloc.block(sp.Name.Protocol, name, len(eps))
	if err != nil {
		return chainObj{}, nil, err
	}
	m := b.m
	c.rules = append(c.rules, fmt.Sprintf("meta l4proto %s dnat %s addr . port to numgen random mod %d offset %d map @%s",
		sp.Name.Protocol, rc.fam.IP, len(eps), b.base, m))
	elems := make([]elemObj, len(eps))
	for i, e := range eps {
		elems[i] = newElem(m, []string{strconv.FormatUint(uint64(b.base)+uint64(i), 10)}, fmt.Sprintf("%s . %d", e.IP, e.Port))
	}
	return c, elems, nil
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

// endpointChain (sessionAffinity only) records the client as stuck to
// endpoint e, and DNATs to it.
func endpointChain(fam Family, sp *ServicePort, pn portNames, e Endpoint) chainObj {
	return chainObj{name: pn.endpointChain(e), rules: []string{
		fmt.Sprintf("update @%s { %s saddr }", pn.affinitySet(e, sp.AffinityTimeout), fam.IP),
		fmt.Sprintf("meta l4proto %s dnat to %s", sp.Name.Protocol, netip.AddrPortFrom(e.IP, e.Port)),
	}}
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

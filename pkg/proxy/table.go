package proxy

import (
	"fmt"

	"sigs.k8s.io/knftables"
)

// The static part of the table: the chains hooked into netfilter, the
// dispatch chains, and the sets and maps per-port objects are reached by.

const (
	chainEndpointsCheck = "endpoints-check"
	chainServices       = "services"
	chainMasquerading   = "masquerading"
	setNodePortIPs      = "nodeport-ips"
	tableComment        = "podnet: Service proxy (managed by podnetd; edits are overwritten)"
)

// baseChain is a chain attached to a netfilter hook, with its one rule.
type baseChain struct {
	name     string
	typ      knftables.BaseChainType
	hook     knftables.BaseChainHook
	priority knftables.BaseChainPriority
	rule     string
}

// baseChains, and why each sits where it does. Priorities are numbers
// because nft 1.0.6 accepts the name "dstnat" in prerouting only.
//
//   - filter-prerouting, filter-output (-110): before DNAT (-100), so the
//     map of Service ports without endpoints sees the Service's address,
//     not an endpoint's. Only new connections: an established one keeps
//     its endpoint until it ends. (reject in prerouting needs Linux 5.9.)
//   - nat-prerouting (-100): DNAT of everything that arrives (from pods
//     and from outside), before the routing decision, which then follows
//     the endpoint. nat-output (-100): the same for the node's own
//     connections.
//   - nat-postrouting (100): masquerade after routing, since it takes
//     the address of the interface the packet leaves by.
var baseChains = []baseChain{
	{"filter-prerouting", knftables.FilterType, knftables.PreroutingHook, "-110", "ct state new jump " + chainEndpointsCheck},
	{"filter-output", knftables.FilterType, knftables.OutputHook, "-110", "ct state new jump " + chainEndpointsCheck},
	{"nat-prerouting", knftables.NATType, knftables.PreroutingHook, "-100", "jump " + chainServices},
	{"nat-output", knftables.NATType, knftables.OutputHook, "-100", "jump " + chainServices},
	{"nat-postrouting", knftables.NATType, knftables.PostroutingHook, "100", "jump " + chainMasquerading},
}

// staticChains are the regular chains of the skeleton with their rules.
// A NodePort destination is a local address of the node (not loopback),
// or, with NodePortAddresses, one of the set of node IPs inside them.
func staticChains(fam Family, n Node, mark uint32) []chainObj {
	nodePort := fmt.Sprintf("fib daddr type local %s daddr != %s", fam.IP, fam.Loopback)
	if len(n.NodePortAddresses) > 0 {
		nodePort = fmt.Sprintf("%s daddr @%s", fam.IP, setNodePortIPs)
	}
	dst := fam.IP + " daddr . meta l4proto . th dport vmap @"
	port := nodePort + " meta l4proto . th dport vmap @"
	m := fmt.Sprintf("0x%08x", mark)
	return []chainObj{
		{chainEndpointsCheck, []string{dst + mapNoEndpointIPs, port + mapNoEndpointPorts}},
		{chainServices, []string{dst + mapServiceIPs, port + mapServiceNodePort}},
		// Answer at once rather than let the client time out: a TCP reset,
		// and ICMP port unreachable for the rest.
		{chainReject, []string{"meta l4proto tcp reject with tcp reset", fam.ICMPReject}},
		{chainMarkMasq, []string{"meta mark set meta mark | " + m}},
		// A hairpin connection (from an endpoint to itself, through its
		// Service) is masqueraded, or the pod would get its own packet
		// back from itself, and drop it. The mark is cleared once used: a
		// packet that passes postrouting again (encapsulated by VXLAN,
		// say) is not masqueraded twice.
		{chainMasquerading, []string{
			fmt.Sprintf("ct status dnat %s saddr . %s daddr @%s jump %s", fam.IP, fam.IP, setHairpin, chainMarkMasq),
			fmt.Sprintf("meta mark & %s == 0x%08x return", m, 0),
			"meta mark set meta mark ^ " + m,
			"masquerade fully-random",
		}},
	}
}

// staticSet is a set of the skeleton with its elements.
type staticSet struct {
	name     string
	typ      string
	interval bool
	elems    []string
}

func staticSets(fam Family, n Node) []staticSet {
	var cluster, pods, npIPs []string
	for _, p := range n.ClusterCIDRs {
		cluster = append(cluster, p.String())
	}
	podCIDRs := n.PodCIDRs
	if len(podCIDRs) == 0 {
		podCIDRs = n.ClusterCIDRs
	}
	for _, p := range podCIDRs {
		pods = append(pods, p.String())
	}
	for _, a := range n.IPs {
		for _, p := range n.NodePortAddresses {
			if p.Contains(a) && !fam.Loopback.Contains(a) {
				npIPs = append(npIPs, a.String())
				break
			}
		}
	}
	return []staticSet{
		{setClusterCIDRs, fam.AddrType, true, cluster},
		{setPodCIDRs, fam.AddrType, true, pods},
		{setNodePortIPs, fam.AddrType, false, npIPs},
	}
}

// verdictMaps: Service addresses, NodePorts, and the same for ports
// without usable endpoints: one lookup finds a port among all Services.
// (The pick maps, where policy chains find their endpoints, are in
// pick.go.)
func verdictMaps(fam Family) []*knftables.Map {
	full := fam.AddrType + " . inet_proto . inet_service : verdict"
	port := "inet_proto . inet_service : verdict"
	return []*knftables.Map{
		{Name: mapServiceIPs, Type: full, Comment: knftables.PtrTo("ClusterIPs, external IPs, load-balancer IPs")},
		{Name: mapServiceNodePort, Type: port, Comment: knftables.PtrTo("NodePorts")},
		{Name: mapNoEndpointIPs, Type: full, Comment: knftables.PtrTo("Service addresses without usable endpoints: reject or drop")},
		{Name: mapNoEndpointPorts, Type: port, Comment: knftables.PtrTo("NodePorts without usable endpoints: reject or drop")},
	}
}

// hairpinSet holds (endpoint . endpoint) for every endpoint: a DNATed
// packet whose source is its destination is hairpin traffic. The set's
// elements belong to the ports (rendered with them), not to the skeleton.
func hairpinSet(fam Family) *knftables.Set {
	return &knftables.Set{Name: setHairpin, Type: fam.AddrType + " . " + fam.AddrType,
		Comment: knftables.PtrTo("endpoint . endpoint: hairpin connections, masqueraded")}
}

// staticRuleCount is the number of rules of the skeleton.
func staticRuleCount(fam Family, n Node) int {
	c := len(baseChains)
	for _, ch := range staticChains(fam, n, 0) {
		c += len(ch.rules)
	}
	return c
}

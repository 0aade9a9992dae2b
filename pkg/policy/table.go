package policy

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/knftables"
)

// The nftables table of the policy engine. It is an inet table so that
// IPv6 can join it later; today it matches IPv4 only (the cluster is
// IPv4), and an IPv6 packet passes it untouched.
//
//	table inet podnet-policy
//	  chain forward  (filter hook forward, priority 0)
//	      ct state established,related accept
//	      jump pods
//	  chain input    (filter hook input, priority 0)
//	      ct state established,related accept
//	      ip saddr vmap @egress-pods
//	  chain pods
//	      ip saddr vmap @egress-pods     the sender is an isolated local pod
//	      ip daddr vmap @ingress-pods    the receiver is an isolated local pod
//	  map egress-pods, ingress-pods      pod IP : jump <the pod's chain>
//	  chain in-<hash>-<ns>/<pod>         one per isolated pod and direction
//	      ip saddr @in-…-any return                          any protocol, any port
//	      ip saddr . meta l4proto . th dport @in-…-ports return
//	      limit rate 10/second … log prefix "in-…" group 7   the deny log (NFLOG)
//	      counter name "in-…" drop                         every drop counted
//	  set in-<hash>-…-any    ipv4_addr, interval
//	  set in-<hash>-…-ports  ipv4_addr . inet_proto . inet_service, interval
//
// ClusterNetworkPolicy adds, to the chain of a pod some CNP selects, a
// verdict map lookup per tier (ResolveCluster cut the rules into disjoint
// pieces, each with the verdict of its first rule; Pass pieces are left
// out and fall through):
//
//	chain in-<hash>-<ns>/<pod>
//	    ip saddr . meta l4proto . th dport vmap @in-…-admin   Admin tier
//	    … the NetworkPolicy rules above, if one isolates the pod …
//	    ip saddr . meta l4proto . th dport vmap @in-…-base    Baseline (only if none does)
//	map in-<hash>-…-admin, -base   ipv4_addr . inet_proto . inet_service : verdict, interval
//	chain cnp-<hash>-<tier>-<policy>-<dir><rule>   one per denying CNP rule:
//	    limit rate … log prefix "cnp-…" group 7
//	    counter name "cnp-…" drop
//
// Accept is "return" (the pod's direction is done, the other end's chain
// still applies), Deny "goto" the rule's chain, which logs, counts and
// drops. A pod no NetworkPolicy isolates and no CNP rule decides is open.
//
// Why each piece sits where it does:
//   - forward at priority 0 (filter) runs after the Service proxy's DNAT
//     (prerouting, -100) and before its masquerade (postrouting, 100): it
//     sees the backend pod a ClusterIP or NodePort was translated to, and
//     the true client. Pod-to-pod traffic on one node's bridge passes it
//     too (br_netfilter hands bridged IP packets to the inet hooks).
//   - input catches a local pod reaching its own node (or a host-network
//     pod on it): egress applies there too.
//   - Nothing hooks output: the node's own traffic to its pods (kubelet's
//     probes) is always allowed, as the API says.
//   - established and related packets are accepted first: replies of an
//     allowed connection, and ICMP errors about it ("fragmentation
//     needed" included, so path-MTU discovery keeps working).
//   - A packet costs two map lookups and at most two set lookups per
//     isolated end, whatever the number of policies and pods.
//   - Each pod chain has a named counter of its own name (the drops per
//     pod, direction and policies: podnet_policy_drops_total) and logs its
//     drops, rate-limited, to NFLOG with its name as the prefix.
//   - Forbidden packets are dropped, not rejected: the client times out,
//     as the network-policy-api conformance suite expects.

// TableName is the policy engine's table (family inet).
const TableName = "podnet-policy"

const (
	chainForward  = "forward"
	chainInput    = "input"
	chainPods     = "pods"
	mapEgressPods = "egress-pods"
	mapIngressPod = "ingress-pods"
	tableComment  = "podnet: NetworkPolicy (managed by podnetd; edits are overwritten)"

	ingressPrefix = "in-"
	egressPrefix  = "out-"
	denyPrefix    = "cnp-"
	maxNameLen    = 96
)

// The set types of a pod chain's allow sets.
const (
	anySetType   = "ipv4_addr"
	portsSetType = "ipv4_addr . inet_proto . inet_service"
	tierMapType  = "ipv4_addr . inet_proto . inet_service : verdict"
)

// baseChains are the chains hooked into netfilter, with their rules.
var baseChains = []struct {
	name string
	hook knftables.BaseChainHook
	rule string
}{
	{chainForward, knftables.ForwardHook, "jump " + chainPods},
	{chainInput, knftables.InputHook, "ip saddr vmap @" + mapEgressPods},
}

// staticChains are the regular chains of the skeleton.
var staticChains = map[string][]string{
	chainPods: {"ip saddr vmap @" + mapEgressPods, "ip daddr vmap @" + mapIngressPod},
}

// podChain is one isolated pod's chain in one direction, as rendered: its
// name, its rules, and the elements of its two sets. fingerprint is all of
// it, so that two renderings are equal exactly when nothing changed.
//
// A CNP rule's deny chain is a podChain too, with deny set and no pod.
type podChain struct {
	pod         types.NamespacedName
	dir         Direction
	name        string
	by          []string   // the policies that isolate the pod, for the comment
	pp          *PodPolicy // what the chain decides (for conntrack cuts)
	ips         []netip.Addr
	rules       []string
	any         [][]string    // element keys of the -any set
	ports       [][]string    // element keys of the -ports set
	tiers       [2][][]string // elements (key and verdict) of the -admin and -base maps
	deny        *RuleRef      // for a deny chain: its rule
	fingerprint string
}

func (c *podChain) anySet() string   { return c.name + "-any" }
func (c *podChain) portsSet() string { return c.name + "-ports" }
func (c *podChain) tierMap(t Tier) string {
	return c.name + [...]string{"-admin", "-base"}[t]
}

// objects are the sets and maps that go with a chain of this name.
func objects(chain string) (sets, maps []string) {
	if isDenyChain(chain) {
		return nil, nil
	}
	c := &podChain{name: chain}
	return []string{c.anySet(), c.portsSet()}, []string{c.tierMap(Admin), c.tierMap(Baseline)}
}

// denyChainName names the deny chain of a CNP rule.
func denyChainName(r *RuleRef) string {
	id := fmt.Sprintf("%s/%s/%s/%d", r.Tier, r.Policy, r.Direction, r.Index)
	sum := sha256.Sum256([]byte(id))
	h := strings.ToLower(base32.StdEncoding.EncodeToString(sum[:])[:8])
	name := fmt.Sprintf("%s%s-%s-%s-%s%d", denyPrefix, h, r.Tier, r.Policy, [...]string{"in", "out"}[r.Direction], r.Index)
	if len(name) > maxNameLen {
		name = name[:maxNameLen]
	}
	return name
}

func renderDeny(r *RuleRef) *podChain {
	c := &podChain{name: denyChainName(r), deny: r, dir: r.Direction}
	c.rules = []string{
		fmt.Sprintf("%s log prefix %q group %d", logRate, c.name, LogGroup),
		fmt.Sprintf("counter name %q drop", c.name),
	}
	c.fingerprint = fmt.Sprint(c.name, c.rules)
	return c
}

// chainName names pod's chain for d: the prefix, a hash of the identity
// (so truncated names stay unique) and as much of namespace/name as fits.
func chainName(d Direction, pod types.NamespacedName) string {
	prefix := ingressPrefix
	if d == Egress {
		prefix = egressPrefix
	}
	id := pod.Namespace + "/" + pod.Name
	sum := sha256.Sum256([]byte(d.String() + "/" + id))
	h := strings.ToLower(base32.StdEncoding.EncodeToString(sum[:])[:8])
	name := prefix + h + "-" + id
	// leave room for the "-ports" suffix of the sets
	if len(name) > maxNameLen-len("-ports") {
		name = name[:maxNameLen-len("-ports")]
	}
	return name
}

// ChainName is the name of pod's chain for d (and the prefix of its deny
// log lines and the name of its drop counter).
func ChainName(d Direction, pod types.NamespacedName) string { return chainName(d, pod) }

// renderPod renders pp's chains, for the directions a NetworkPolicy
// isolates it in or a ClusterNetworkPolicy rule decides some of its
// traffic, and adds to denies the deny chains its verdicts go to. Only
// IPv4 addresses are rendered (the table matches IPv4 only).
func renderPod(pp *PodPolicy, denies map[string]*podChain) []*podChain {
	var out []*podChain
	for d := range pp.Isolated {
		dir := Direction(d)
		var tiers [2][][]string
		for t, vs := range [2][]Verdict{pp.Admin[d], pp.Baseline[d]} {
			if Tier(t) == Baseline && pp.Isolated[d] {
				break // NetworkPolicy decides for the pods it isolates
			}
			for _, v := range vs {
				if !v.Addrs.First.Is4() {
					continue
				}
				verdict := "return"
				if !v.Accept() {
					dc := renderDeny(v.Rule)
					denies[dc.name] = dc
					verdict = "goto " + dc.name
				}
				tiers[t] = append(tiers[t], []string{v.Addrs.String(), protoString(v.Protos), portString(v.Ports), verdict})
			}
		}
		if !pp.Isolated[d] && len(tiers[Admin]) == 0 && len(tiers[Baseline]) == 0 {
			continue
		}
		c := &podChain{pod: pp.Pod, dir: dir, name: chainName(dir, pp.Pod), by: pp.By[d], pp: pp, ips: pp.IPs, tiers: tiers}
		peer := "ip saddr"
		if dir == Egress {
			peer = "ip daddr"
		}
		if len(tiers[Admin]) > 0 {
			c.rules = append(c.rules, fmt.Sprintf("%s . meta l4proto . th dport vmap @%s", peer, c.tierMap(Admin)))
		}
		if pp.Isolated[d] {
			c.rules = append(c.rules,
				fmt.Sprintf("%s @%s return", peer, c.anySet()),
				fmt.Sprintf("%s . meta l4proto . th dport @%s return", peer, c.portsSet()),
				fmt.Sprintf("%s log prefix %q group %d", logRate, c.name, LogGroup),
				fmt.Sprintf("counter name %q drop", c.name))
		} else if len(tiers[Baseline]) > 0 {
			c.rules = append(c.rules, fmt.Sprintf("%s . meta l4proto . th dport vmap @%s", peer, c.tierMap(Baseline)))
		}
		for _, s := range pp.Allow[d].Any {
			if s.First.Is4() {
				c.any = append(c.any, []string{s.String()})
			}
		}
		for _, e := range pp.Allow[d].Ports {
			if e.Addrs.First.Is4() {
				c.ports = append(c.ports, []string{e.Addrs.String(), e.Proto.String(), portString(e.Ports)})
			}
		}
		c.fingerprint = fmt.Sprint(c.name, c.by, c.rules, c.any, c.ports, c.tiers)
		out = append(out, c)
	}
	return out
}

func protoString(p ProtoSpan) string {
	if p.First == p.Last {
		return fmt.Sprint(p.First)
	}
	return fmt.Sprintf("%d-%d", p.First, p.Last)
}

func portString(p PortSpan) string {
	if p.First == p.Last {
		return fmt.Sprint(p.First)
	}
	return fmt.Sprintf("%d-%d", p.First, p.Last)
}

// desired is the whole table's content: the pod chains by name, and the
// two dispatch maps (pod IP -> chain name).
type desired struct {
	chains map[string]*podChain
	maps   [2]map[string]string // by Direction
}

func buildDesired(pods map[types.NamespacedName]*PodPolicy) *desired {
	d := &desired{chains: map[string]*podChain{}, maps: [2]map[string]string{{}, {}}}
	keys := make([]types.NamespacedName, 0, len(pods))
	for k := range pods {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	for _, k := range keys {
		pp := pods[k]
		for _, c := range renderPod(pp, d.chains) {
			d.chains[c.name] = c
			for _, ip := range pp.IPs {
				if !ip.Is4() {
					continue
				}
				// An address claimed by two pods (a stale Pod object
				// whose IP was reused): the first name keeps it, as
				// both are sorted.
				if _, taken := d.maps[c.dir][ip.String()]; !taken {
					d.maps[c.dir][ip.String()] = c.name
				}
			}
		}
	}
	return d
}

func mapName(d Direction) string {
	if d == Egress {
		return mapEgressPods
	}
	return mapIngressPod
}

// writeSkeleton adds the table, base chains, static chains and maps, with
// their rules rewritten (flush, add): the parts every full sync owns.
func writeSkeleton(tx *knftables.Transaction) {
	tx.Add(&knftables.Table{Comment: knftables.PtrTo(tableComment)})
	for _, m := range []string{mapEgressPods, mapIngressPod} {
		tx.Add(&knftables.Map{Name: m, Type: "ipv4_addr : verdict",
			Comment: knftables.PtrTo("isolated local pods, " + strings.TrimSuffix(m, "-pods") + ": pod IP to its chain")})
	}
	for _, name := range []string{chainPods} {
		tx.Add(&knftables.Chain{Name: name})
		tx.Flush(&knftables.Chain{Name: name})
		for _, r := range staticChains[name] {
			tx.Add(&knftables.Rule{Chain: name, Rule: r})
		}
	}
	for _, b := range baseChains {
		tx.Add(&knftables.Chain{Name: b.name, Type: knftables.PtrTo(knftables.FilterType), Hook: knftables.PtrTo(b.hook),
			Priority: knftables.PtrTo(knftables.FilterPriority)})
		tx.Flush(&knftables.Chain{Name: b.name})
		tx.Add(&knftables.Rule{Chain: b.name, Rule: "ct state established,related accept"})
		tx.Add(&knftables.Rule{Chain: b.name, Rule: b.rule})
	}
}

// writePodChain (re)writes c: the chain and its sets and maps, flushed
// and filled. Deny chains must come before the maps that go to them in a
// transaction (sortedChains puts "cnp-" first).
func writePodChain(tx *knftables.Transaction, c *podChain) {
	if c.deny != nil {
		comment := c.deny.String()
		if len(comment) > 128 {
			comment = comment[:128]
		}
		tx.Add(&knftables.Counter{Name: c.name, Comment: knftables.PtrTo(comment)})
		tx.Add(&knftables.Chain{Name: c.name, Comment: knftables.PtrTo(comment)})
		tx.Flush(&knftables.Chain{Name: c.name})
		for _, r := range c.rules {
			tx.Add(&knftables.Rule{Chain: c.name, Rule: r})
		}
		return
	}
	comment := fmt.Sprintf("%s %s of %s", c.dir, "policy", c.pod)
	if len(c.by) > 0 {
		comment += ", isolated by " + strings.Join(c.by, ",")
	}
	if len(comment) > 128 {
		comment = comment[:128]
	}
	for t, els := range c.tiers {
		m := c.tierMap(Tier(t))
		tx.Add(&knftables.Map{Name: m, Type: tierMapType, Flags: []knftables.SetFlag{knftables.IntervalFlag}})
		tx.Flush(&knftables.Map{Name: m})
		for _, e := range els {
			tx.Add(&knftables.Element{Map: m, Key: e[:3], Value: e[3:]})
		}
	}
	tx.Add(&knftables.Set{Name: c.anySet(), Type: anySetType, Flags: []knftables.SetFlag{knftables.IntervalFlag}})
	tx.Add(&knftables.Set{Name: c.portsSet(), Type: portsSetType, Flags: []knftables.SetFlag{knftables.IntervalFlag}})
	tx.Flush(&knftables.Set{Name: c.anySet()})
	tx.Flush(&knftables.Set{Name: c.portsSet()})
	for _, k := range c.any {
		tx.Add(&knftables.Element{Set: c.anySet(), Key: k})
	}
	for _, k := range c.ports {
		tx.Add(&knftables.Element{Set: c.portsSet(), Key: k})
	}
	tx.Add(&knftables.Counter{Name: c.name, Comment: knftables.PtrTo(comment)})
	tx.Add(&knftables.Chain{Name: c.name, Comment: knftables.PtrTo(comment)})
	tx.Flush(&knftables.Chain{Name: c.name})
	for _, r := range c.rules {
		tx.Add(&knftables.Rule{Chain: c.name, Rule: r})
	}
}

// isPodObject says whether a chain, set, map or counter name is one of a
// pod chain's or a deny chain's.
func isPodObject(name string) bool {
	return strings.HasPrefix(name, ingressPrefix) || strings.HasPrefix(name, egressPrefix) || isDenyChain(name)
}

func isDenyChain(name string) bool { return strings.HasPrefix(name, denyPrefix) }

// podChainOf is the chain a pod set or map belongs to.
func podChainOf(set string) string {
	for _, suffix := range []string{"-any", "-ports", "-admin", "-base"} {
		if s, ok := strings.CutSuffix(set, suffix); ok {
			return s
		}
	}
	return set
}

package policy

// ClusterNetworkPolicy (sigs.k8s.io/network-policy-api, policy.networking.k8s.io
// v1beta1). Two tiers around NetworkPolicy: Admin before it, Baseline
// after it, each an ordered list of rules (policy priority, then name for
// equal priorities, then the order of the rules in the policy) whose first
// match decides: Accept, Deny, or Pass (leave this tier). For every local
// pod and direction the rules that apply are cut here, in Go, into
// disjoint (address, protocol, port) pieces, each carrying the verdict of
// the first rule that covers it; Pass pieces are left out, so that they
// fall through to the next tier. The table turns each tier into one
// verdict map lookup per packet.

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Tier is a ClusterNetworkPolicy tier.
type Tier int

const (
	Admin    Tier = iota // before NetworkPolicy
	Baseline             // after NetworkPolicy, for pods it does not isolate
)

func (t Tier) String() string { return [...]string{"admin", "baseline"}[t] }

// ProtoSpan is an inclusive range of IP protocol numbers: one protocol, or
// all of them (0-255) for a rule without protocols.
type ProtoSpan struct{ First, Last uint8 }

// AllProtos is every protocol.
var AllProtos = ProtoSpan{0, 255}

// RuleRef names one ClusterNetworkPolicy rule.
type RuleRef struct {
	Tier      Tier
	Policy    string
	Direction Direction
	Index     int    // in the policy's ingress or egress list
	Name      string // the rule's name, if it has one
	Action    cnpv1.ClusterNetworkPolicyRuleAction
}

func (r RuleRef) String() string {
	s := fmt.Sprintf("%s clusternetworkpolicy %s %s rule %d", r.Tier, r.Policy, r.Direction, r.Index)
	if r.Name != "" {
		s += " (" + r.Name + ")"
	}
	return s
}

// Verdict is one disjoint piece of a tier's decision for one pod and
// direction: the other end's addresses, the protocols, the destination
// ports, and the rule that decides (Accept or Deny; Pass pieces are not
// kept).
type Verdict struct {
	Addrs  Span
	Protos ProtoSpan
	Ports  PortSpan
	Rule   *RuleRef
}

// Accept says whether the piece is accepted (else denied).
func (v Verdict) Accept() bool { return v.Rule.Action == cnpv1.ClusterNetworkPolicyRuleActionAccept }

func (v Verdict) covers(other netip.Addr, proto uint8, port uint16) bool {
	return v.Addrs.First.Is4() == other.Is4() && !other.Less(v.Addrs.First) && !v.Addrs.Last.Less(other) &&
		proto >= v.Protos.First && proto <= v.Protos.Last && port >= v.Ports.First && port <= v.Ports.Last
}

// lookup is the verdict covering a point, if any.
func lookup(vs []Verdict, other netip.Addr, proto uint8, port uint16) (Verdict, bool) {
	for _, v := range vs {
		if v.covers(other, proto, port) {
			return v, true
		}
	}
	return Verdict{}, false
}

// allowsAll says whether the three tiers together let the other end
// exchange proto/port with the pod in d, as the table decides it: Admin,
// then NetworkPolicy (final for the pods it isolates), then Baseline,
// then the default (allow). port is 0 for ICMP, whose "port" no rule with
// ports covers.
func (pp *PodPolicy) allowsAll(d Direction, other netip.Addr, proto uint8, port uint16) bool {
	if v, ok := lookup(pp.Admin[d], other, proto, port); ok {
		return v.Accept()
	}
	if pp.Isolated[d] {
		return pp.Allow[d].allows(other, proto, port)
	}
	if v, ok := lookup(pp.Baseline[d], other, proto, port); ok {
		return v.Accept()
	}
	return true
}

// ClusterProblem is a ClusterNetworkPolicy, or part of one, that could not
// be read (a bad selector or CIDR, a peer of a kind this podnet does not
// know, domainNames). It fails closed, as the API asks: such a peer
// matches nothing in an Accept rule, and turns a Deny or Pass rule into
// one that denies everything.
type ClusterProblem struct {
	Policy string
	Err    error
}

func (p ClusterProblem) Error() string {
	return fmt.Sprintf("clusternetworkpolicy %s: %v", p.Policy, p.Err)
}

// box is one (addresses × protocols × ports) region a rule matches.
type box struct {
	addrs  Span
	protos ProtoSpan
	ports  PortSpan
}

// orderedRule is one rule with its place in its tier: rules earlier in the
// slice win.
type orderedRule struct {
	ref   *RuleRef
	boxes []box
}

// ResolveCluster adds to out (the PodPolicies of ResolveFor, by pod) the
// Admin and Baseline verdicts of the ClusterNetworkPolicies cnps, with
// every policed pod, namespace and node as a possible peer. It returns
// the problems met; each fails closed.
func ResolveCluster(cnps []*cnpv1.ClusterNetworkPolicy, pods []*corev1.Pod, namespaces []*corev1.Namespace, nodes []*corev1.Node, out map[types.NamespacedName]*PodPolicy) []ClusterProblem {
	cr := &clusterResolver{nsLabels: map[string]labels.Set{}, nodes: nodes}
	for _, ns := range namespaces {
		cr.nsLabels[ns.Name] = ns.Labels
	}
	for _, p := range pods {
		if !Policed(p) {
			continue
		}
		if ips := podIPs(p); len(ips) > 0 {
			cr.pods = append(cr.pods, resolvedPod{pod: p, ips: ips})
		}
	}
	sorted := slices.Clone(cnps)
	slices.SortFunc(sorted, func(a, b *cnpv1.ClusterNetworkPolicy) int {
		return cmp.Or(cmp.Compare(a.Spec.Priority, b.Spec.Priority), cmp.Compare(a.Name, b.Name))
	})
	// The rules of each tier and direction for each subject pod, in order.
	rules := map[types.NamespacedName]*[2][2][]orderedRule{} // pod → tier → direction
	for _, cnp := range sorted {
		var tier Tier
		switch cnp.Spec.Tier {
		case cnpv1.AdminTier:
			tier = Admin
		case cnpv1.BaselineTier:
			tier = Baseline
		default:
			cr.problem(cnp.Name, fmt.Errorf("tier %q is neither Admin nor Baseline: the policy is ignored", cnp.Spec.Tier))
			continue
		}
		for _, sp := range cr.subjects(cnp) {
			k := types.NamespacedName{Namespace: sp.pod.Namespace, Name: sp.pod.Name}
			if out[k] == nil {
				continue // not a local pod
			}
			r := rules[k]
			if r == nil {
				r = &[2][2][]orderedRule{}
				rules[k] = r
			}
			for i, ir := range cnp.Spec.Ingress {
				ref := &RuleRef{Tier: tier, Policy: cnp.Name, Direction: Ingress, Index: i, Name: ir.Name, Action: ir.Action}
				var peers []peerOf
				for _, p := range ir.From {
					peers = append(peers, peerOf{namespaces: p.Namespaces, pods: p.Pods, set: p.Namespaces != nil || p.Pods != nil})
				}
				r[tier][Ingress] = append(r[tier][Ingress], cr.rule(ref, sp, peers, ir.Protocols))
			}
			for i, er := range cnp.Spec.Egress {
				ref := &RuleRef{Tier: tier, Policy: cnp.Name, Direction: Egress, Index: i, Name: er.Name, Action: er.Action}
				var peers []peerOf
				for _, p := range er.To {
					peers = append(peers, peerOf{namespaces: p.Namespaces, pods: p.Pods, nodes: p.Nodes, networks: p.Networks,
						domains: len(p.DomainNames) > 0,
						set:     p.Namespaces != nil || p.Pods != nil || p.Nodes != nil || len(p.Networks) > 0 || len(p.DomainNames) > 0})
				}
				r[tier][Egress] = append(r[tier][Egress], cr.rule(ref, sp, peers, er.Protocols))
			}
		}
	}
	for k, r := range rules {
		pp := out[k]
		for d := range 2 {
			pp.Admin[d] = firstMatch(r[Admin][d])
			pp.Baseline[d] = firstMatch(r[Baseline][d])
		}
	}
	return cr.problems
}

type clusterResolver struct {
	nsLabels map[string]labels.Set
	pods     []resolvedPod
	nodes    []*corev1.Node
	problems []ClusterProblem
	reported map[string]bool
}

func (cr *clusterResolver) problem(policy string, err error) {
	// The same part of a policy is met once per subject pod: tell it once.
	key := policy + "\x00" + err.Error()
	if cr.reported == nil {
		cr.reported = map[string]bool{}
	}
	if !cr.reported[key] {
		cr.reported[key] = true
		cr.problems = append(cr.problems, ClusterProblem{policy, err})
	}
}

// subjects are the policed pods cnp applies to.
func (cr *clusterResolver) subjects(cnp *cnpv1.ClusterNetworkPolicy) []resolvedPod {
	s := cnp.Spec.Subject
	var nsSel, podSel labels.Selector
	var err error
	switch {
	case s.Namespaces != nil && s.Pods == nil:
		nsSel, err = metav1.LabelSelectorAsSelector(s.Namespaces)
		podSel = labels.Everything()
	case s.Pods != nil && s.Namespaces == nil:
		if nsSel, err = metav1.LabelSelectorAsSelector(&s.Pods.NamespaceSelector); err == nil {
			podSel, err = metav1.LabelSelectorAsSelector(&s.Pods.PodSelector)
		}
	default:
		err = fmt.Errorf("subject must set exactly one of namespaces and pods")
	}
	if err != nil {
		cr.problem(cnp.Name, fmt.Errorf("subject: %w: the policy applies to no pod", err))
		return nil
	}
	var out []resolvedPod
	for _, p := range cr.pods {
		if nsSel.Matches(cr.nsLabels[p.pod.Namespace]) && podSel.Matches(labels.Set(p.pod.Labels)) {
			out = append(out, p)
		}
	}
	return out
}

// peerOf is an ingress or egress peer; set says whether any field of a
// kind known here is set.
type peerOf struct {
	namespaces *metav1.LabelSelector
	pods       *cnpv1.NamespacedPod
	nodes      *metav1.LabelSelector
	networks   []cnpv1.CIDR
	domains    bool
	set        bool
}

// rule resolves one rule for the subject pod sp into boxes.
func (cr *clusterResolver) rule(ref *RuleRef, sp resolvedPod, peers []peerOf, protocols []cnpv1.ClusterNetworkPolicyProtocol) orderedRule {
	var spans []Span
	var peerPods []resolvedPod
	failed := false
	fail := func(err error) {
		failed = true
		cr.problem(ref.Policy, fmt.Errorf("%s %d: %w", ref.Direction, ref.Index, err))
	}
	for _, p := range peers {
		switch {
		case !p.set:
			fail(fmt.Errorf("a peer with no field podnet knows (a newer CRD?)"))
		case p.domains:
			fail(fmt.Errorf("domainNames peers are not supported by podnet"))
		case p.namespaces != nil:
			sel, err := metav1.LabelSelectorAsSelector(p.namespaces)
			if err != nil {
				fail(fmt.Errorf("namespaces peer: %w", err))
				continue
			}
			for _, pod := range cr.pods {
				if sel.Matches(cr.nsLabels[pod.pod.Namespace]) {
					peerPods = append(peerPods, pod)
				}
			}
		case p.pods != nil:
			nsSel, err := metav1.LabelSelectorAsSelector(&p.pods.NamespaceSelector)
			if err != nil {
				fail(fmt.Errorf("pods peer namespaceSelector: %w", err))
				continue
			}
			podSel, err := metav1.LabelSelectorAsSelector(&p.pods.PodSelector)
			if err != nil {
				fail(fmt.Errorf("pods peer podSelector: %w", err))
				continue
			}
			for _, pod := range cr.pods {
				if nsSel.Matches(cr.nsLabels[pod.pod.Namespace]) && podSel.Matches(labels.Set(pod.pod.Labels)) {
					peerPods = append(peerPods, pod)
				}
			}
		case p.nodes != nil:
			sel, err := metav1.LabelSelectorAsSelector(p.nodes)
			if err != nil {
				fail(fmt.Errorf("nodes peer: %w", err))
				continue
			}
			for _, n := range cr.nodes {
				if !sel.Matches(labels.Set(n.Labels)) {
					continue
				}
				for _, a := range n.Status.Addresses {
					if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
						continue
					}
					if ip, err := netip.ParseAddr(a.Address); err == nil {
						spans = append(spans, Span{ip.Unmap(), ip.Unmap()})
					}
				}
			}
		default: // networks
			for _, c := range p.networks {
				pfx, err := netip.ParsePrefix(string(c))
				if err != nil {
					fail(fmt.Errorf("networks %q: %w", c, err))
					continue
				}
				spans = append(spans, spanOf(pfx))
			}
		}
	}
	if failed && ref.Action != cnpv1.ClusterNetworkPolicyRuleActionAccept {
		// Fail closed: a Deny or Pass rule that cannot be read denies all.
		deny := *ref
		deny.Action = cnpv1.ClusterNetworkPolicyRuleActionDeny
		var boxes []box
		for _, s := range everything {
			boxes = append(boxes, box{s, AllProtos, AllPorts})
		}
		return orderedRule{&deny, boxes}
	}
	for _, p := range peerPods {
		for _, ip := range p.ips {
			spans = append(spans, Span{ip, ip})
		}
	}
	spans = mergeSpans(spans)
	if len(protocols) == 0 {
		var boxes []box
		for _, s := range spans {
			boxes = append(boxes, box{s, AllProtos, AllPorts})
		}
		return orderedRule{ref, boxes}
	}
	var boxes []box
	for _, pr := range protocols {
		var proto Proto
		var port *cnpv1.Port
		switch {
		case pr.TCP != nil:
			proto, port = TCP, pr.TCP.DestinationPort
		case pr.UDP != nil:
			proto, port = UDP, pr.UDP.DestinationPort
		case pr.SCTP != nil:
			proto, port = SCTP, pr.SCTP.DestinationPort
		case pr.DestinationNamedPort != "":
			// The number the destination pod gives the name: for ingress
			// the subject itself, for egress each peer pod (nodes and
			// networks have no named ports).
			if ref.Direction == Ingress {
				if proto, n, ok := namedPortAnyProto(sp.pod, pr.DestinationNamedPort); ok {
					for _, s := range spans {
						boxes = append(boxes, box{s, ProtoSpan{uint8(proto), uint8(proto)}, PortSpan{n, n}})
					}
				}
				continue
			}
			for _, dst := range peerPods {
				if proto, n, ok := namedPortAnyProto(dst.pod, pr.DestinationNamedPort); ok {
					for _, ip := range dst.ips {
						boxes = append(boxes, box{Span{ip, ip}, ProtoSpan{uint8(proto), uint8(proto)}, PortSpan{n, n}})
					}
				}
			}
			continue
		default:
			cr.problem(ref.Policy, fmt.Errorf("%s %d: a protocol entry with no field podnet knows: it matches nothing", ref.Direction, ref.Index))
			continue
		}
		ports := AllPorts
		if port != nil {
			switch {
			case port.Range != nil:
				ports = PortSpan{uint16(port.Range.Start), uint16(port.Range.End)}
			default:
				ports = PortSpan{uint16(port.Number), uint16(port.Number)}
			}
		}
		for _, s := range spans {
			boxes = append(boxes, box{s, ProtoSpan{uint8(proto), uint8(proto)}, ports})
		}
	}
	return orderedRule{ref, boxes}
}

// namedPortAnyProto finds a container port by name, whatever its protocol.
func namedPortAnyProto(pod *corev1.Pod, name string) (Proto, uint16, bool) {
	for _, c := range pod.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name != name || cp.ContainerPort <= 0 || cp.ContainerPort > 65535 {
				continue
			}
			switch cp.Protocol {
			case corev1.ProtocolUDP:
				return UDP, uint16(cp.ContainerPort), true
			case corev1.ProtocolSCTP:
				return SCTP, uint16(cp.ContainerPort), true
			default:
				return TCP, uint16(cp.ContainerPort), true
			}
		}
	}
	return 0, 0, false
}

// firstMatch cuts the boxes of rules (earlier rules win) into disjoint
// pieces, each with the first rule covering it, Pass pieces left out.
// The address line is cut at every box boundary; within each address
// piece the protocol line, within each of those the port line.
// Neighbouring pieces with the same content are joined again.
func firstMatch(rules []orderedRule) []Verdict {
	type ibox struct {
		box
		rule int
	}
	var all []ibox
	for i, r := range rules {
		for _, b := range r.boxes {
			all = append(all, ibox{b, i})
		}
	}
	if len(all) == 0 {
		return nil
	}
	type portPiece struct {
		ports PortSpan
		rule  int
	}
	type protoPiece struct {
		protos ProtoSpan
		ports  []portPiece
	}
	type addrPiece struct {
		addrs  Span
		protos []protoPiece
	}
	var out []Verdict
	for _, v4 := range []bool{true, false} {
		var cuts []netip.Addr
		var fam []ibox
		for _, b := range all {
			if b.addrs.First.Is4() != v4 {
				continue
			}
			fam = append(fam, b)
			cuts = append(cuts, b.addrs.First)
			if n := b.addrs.Last.Next(); n.IsValid() {
				cuts = append(cuts, n)
			}
		}
		slices.SortFunc(cuts, netip.Addr.Compare)
		cuts = slices.Compact(cuts)
		var pieces []addrPiece
		for i, first := range cuts {
			last := lastOfFamily(v4)
			if i+1 < len(cuts) {
				last = cuts[i+1].Prev()
			}
			var in []ibox
			for _, b := range fam {
				if !first.Less(b.addrs.First) && !b.addrs.Last.Less(first) {
					in = append(in, b)
				}
			}
			if len(in) == 0 {
				continue
			}
			// protocols
			var pcuts []int
			for _, b := range in {
				pcuts = append(pcuts, int(b.protos.First), int(b.protos.Last)+1)
			}
			slices.Sort(pcuts)
			pcuts = slices.Compact(pcuts)
			var protos []protoPiece
			for j := 0; j+1 < len(pcuts); j++ {
				pf, pl := pcuts[j], pcuts[j+1]-1
				var inP []ibox
				for _, b := range in {
					if int(b.protos.First) <= pf && pf <= int(b.protos.Last) {
						inP = append(inP, b)
					}
				}
				if len(inP) == 0 {
					continue
				}
				var qcuts []int
				for _, b := range inP {
					qcuts = append(qcuts, int(b.ports.First), int(b.ports.Last)+1)
				}
				slices.Sort(qcuts)
				qcuts = slices.Compact(qcuts)
				var ports []portPiece
				for k := 0; k+1 < len(qcuts); k++ {
					qf, ql := qcuts[k], qcuts[k+1]-1
					best := -1
					for _, b := range inP {
						if int(b.ports.First) <= qf && qf <= int(b.ports.Last) && (best < 0 || b.rule < best) {
							best = b.rule
						}
					}
					if best < 0 {
						continue
					}
					if n := len(ports); n > 0 && ports[n-1].rule == best && int(ports[n-1].ports.Last)+1 == qf {
						ports[n-1].ports.Last = uint16(ql)
						continue
					}
					ports = append(ports, portPiece{PortSpan{uint16(qf), uint16(ql)}, best})
				}
				if n := len(protos); n > 0 && int(protos[n-1].protos.Last)+1 == pf && slices.Equal(protos[n-1].ports, ports) {
					protos[n-1].protos.Last = uint8(pl)
					continue
				}
				protos = append(protos, protoPiece{ProtoSpan{uint8(pf), uint8(pl)}, ports})
			}
			if n := len(pieces); n > 0 && pieces[n-1].addrs.Last.Next() == first &&
				slices.EqualFunc(pieces[n-1].protos, protos, func(a, b protoPiece) bool {
					return a.protos == b.protos && slices.Equal(a.ports, b.ports)
				}) {
				pieces[n-1].addrs.Last = last
				continue
			}
			pieces = append(pieces, addrPiece{Span{first, last}, protos})
		}
		for _, a := range pieces {
			for _, p := range a.protos {
				for _, q := range p.ports {
					if r := rules[q.rule].ref; r.Action != cnpv1.ClusterNetworkPolicyRuleActionPass {
						out = append(out, Verdict{Addrs: a.addrs, Protos: p.protos, Ports: q.ports, Rule: r})
					}
				}
			}
		}
	}
	return out
}

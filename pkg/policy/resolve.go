// Package policy is podnet's NetworkPolicy engine. This file is its model:
// from the API objects (NetworkPolicies, Pods, Namespaces) it computes, for
// every pod, whether it is isolated in each direction and exactly which
// (address, protocol, port) points it may exchange traffic with, as
// disjoint elements ready for nftables interval sets. Everything the API
// defines is resolved here, in Go, so that a packet's cost in the kernel is
// a set lookup whatever the number of policies and pods: podSelector and
// namespaceSelector (alone and together), ipBlock with except, ports by
// number, by name (resolved per destination pod) and endPort ranges, TCP,
// UDP and SCTP, the policyTypes defaults, and the union of all policies
// that select a pod.
package policy

import (
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Direction is a policy direction, as seen from the selected pod.
type Direction int

const (
	Ingress Direction = iota // to the pod: the other end is the source
	Egress                   // from the pod: the other end is the destination
)

func (d Direction) String() string { return [...]string{"ingress", "egress"}[d] }

// Allowed is what one pod may exchange in one direction when it is
// isolated: Any lists the other ends with which every protocol and port
// is allowed (rules without ports), Ports the (addresses, protocol, port)
// elements. Both are disjoint and sorted.
type Allowed struct {
	Any   []Span
	Ports []Element
}

// PodPolicy is the outcome for one pod.
type PodPolicy struct {
	Pod types.NamespacedName
	IPs []netip.Addr
	// Isolated says whether some policy selects the pod for the direction;
	// a pod not isolated in a direction is open in it.
	Isolated [2]bool
	// By names the policies (namespace/name) that isolate it, sorted.
	By [2][]string
	// Allow is what the policies allow together; only meaningful when
	// Isolated.
	Allow [2]Allowed
	// Admin and Baseline are the ClusterNetworkPolicy verdicts by
	// direction (ResolveCluster): disjoint pieces, Pass left out.
	Admin, Baseline [2][]Verdict
}

// Problem is a policy, or part of one, that could not be resolved (a bad
// selector or CIDR). It allows nothing: the policy still isolates the pods
// it selects, so a mistake closes rather than opens.
type Problem struct {
	Policy types.NamespacedName
	Err    error
}

func (p Problem) Error() string { return fmt.Sprintf("networkpolicy %s: %v", p.Policy, p.Err) }

// Policed says whether a pod takes part in NetworkPolicy, as subject or
// peer: it has an address of its own (not the node's) and is not finished.
func Policed(p *corev1.Pod) bool {
	return !p.Spec.HostNetwork && p.Status.PodIP != "" &&
		p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed && p.DeletionTimestamp == nil
}

// Resolve computes every policed pod's PodPolicy.
func Resolve(policies []*networkingv1.NetworkPolicy, pods []*corev1.Pod, namespaces []*corev1.Namespace) (map[types.NamespacedName]*PodPolicy, []Problem) {
	return ResolveFor(policies, pods, namespaces, nil)
}

// ResolveFor computes the PodPolicy of the policed pods that subject
// accepts (nil: all), such as the pods of one node; every pod still counts
// as a peer.
func ResolveFor(policies []*networkingv1.NetworkPolicy, pods []*corev1.Pod, namespaces []*corev1.Namespace, subject func(*corev1.Pod) bool) (map[types.NamespacedName]*PodPolicy, []Problem) {
	r := &resolver{nsLabels: map[string]labels.Set{}}
	for _, ns := range namespaces {
		r.nsLabels[ns.Name] = ns.Labels
	}
	out := map[types.NamespacedName]*PodPolicy{}
	for _, p := range pods {
		if !Policed(p) {
			continue
		}
		ips := podIPs(p)
		if len(ips) == 0 {
			continue
		}
		r.pods = append(r.pods, resolvedPod{pod: p, ips: ips})
		if subject != nil && !subject(p) {
			continue
		}
		k := types.NamespacedName{Namespace: p.Namespace, Name: p.Name}
		out[k] = &PodPolicy{Pod: k, IPs: ips}
	}
	type acc struct {
		any   []Span
		ports []Element
	}
	accs := map[types.NamespacedName]*[2]acc{}
	for _, np := range policies {
		name := types.NamespacedName{Namespace: np.Namespace, Name: np.Name}
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil {
			r.problems = append(r.problems, Problem{name, fmt.Errorf("podSelector: %w", err)})
			continue // selects no pod we can name: isolates none
		}
		ingress, egress := policyTypes(np)
		for _, sp := range r.pods {
			if sp.pod.Namespace != np.Namespace || !sel.Matches(labels.Set(sp.pod.Labels)) {
				continue
			}
			k := types.NamespacedName{Namespace: sp.pod.Namespace, Name: sp.pod.Name}
			pp := out[k]
			if pp == nil {
				continue // not a subject
			}
			a := accs[k]
			if a == nil {
				a = &[2]acc{}
				accs[k] = a
			}
			for i, on := range [2]bool{Ingress: ingress, Egress: egress} {
				if !on {
					continue
				}
				d := Direction(i)
				pp.Isolated[d] = true
				pp.By[d] = append(pp.By[d], name.String())
				var rules []rule
				if d == Ingress {
					for _, ir := range np.Spec.Ingress {
						rules = append(rules, rule{peers: ir.From, ports: ir.Ports})
					}
				} else {
					for _, er := range np.Spec.Egress {
						rules = append(rules, rule{peers: er.To, ports: er.Ports})
					}
				}
				for _, ru := range rules {
					anyS, els := r.rule(name, sp, d, ru)
					a[d].any = append(a[d].any, anyS...)
					a[d].ports = append(a[d].ports, els...)
				}
			}
		}
	}
	for k, a := range accs {
		pp := out[k]
		for d := range a {
			slices.Sort(pp.By[d])
			pp.By[d] = slices.Compact(pp.By[d])
			pp.Allow[d] = Allowed{Any: mergeSpans(a[d].any), Ports: disjoint(a[d].ports)}
		}
	}
	return out, r.problems
}

type resolvedPod struct {
	pod *corev1.Pod
	ips []netip.Addr
}

type rule struct {
	peers []networkingv1.NetworkPolicyPeer
	ports []networkingv1.NetworkPolicyPort
}

type resolver struct {
	nsLabels map[string]labels.Set
	pods     []resolvedPod
	problems []Problem
}

// policyTypes applies the API's defaults: Ingress always, Egress when the
// policy has egress rules, unless policyTypes says.
func policyTypes(np *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(np.Spec.PolicyTypes) == 0 {
		return true, len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		}
	}
	return ingress, egress
}

// rule resolves one ingress or egress rule of the policy name for the
// selected pod sp.
func (r *resolver) rule(name types.NamespacedName, sp resolvedPod, d Direction, ru rule) (anySpans []Span, els []Element) {
	peers, peerPods, ok := r.peers(name, ru.peers)
	if !ok {
		return nil, nil
	}
	if len(ru.ports) == 0 {
		return peers, nil
	}
	for _, port := range ru.ports {
		proto := TCP
		if port.Protocol != nil {
			switch *port.Protocol {
			case corev1.ProtocolUDP:
				proto = UDP
			case corev1.ProtocolSCTP:
				proto = SCTP
			}
		}
		switch {
		case port.Port == nil:
			for _, s := range peers {
				els = append(els, Element{Addrs: s, Proto: proto, Ports: AllPorts})
			}
		case port.Port.Type == intstr.String:
			// A named port means the number the destination pod gives
			// that name: for ingress the selected pod itself, for egress
			// each destination pod among the peers.
			if d == Ingress {
				if n, ok := namedPort(sp.pod, port.Port.StrVal, proto); ok {
					for _, s := range peers {
						els = append(els, Element{Addrs: s, Proto: proto, Ports: PortSpan{n, n}})
					}
				}
				continue
			}
			for _, dst := range peerPods(peers) {
				if n, ok := namedPort(dst.pod, port.Port.StrVal, proto); ok {
					for _, ip := range dst.ips {
						els = append(els, Element{Addrs: Span{ip, ip}, Proto: proto, Ports: PortSpan{n, n}})
					}
				}
			}
		default:
			first := uint16(port.Port.IntVal)
			last := first
			if port.EndPort != nil && *port.EndPort >= port.Port.IntVal {
				last = uint16(*port.EndPort)
			}
			for _, s := range peers {
				els = append(els, Element{Addrs: s, Proto: proto, Ports: PortSpan{first, last}})
			}
		}
	}
	return nil, els
}

// peers resolves a rule's peers to address spans, and says which policed
// pods lie within given spans (for named ports in egress). No peers: every
// address.
func (r *resolver) peers(name types.NamespacedName, peers []networkingv1.NetworkPolicyPeer) ([]Span, func([]Span) []resolvedPod, bool) {
	within := func(spans []Span) []resolvedPod {
		var out []resolvedPod
		for _, p := range r.pods {
			for _, ip := range p.ips {
				if inSpans(ip, spans) {
					out = append(out, p)
					break
				}
			}
		}
		return out
	}
	if len(peers) == 0 {
		return everything, within, true
	}
	var spans []Span
	for _, peer := range peers {
		switch {
		case peer.IPBlock != nil:
			pfx, err := netip.ParsePrefix(peer.IPBlock.CIDR)
			if err != nil {
				r.problems = append(r.problems, Problem{name, fmt.Errorf("ipBlock cidr %q: %w", peer.IPBlock.CIDR, err)})
				return nil, nil, false
			}
			var cut []Span
			for _, e := range peer.IPBlock.Except {
				ep, err := netip.ParsePrefix(e)
				if err != nil {
					r.problems = append(r.problems, Problem{name, fmt.Errorf("ipBlock except %q: %w", e, err)})
					return nil, nil, false
				}
				cut = append(cut, spanOf(ep))
			}
			spans = append(spans, minus(spanOf(pfx), cut)...)
		case peer.PodSelector != nil || peer.NamespaceSelector != nil:
			podSel, nsSel := labels.Everything(), labels.Nothing()
			var err error
			if peer.PodSelector != nil {
				if podSel, err = metav1.LabelSelectorAsSelector(peer.PodSelector); err != nil {
					r.problems = append(r.problems, Problem{name, fmt.Errorf("peer podSelector: %w", err)})
					return nil, nil, false
				}
			}
			if peer.NamespaceSelector != nil {
				if nsSel, err = metav1.LabelSelectorAsSelector(peer.NamespaceSelector); err != nil {
					r.problems = append(r.problems, Problem{name, fmt.Errorf("peer namespaceSelector: %w", err)})
					return nil, nil, false
				}
			}
			for _, p := range r.pods {
				inNS := p.pod.Namespace == name.Namespace
				if peer.NamespaceSelector != nil {
					inNS = nsSel.Matches(r.nsLabels[p.pod.Namespace])
				}
				if inNS && podSel.Matches(labels.Set(p.pod.Labels)) {
					for _, ip := range p.ips {
						spans = append(spans, Span{ip, ip})
					}
				}
			}
		}
	}
	return mergeSpans(spans), within, true
}

func inSpans(ip netip.Addr, spans []Span) bool {
	for _, s := range spans {
		if s.First.Is4() == ip.Is4() && !ip.Less(s.First) && !s.Last.Less(ip) {
			return true
		}
	}
	return false
}

// namedPort is the number pod gives the container port name with proto.
func namedPort(pod *corev1.Pod, name string, proto Proto) (uint16, bool) {
	for _, c := range pod.Spec.Containers {
		for _, cp := range c.Ports {
			p := TCP
			switch cp.Protocol {
			case corev1.ProtocolUDP:
				p = UDP
			case corev1.ProtocolSCTP:
				p = SCTP
			}
			if cp.Name == name && p == proto && cp.ContainerPort > 0 && cp.ContainerPort < 65536 {
				return uint16(cp.ContainerPort), true
			}
		}
	}
	return 0, false
}

func podIPs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	add := func(s string) {
		if a, err := netip.ParseAddr(s); err == nil && !seen[a.Unmap()] {
			seen[a.Unmap()] = true
			out = append(out, a.Unmap())
		}
	}
	add(p.Status.PodIP)
	for _, ip := range p.Status.PodIPs {
		add(ip.IP)
	}
	return out
}

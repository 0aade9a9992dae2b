package policy

// A packet evaluator over knftables' Fake (the table as the Enforcer wrote
// it), compared on many random scenes with a truth model of the API's
// semantics written straight from the NetworkPolicy reference, per packet,
// sharing no code with Resolve.

import (
	"context"
	"fmt"
	"math/rand"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/knftables"
)

// packet is a new connection's first packet.
type packet struct {
	src, dst netip.Addr
	proto    uint8 // 1 icmp, 6 tcp, 17 udp, 132 sctp
	port     uint16
}

func (p packet) String() string {
	return fmt.Sprintf("%s -> %s %d/%d", p.src, p.dst, p.proto, p.port)
}

// evalFake runs p through the forward hook of the table in fake: true if
// accepted. It knows the rule forms the Enforcer writes, and fails the
// test on any other.
func evalFake(t *testing.T, fake *knftables.Fake, p packet) bool {
	t.Helper()
	tbl := fake.Table
	if tbl == nil {
		return true
	}
	// run evaluates one pod chain: "return" (allowed), "drop" or ""
	// (fell through).
	run := func(chain string) string {
		c := tbl.Chains[chain]
		if c == nil {
			t.Fatalf("no chain %s", chain)
		}
		for _, r := range c.Rules {
			rule := r.Rule
			switch {
			case strings.HasSuffix(rule, " return"):
				addr := p.src
				if strings.HasPrefix(rule, "ip daddr") {
					addr = p.dst
				}
				set := tbl.Sets[strings.TrimSuffix(rule[strings.Index(rule, "@")+1:], " return")]
				ports := strings.Contains(rule, "th dport")
				for _, e := range set.Elements {
					if !inRange(t, e.Key[0], addr.String(), netip.ParseAddr) {
						continue
					}
					if !ports {
						return "return"
					}
					if protoNum(t, e.Key[1]) == p.proto && p.proto != 1 &&
						inRange(t, e.Key[2], strconv.Itoa(int(p.port)), func(s string) (int, error) { return strconv.Atoi(s) }) {
						return "return"
					}
				}
			case strings.HasPrefix(rule, logRate+" log prefix "):
				// the deny log: no verdict
			case strings.HasPrefix(rule, "counter name ") && strings.HasSuffix(rule, " drop"):
				return "drop"
			default:
				t.Fatalf("evaluator does not know rule %q in %s", rule, chain)
			}
		}
		return ""
	}
	// walk evaluates the skeleton: a pod chain's return goes on here.
	var walk func(chain string) bool
	walk = func(chain string) bool {
		for _, r := range tbl.Chains[chain].Rules {
			rule := r.Rule
			switch {
			case strings.HasPrefix(rule, "jump "):
				if !walk(strings.TrimPrefix(rule, "jump ")) {
					return false
				}
			case strings.Contains(rule, " vmap @"):
				addr := p.src
				if strings.HasPrefix(rule, "ip daddr") {
					addr = p.dst
				}
				for _, e := range tbl.Maps[rule[strings.Index(rule, "@")+1:]].Elements {
					if e.Key[0] == addr.String() && run(strings.TrimPrefix(e.Value[0], "jump ")) == "drop" {
						return false
					}
				}
			}
		}
		return true
	}
	return walk(chainForward)
}

func inRange[T interface{ ~int | netip.Addr }](t *testing.T, key, v string, parse func(string) (T, error)) bool {
	t.Helper()
	lo, hi, ok := strings.Cut(key, "-")
	if !ok {
		hi = lo
	}
	a, err1 := parse(lo)
	b, err2 := parse(hi)
	x, err3 := parse(v)
	if err1 != nil || err2 != nil || err3 != nil {
		t.Fatalf("bad element %q or value %q", key, v)
	}
	return !less(x, a) && !less(b, x)
}

func less[T interface{ ~int | netip.Addr }](a, b T) bool {
	switch x := any(a).(type) {
	case netip.Addr:
		return x.Less(any(b).(netip.Addr))
	case int:
		return x < any(b).(int)
	}
	return false
}

func protoNum(t *testing.T, s string) uint8 {
	switch s {
	case "tcp":
		return 6
	case "udp":
		return 17
	case "sctp":
		return 132
	}
	t.Fatalf("unknown protocol %q", s)
	return 0
}

// truth is the API's semantics for one packet, from the reference: the
// packet passes when the sender (if a pod) may send it and the receiver
// (if a pod) may receive it.
func truth(p packet, pols []*networkingv1.NetworkPolicy, pods []*corev1.Pod, nss []*corev1.Namespace) bool {
	podAt := func(a netip.Addr) *corev1.Pod {
		for _, pod := range pods {
			if pod.Status.PodIP == a.String() {
				return pod
			}
		}
		return nil
	}
	nsLabels := func(name string) labels.Set {
		for _, n := range nss {
			if n.Name == name {
				return n.Labels
			}
		}
		return nil
	}
	selects := func(sel *metav1.LabelSelector, l map[string]string) bool {
		s, err := metav1.LabelSelectorAsSelector(sel)
		return err == nil && s.Matches(labels.Set(l))
	}
	peerOK := func(np *networkingv1.NetworkPolicy, peers []networkingv1.NetworkPolicyPeer, other netip.Addr) bool {
		if len(peers) == 0 {
			return true
		}
		for _, peer := range peers {
			if peer.IPBlock != nil {
				in := netip.MustParsePrefix(peer.IPBlock.CIDR).Contains(other)
				for _, e := range peer.IPBlock.Except {
					if netip.MustParsePrefix(e).Contains(other) {
						in = false
					}
				}
				if in {
					return true
				}
				continue
			}
			op := podAt(other)
			if op == nil {
				continue
			}
			nsOK := op.Namespace == np.Namespace
			if peer.NamespaceSelector != nil {
				nsOK = selects(peer.NamespaceSelector, nsLabels(op.Namespace))
			}
			if nsOK && (peer.PodSelector == nil || selects(peer.PodSelector, op.Labels)) {
				return true
			}
		}
		return false
	}
	portOK := func(ports []networkingv1.NetworkPolicyPort, dstPod *corev1.Pod) bool {
		if len(ports) == 0 {
			return true
		}
		for _, pp := range ports {
			proto := corev1.ProtocolTCP
			if pp.Protocol != nil {
				proto = *pp.Protocol
			}
			if map[corev1.Protocol]uint8{corev1.ProtocolTCP: 6, corev1.ProtocolUDP: 17, corev1.ProtocolSCTP: 132}[proto] != p.proto {
				continue
			}
			switch {
			case pp.Port == nil:
				return true
			case pp.Port.Type == intstr.Int:
				end := pp.Port.IntVal
				if pp.EndPort != nil {
					end = *pp.EndPort
				}
				if int32(p.port) >= pp.Port.IntVal && int32(p.port) <= end {
					return true
				}
			default:
				if dstPod == nil {
					continue
				}
				for _, c := range dstPod.Spec.Containers {
					for _, cp := range c.Ports {
						cpProto := cp.Protocol
						if cpProto == "" {
							cpProto = corev1.ProtocolTCP
						}
						if cp.Name == pp.Port.StrVal && cpProto == proto && cp.ContainerPort == int32(p.port) {
							return true
						}
					}
				}
			}
		}
		return false
	}
	types := func(np *networkingv1.NetworkPolicy) (in, eg bool) {
		if len(np.Spec.PolicyTypes) == 0 {
			return true, len(np.Spec.Egress) > 0
		}
		for _, ty := range np.Spec.PolicyTypes {
			in = in || ty == networkingv1.PolicyTypeIngress
			eg = eg || ty == networkingv1.PolicyTypeEgress
		}
		return in, eg
	}
	src, dst := podAt(p.src), podAt(p.dst)
	if src != nil {
		isolated, ok := false, false
		for _, np := range pols {
			if _, eg := types(np); !eg || np.Namespace != src.Namespace || !selects(&np.Spec.PodSelector, src.Labels) {
				continue
			}
			isolated = true
			for _, r := range np.Spec.Egress {
				ok = ok || (peerOK(np, r.To, p.dst) && portOK(r.Ports, dst))
			}
		}
		if isolated && !ok {
			return false
		}
	}
	if dst != nil {
		isolated, ok := false, false
		for _, np := range pols {
			if in, _ := types(np); !in || np.Namespace != dst.Namespace || !selects(&np.Spec.PodSelector, dst.Labels) {
				continue
			}
			isolated = true
			for _, r := range np.Spec.Ingress {
				ok = ok || (peerOK(np, r.From, p.src) && portOK(r.Ports, dst))
			}
		}
		if isolated && !ok {
			return false
		}
	}
	return true
}

// randomScene makes namespaces, pods and policies from r.
type randomScene struct {
	r    *rand.Rand
	nss  []*corev1.Namespace
	pods []*corev1.Pod
	pols []*networkingv1.NetworkPolicy
}

var (
	sceneApps    = []string{"web", "db", "cache"}
	sceneTiers   = []string{"front", "back"}
	sceneNS      = []string{"default", "prod", "dev"}
	scenePorts   = []uint16{53, 80, 443, 5432, 8080, 9000}
	sceneOutside = []string{"192.168.56.100", "8.8.8.8", "10.245.0.7"}
)

func (s *randomScene) pick(list []string) string { return list[s.r.Intn(len(list))] }

func (s *randomScene) selector() *metav1.LabelSelector {
	switch s.r.Intn(4) {
	case 0:
		return &metav1.LabelSelector{}
	case 1:
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{s.pick(sceneTiers)}}}}
	case 2:
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "app", Operator: metav1.LabelSelectorOpNotIn, Values: []string{s.pick(sceneApps)}}}}
	}
	return &metav1.LabelSelector{MatchLabels: map[string]string{"app": s.pick(sceneApps)}}
}

func (s *randomScene) build() {
	for _, n := range sceneNS {
		l := map[string]string{"kubernetes.io/metadata.name": n}
		if s.r.Intn(2) == 0 {
			l["team"] = "blue"
		}
		s.nss = append(s.nss, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: l}})
	}
	for i := range 8 {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: s.pick(sceneNS), Name: fmt.Sprintf("p%d", i),
			Labels: map[string]string{"app": s.pick(sceneApps), "tier": s.pick(sceneTiers)}},
			Spec:   corev1.PodSpec{Containers: []corev1.Container{{Name: "c"}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("10.244.1.%d", 10+i)}}
		for _, name := range []string{"http", "dns"} {
			if s.r.Intn(2) == 0 {
				proto := corev1.ProtocolTCP
				if name == "dns" {
					proto = corev1.ProtocolUDP
				}
				pod.Spec.Containers[0].Ports = append(pod.Spec.Containers[0].Ports,
					corev1.ContainerPort{Name: name, ContainerPort: int32(scenePorts[s.r.Intn(len(scenePorts))]), Protocol: proto})
			}
		}
		s.pods = append(s.pods, pod)
	}
	for i := range 1 + s.r.Intn(4) {
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: s.pick(sceneNS), Name: fmt.Sprintf("np%d", i)},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: *s.selector()}}
		switch s.r.Intn(4) {
		case 1:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		case 2:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
		case 3:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
		}
		for range s.r.Intn(3) {
			np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: s.peers(), Ports: s.ports()})
		}
		for range s.r.Intn(3) {
			np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: s.peers(), Ports: s.ports()})
		}
		s.pols = append(s.pols, np)
	}
}

func (s *randomScene) peers() []networkingv1.NetworkPolicyPeer {
	var out []networkingv1.NetworkPolicyPeer
	for range s.r.Intn(3) {
		var p networkingv1.NetworkPolicyPeer
		switch s.r.Intn(4) {
		case 0:
			p.PodSelector = s.selector()
		case 1:
			p.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"team": "blue"}}
		case 2:
			p.PodSelector, p.NamespaceSelector = s.selector(), s.selector()
		case 3:
			cidr := []string{"10.244.1.0/28", "10.244.0.0/16", "192.168.0.0/16", "0.0.0.0/0"}[s.r.Intn(4)]
			p.IPBlock = &networkingv1.IPBlock{CIDR: cidr}
			if s.r.Intn(2) == 0 && cidr != "10.244.1.0/28" {
				p.IPBlock.Except = []string{"10.244.1.8/29"}
			}
		}
		out = append(out, p)
	}
	return out
}

func (s *randomScene) ports() []networkingv1.NetworkPolicyPort {
	var out []networkingv1.NetworkPolicyPort
	for range s.r.Intn(3) {
		var p networkingv1.NetworkPolicyPort
		p.Protocol = ptr.To([]corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}[s.r.Intn(3)])
		if s.r.Intn(4) == 0 {
			p.Protocol = nil // TCP
		}
		switch s.r.Intn(4) {
		case 0: // every port
		case 1:
			p.Port = ptr.To(intstr.FromString([]string{"http", "dns"}[s.r.Intn(2)]))
		case 2:
			p.Port = ptr.To(intstr.FromInt32(int32(scenePorts[s.r.Intn(len(scenePorts))])))
			p.EndPort = ptr.To(p.Port.IntVal + int32(s.r.Intn(1000)))
		default:
			p.Port = ptr.To(intstr.FromInt32(int32(scenePorts[s.r.Intn(len(scenePorts))])))
		}
		out = append(out, p)
	}
	return out
}

func (s *randomScene) packet() packet {
	addr := func() netip.Addr {
		if s.r.Intn(4) == 0 {
			return netip.MustParseAddr(s.pick(sceneOutside))
		}
		return netip.MustParseAddr(s.pods[s.r.Intn(len(s.pods))].Status.PodIP)
	}
	p := packet{src: addr(), dst: addr(), proto: []uint8{1, 6, 17, 132}[s.r.Intn(4)]}
	if p.proto != 1 {
		p.port = scenePorts[s.r.Intn(len(scenePorts))] + uint16(s.r.Intn(2))
	}
	return p
}

// TestEnforcedTableAgreesWithTheAPI: on 400 random scenes, 200 packets
// each, the table the Enforcer writes (read by the evaluator) accepts
// exactly the packets the truth model allows. Every pod is local (one
// node): both ends' policies are in the one table.
func TestEnforcedTableAgreesWithTheAPI(t *testing.T) {
	var allowed, denied int
	for seed := int64(1); seed <= 400; seed++ {
		s := &randomScene{r: rand.New(rand.NewSource(seed))}
		s.build()
		pp, problems := Resolve(s.pols, s.pods, s.nss)
		if len(problems) > 0 {
			t.Fatalf("seed %d: %v", seed, problems)
		}
		fake := knftables.NewFake(knftables.InetFamily, TableName)
		if err := NewEnforcer(fake, Config{}).Sync(context.Background(), pp); err != nil {
			t.Fatalf("seed %d: sync: %v", seed, err)
		}
		for range 200 {
			p := s.packet()
			got, want := evalFake(t, fake, p), truth(p, s.pols, s.pods, s.nss)
			if got != want {
				t.Fatalf("seed %d: %s: table says %v, the API says %v\npolicies: %s", seed, p, got, want, dumpPolicies(s.pols))
			}
			if want {
				allowed++
			} else {
				denied++
			}
		}
	}
	// the scenes must exercise both outcomes, or the test proves nothing
	if allowed < 10000 || denied < 10000 {
		t.Errorf("%d allowed, %d denied: the random scenes are too one-sided", allowed, denied)
	}
	t.Logf("%d packets allowed, %d denied, all as the API says", allowed, denied)
}

func dumpPolicies(pols []*networkingv1.NetworkPolicy) string {
	var b strings.Builder
	for _, np := range pols {
		fmt.Fprintf(&b, "\n%s/%s: %+v", np.Namespace, np.Name, np.Spec)
	}
	return b.String()
}

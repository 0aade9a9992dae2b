package policy

import (
	"fmt"
	"math/rand"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The scene: namespaces default and prod; pods with labels and ports.
func scene() ([]*corev1.Pod, []*corev1.Namespace) {
	ns := func(name string, l map[string]string) *corev1.Namespace {
		if l == nil {
			l = map[string]string{}
		}
		l["kubernetes.io/metadata.name"] = name
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}
	}
	pod := func(ns, name, ip string, l map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: l},
			Spec:   corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: ports}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}}
	}
	web := corev1.ContainerPort{Name: "web", ContainerPort: 8080}
	web2 := corev1.ContainerPort{Name: "web", ContainerPort: 9000}
	dns := corev1.ContainerPort{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}
	hostNet := pod("default", "host", "192.168.56.11", map[string]string{"app": "pod-a"})
	hostNet.Spec.HostNetwork = true
	done := pod("default", "done", "10.244.1.99", map[string]string{"app": "pod-a"})
	done.Status.Phase = corev1.PodSucceeded
	return []*corev1.Pod{
			pod("default", "a", "10.244.1.2", map[string]string{"app": "pod-a"}),
			pod("default", "b", "10.244.1.3", map[string]string{"app": "pod-b"}, web),
			pod("default", "b2", "10.244.2.3", map[string]string{"app": "pod-b"}, web2),
			pod("default", "db", "10.244.2.4", map[string]string{"app": "database"}),
			pod("default", "backend", "10.244.2.5", map[string]string{"app": "backend"}),
			pod("prod", "backend", "10.244.1.6", map[string]string{"app": "backend"}, dns),
			pod("prod", "monitoring", "10.244.2.7", map[string]string{"app": "monitoring"}),
			hostNet, done,
		}, []*corev1.Namespace{
			ns("default", nil), ns("prod", map[string]string{"env": "prod"}),
		}
}

func np(ns, name string, sel map[string]string, spec networkingv1.NetworkPolicySpec) *networkingv1.NetworkPolicy {
	spec.PodSelector = metav1.LabelSelector{MatchLabels: sel}
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
}

func podPeer(l map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchLabels: l}}
}

func tcp(port int32) networkingv1.NetworkPolicyPort {
	p := corev1.ProtocolTCP
	return networkingv1.NetworkPolicyPort{Protocol: &p, Port: ptrIntstr(intstr.FromInt32(port))}
}

func ptrIntstr(v intstr.IntOrString) *intstr.IntOrString { return &v }

func resolve(t *testing.T, pols ...*networkingv1.NetworkPolicy) map[types.NamespacedName]*PodPolicy {
	t.Helper()
	pods, nss := scene()
	out, probs := Resolve(pols, pods, nss)
	if len(probs) > 0 {
		t.Fatalf("problems: %v", probs)
	}
	return out
}

func key(ns, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: ns, Name: name}
}

// describe renders an Allowed compactly: "any 10.244.1.2; tcp 10.244.1.2 8080".
func describe(a Allowed) string {
	var f []string
	for _, s := range a.Any {
		f = append(f, "any "+s.String())
	}
	for _, e := range a.Ports {
		ports := fmt.Sprint(e.Ports.First)
		if e.Ports.Last != e.Ports.First {
			ports += "-" + fmt.Sprint(e.Ports.Last)
		}
		f = append(f, e.Proto.String()+" "+e.Addrs.String()+" "+ports)
	}
	return strings.Join(f, "; ")
}

func TestNoPolicyLeavesEveryPodOpen(t *testing.T) {
	out := resolve(t)
	if len(out) != 7 {
		t.Errorf("%d policed pods, want 7 (the host-network and the finished pod take no part)", len(out))
	}
	for k, pp := range out {
		if pp.Isolated[Ingress] || pp.Isolated[Egress] {
			t.Errorf("%s isolated without any policy", k)
		}
	}
}

// Seed 001's allow-from-pod-a: pod-b takes TCP 8080 from pod-a only; its
// egress stays open, and other pods are not touched.
func TestSeedAllowFromPodA(t *testing.T) {
	out := resolve(t, np("default", "allow-from-pod-a", map[string]string{"app": "pod-b"}, networkingv1.NetworkPolicySpec{
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{podPeer(map[string]string{"app": "pod-a"})}, Ports: []networkingv1.NetworkPolicyPort{tcp(8080)}}},
	}))
	for _, name := range []string{"b", "b2"} {
		pp := out[key("default", name)]
		if !pp.Isolated[Ingress] || pp.Isolated[Egress] || !slices.Equal(pp.By[Ingress], []string{"default/allow-from-pod-a"}) {
			t.Errorf("%s: isolated %v by %v", name, pp.Isolated, pp.By)
		}
		// Not the host-network or the finished pod with the same label.
		if got := describe(pp.Allow[Ingress]); got != "tcp 10.244.1.2 8080" {
			t.Errorf("%s ingress allows %q", name, got)
		}
	}
	if pp := out[key("default", "a")]; pp.Isolated[Ingress] {
		t.Error("pod-a isolated by a policy selecting pod-b")
	}
}

// Seed 001's db-access: both directions, and an egress peer selector of
// the policy's own namespace only (monitoring lives in prod: nothing).
func TestSeedDBAccess(t *testing.T) {
	out := resolve(t, np("default", "db-access", map[string]string{"app": "database"}, networkingv1.NetworkPolicySpec{
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
		Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{podPeer(map[string]string{"app": "backend"})}, Ports: []networkingv1.NetworkPolicyPort{tcp(5432)}}},
		Egress:      []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{podPeer(map[string]string{"app": "monitoring"})}, Ports: []networkingv1.NetworkPolicyPort{tcp(9090)}}},
	}))
	pp := out[key("default", "db")]
	if got := describe(pp.Allow[Ingress]); got != "tcp 10.244.2.5 5432" {
		t.Errorf("db ingress %q, want default's backend only (prod's is another namespace)", got)
	}
	if !pp.Isolated[Egress] || describe(pp.Allow[Egress]) != "" {
		t.Errorf("db egress: isolated %v, allows %q; want isolated, nothing (no monitoring pod in default)", pp.Isolated[Egress], describe(pp.Allow[Egress]))
	}
}

func TestDefaultsAndUnion(t *testing.T) {
	denyAll := np("default", "deny-all", nil, networkingv1.NetworkPolicySpec{})
	egressRules := np("default", "egress-dns", map[string]string{"app": "pod-a"}, networkingv1.NetworkPolicySpec{
		Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{{Protocol: ptrProto(corev1.ProtocolUDP), Port: ptrIntstr(intstr.FromInt32(53))}}}},
	})
	allowA := np("default", "from-a", map[string]string{"app": "pod-a"}, networkingv1.NetworkPolicySpec{
		Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{podPeer(map[string]string{"app": "backend"})}}},
	})
	out := resolve(t, denyAll, egressRules, allowA)
	a := out[key("default", "a")]
	// deny-all: Ingress only (no egress rules, no policyTypes); egress-dns
	// has egress rules, so it isolates egress; from-a adds to deny-all.
	if !a.Isolated[Ingress] || !a.Isolated[Egress] {
		t.Fatalf("pod a isolated %v", a.Isolated)
	}
	if got := describe(a.Allow[Ingress]); got != "any 10.244.2.5" {
		t.Errorf("pod a ingress %q: want the union of deny-all (nothing) and from-a (backend, every port)", got)
	}
	if got := describe(a.Allow[Egress]); got != "udp 0.0.0.0-255.255.255.255 53; udp ::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 53" {
		t.Errorf("pod a egress %q: want UDP 53 to anywhere", got)
	}
	if b := out[key("default", "b")]; !b.Isolated[Ingress] || b.Isolated[Egress] || describe(b.Allow[Ingress]) != "" {
		t.Errorf("pod b: isolated %v, allows %q: want deny-all's isolation for ingress only", b.Isolated, describe(b.Allow[Ingress]))
	}
	if p := out[key("prod", "backend")]; p.Isolated[Ingress] {
		t.Error("a policy in default isolated a pod in prod")
	}
}

func ptrProto(p corev1.Protocol) *corev1.Protocol { return &p }

func TestNamespaceAndPodSelectors(t *testing.T) {
	prod := &metav1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}
	backend := &metav1.LabelSelector{MatchLabels: map[string]string{"app": "backend"}}
	for _, tc := range []struct {
		name string
		peer networkingv1.NetworkPolicyPeer
		want string
	}{
		{"podSelector alone: the policy's namespace", networkingv1.NetworkPolicyPeer{PodSelector: backend}, "any 10.244.2.5"},
		{"namespaceSelector alone: every pod there", networkingv1.NetworkPolicyPeer{NamespaceSelector: prod}, "any 10.244.1.6; any 10.244.2.7"},
		{"both: those pods in those namespaces", networkingv1.NetworkPolicyPeer{NamespaceSelector: prod, PodSelector: backend}, "any 10.244.1.6"},
		{"empty namespaceSelector: every namespace", networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{}, PodSelector: backend}, "any 10.244.1.6; any 10.244.2.5"},
		{"ipBlock with except", networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "10.244.1.0/24", Except: []string{"10.244.1.0/26", "10.244.1.128/25"}}}, "any 10.244.1.64-10.244.1.127"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := resolve(t, np("default", "p", map[string]string{"app": "database"}, networkingv1.NetworkPolicySpec{
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{tc.peer}}}}))
			if got := describe(out[key("default", "db")].Allow[Ingress]); got != tc.want {
				t.Errorf("allows %q, want %q", got, tc.want)
			}
		})
	}
}

// A named port resolves per destination pod: for ingress the selected pod
// itself (b: 8080, b2: 9000), for egress each destination pod.
func TestNamedPortsAndRanges(t *testing.T) {
	web := networkingv1.NetworkPolicyPort{Port: ptrIntstr(intstr.FromString("web"))}
	dns := networkingv1.NetworkPolicyPort{Protocol: ptrProto(corev1.ProtocolUDP), Port: ptrIntstr(intstr.FromString("dns"))}
	ranged := tcp(30000)
	end := int32(30100)
	ranged.EndPort = &end
	out := resolve(t,
		np("default", "web-in", map[string]string{"app": "pod-b"}, networkingv1.NetworkPolicySpec{
			Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{web}}}}),
		np("default", "out", map[string]string{"app": "pod-a"}, networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress:      []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{web, dns, ranged}}}}),
	)
	if got := describe(out[key("default", "b")].Allow[Ingress]); !strings.Contains(got, "tcp 0.0.0.0-255.255.255.255 8080") || strings.Contains(got, "9000") {
		t.Errorf("b ingress %q: want its own web port 8080 from anywhere", got)
	}
	if got := describe(out[key("default", "b2")].Allow[Ingress]); !strings.Contains(got, "tcp 0.0.0.0-255.255.255.255 9000") || strings.Contains(got, "8080") {
		t.Errorf("b2 ingress %q: want its own web port 9000", got)
	}
	got := describe(out[key("default", "a")].Allow[Egress])
	for _, want := range []string{"tcp 10.244.1.3 8080", "tcp 10.244.2.3 9000", "udp 10.244.1.6 53", "tcp 0.0.0.0-10.244.1.2 30000-30100"} {
		if !strings.Contains(got, want) {
			t.Errorf("a egress %q lacks %q", got, want)
		}
	}
}

// A policy that cannot be read closes: the pods it selects are isolated
// and it allows nothing.
func TestBadCIDRClosesAndSaysWhy(t *testing.T) {
	pods, nss := scene()
	out, probs := Resolve([]*networkingv1.NetworkPolicy{np("default", "typo", map[string]string{"app": "database"}, networkingv1.NetworkPolicySpec{
		Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.244.1.0/33"}}}}}})}, pods, nss)
	if len(probs) != 1 || !strings.Contains(probs[0].Error(), "default/typo") || !strings.Contains(probs[0].Error(), "10.244.1.0/33") {
		t.Errorf("problems %v, want one naming the policy and the CIDR", probs)
	}
	if db := out[key("default", "db")]; !db.Isolated[Ingress] || describe(db.Allow[Ingress]) != "" {
		t.Errorf("db: isolated %v, allows %q; want isolated, nothing", db.Isolated, describe(db.Allow[Ingress]))
	}
}

// disjoint must cover exactly the points its input covers, with no two
// elements overlapping (nftables refuses overlaps in an interval set).
func TestDisjointCoversTheSamePoints(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	base := netip.MustParseAddr("10.0.0.0").As4()
	addr := func(i int) netip.Addr { b := base; b[3] = byte(i); return netip.AddrFrom4(b) }
	for round := 0; round < 200; round++ {
		var in []Element
		for range 1 + rng.Intn(8) {
			a, b := rng.Intn(32), rng.Intn(32)
			p, q := uint16(rng.Intn(20)), uint16(rng.Intn(20))
			in = append(in, Element{Addrs: Span{addr(min(a, b)), addr(max(a, b))}, Proto: []Proto{TCP, UDP}[rng.Intn(2)],
				Ports: PortSpan{min(p, q), max(p, q)}})
		}
		out := disjoint(in)
		covers := func(els []Element, a netip.Addr, pr Proto, port uint16) int {
			n := 0
			for _, e := range els {
				if e.Proto == pr && !a.Less(e.Addrs.First) && !e.Addrs.Last.Less(a) && port >= e.Ports.First && port <= e.Ports.Last {
					n++
				}
			}
			return n
		}
		for i := 0; i < 33; i++ {
			for _, pr := range []Proto{TCP, UDP} {
				for port := uint16(0); port <= 20; port++ {
					want, got := covers(in, addr(i), pr, port) > 0, covers(out, addr(i), pr, port)
					if got > 1 || (got == 1) != want {
						t.Fatalf("round %d: %s %s:%d covered %d times by %v (input covers it: %v; input %v)", round, pr, addr(i), port, got, out, want, in)
					}
				}
			}
		}
	}
}

func TestSpans(t *testing.T) {
	s := spanOf(netip.MustParsePrefix("10.244.1.7/24"))
	if s.String() != "10.244.1.0-10.244.1.255" {
		t.Errorf("spanOf(10.244.1.7/24) = %s", s)
	}
	if s := spanOf(netip.MustParsePrefix("fd00::/120")); s.String() != "fd00::-fd00::ff" {
		t.Errorf("spanOf(fd00::/120) = %s", s)
	}
	got := mergeSpans([]Span{{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("10.0.0.9")},
		{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.4")}, {netip.MustParseAddr("10.0.0.20"), netip.MustParseAddr("10.0.0.20")}})
	if len(got) != 2 || got[0].String() != "10.0.0.1-10.0.0.9" || got[1].String() != "10.0.0.20" {
		t.Errorf("mergeSpans: %v", got)
	}
	if got := minus(s, []Span{spanOf(netip.MustParsePrefix("10.244.1.0/25")), spanOf(netip.MustParsePrefix("fd00::/64"))}); len(got) != 1 || got[0].String() != "10.244.1.128-10.244.1.255" {
		t.Errorf("minus: %v", got)
	}
}

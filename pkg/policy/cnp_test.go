package policy

import (
	"math/rand"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// firstMatch against brute force: random boxes in a small universe, every
// point's verdict is the first rule covering it (none for Pass), and the
// pieces are disjoint.
func TestFirstMatchAgreesWithBruteForce(t *testing.T) {
	r := rand.New(rand.NewSource(11))
	base := netip.MustParseAddr("10.0.0.0")
	addr := func(i int) netip.Addr {
		a := base
		for range i {
			a = a.Next()
		}
		return a
	}
	actions := []cnpv1.ClusterNetworkPolicyRuleAction{cnpv1.ClusterNetworkPolicyRuleActionAccept,
		cnpv1.ClusterNetworkPolicyRuleActionDeny, cnpv1.ClusterNetworkPolicyRuleActionPass}
	for iter := range 300 {
		var rules []orderedRule
		for i := range 1 + r.Intn(6) {
			ref := &RuleRef{Policy: "p", Index: i, Action: actions[r.Intn(3)]}
			var boxes []box
			for range 1 + r.Intn(3) {
				a0, a1 := r.Intn(12), r.Intn(12)
				p0, p1 := uint8(r.Intn(4)), uint8(r.Intn(4))
				q0, q1 := uint16(r.Intn(10)), uint16(r.Intn(10))
				if r.Intn(4) == 0 { // all protocols, all ports
					p0, p1, q0, q1 = 0, 255, 0, 65535
				}
				boxes = append(boxes, box{Span{addr(min(a0, a1)), addr(max(a0, a1))},
					ProtoSpan{min(p0, p1), max(p0, p1)}, PortSpan{min(q0, q1), max(q0, q1)}})
			}
			rules = append(rules, orderedRule{ref, boxes})
		}
		vs := firstMatch(rules)
		for a := range 14 {
			for p := range 5 {
				for q := range 11 {
					ip := addr(a)
					var want *RuleRef
				rules:
					for _, ru := range rules {
						for _, b := range ru.boxes {
							if !ip.Less(b.addrs.First) && !b.addrs.Last.Less(ip) && uint8(p) >= b.protos.First &&
								uint8(p) <= b.protos.Last && uint16(q) >= b.ports.First && uint16(q) <= b.ports.Last {
								want = ru.ref
								break rules
							}
						}
					}
					if want != nil && want.Action == cnpv1.ClusterNetworkPolicyRuleActionPass {
						want = nil
					}
					var got []*RuleRef
					for _, v := range vs {
						if v.covers(ip, uint8(p), uint16(q)) {
							got = append(got, v.Rule)
						}
					}
					if len(got) > 1 {
						t.Fatalf("iteration %d: %s %d/%d in %d pieces", iter, ip, p, q, len(got))
					}
					switch {
					case want == nil && len(got) == 1:
						t.Fatalf("iteration %d: %s %d/%d decided by rule %d, want no verdict", iter, ip, p, q, got[0].Index)
					case want != nil && (len(got) == 0 || got[0] != want):
						t.Fatalf("iteration %d: %s %d/%d: got %v, want rule %d", iter, ip, p, q, got, want.Index)
					}
				}
			}
		}
	}
}

// The scene of the CNP tests: namespaces prod (a, b) and dev (c), with
// named ports; two nodes.
func cnpScene() ([]*corev1.Pod, []*corev1.Namespace, []*corev1.Node) {
	pod := func(ns, name, ip string, l map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: l},
			Spec:   corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: ports}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip}}
	}
	pods := []*corev1.Pod{
		pod("prod", "a", "10.244.1.2", map[string]string{"app": "a"}, corev1.ContainerPort{Name: "web", ContainerPort: 8080}),
		pod("prod", "b", "10.244.1.3", map[string]string{"app": "b"}, corev1.ContainerPort{Name: "web", ContainerPort: 9090, Protocol: corev1.ProtocolUDP}),
		pod("dev", "c", "10.244.2.2", map[string]string{"app": "c"}),
		{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "host"}, Spec: corev1.PodSpec{HostNetwork: true},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "192.168.56.11"}},
	}
	nss := []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "prod", Labels: map[string]string{"env": "prod", "kubernetes.io/metadata.name": "prod"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "dev", Labels: map[string]string{"env": "dev", "kubernetes.io/metadata.name": "dev"}}},
	}
	nodes := []*corev1.Node{
		{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{"role": "worker"}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.56.11"}, {Type: corev1.NodeHostName, Address: "node-1"}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "cp", Labels: map[string]string{"role": "control-plane"}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.56.10"}}}},
	}
	return pods, nss, nodes
}

func cnp(name string, tier cnpv1.Tier, prio int32, subject cnpv1.ClusterNetworkPolicySubject) *cnpv1.ClusterNetworkPolicy {
	return &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: cnpv1.ClusterNetworkPolicySpec{Tier: tier, Priority: prio, Subject: subject}}
}

func nsSubject(env string) cnpv1.ClusterNetworkPolicySubject {
	return cnpv1.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"env": env}}}
}

func nsPeer(env string) cnpv1.ClusterNetworkPolicyIngressPeer {
	return cnpv1.ClusterNetworkPolicyIngressPeer{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"env": env}}}
}

func ingressRule(action cnpv1.ClusterNetworkPolicyRuleAction, peers []cnpv1.ClusterNetworkPolicyIngressPeer, protos ...cnpv1.ClusterNetworkPolicyProtocol) cnpv1.ClusterNetworkPolicyIngressRule {
	return cnpv1.ClusterNetworkPolicyIngressRule{Action: action, From: peers, Protocols: protos}
}

func cnpTCP(port int32) cnpv1.ClusterNetworkPolicyProtocol {
	return cnpv1.ClusterNetworkPolicyProtocol{TCP: &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1.Port{Number: port}}}
}

const (
	accept = cnpv1.ClusterNetworkPolicyRuleActionAccept
	deny   = cnpv1.ClusterNetworkPolicyRuleActionDeny
	pass   = cnpv1.ClusterNetworkPolicyRuleActionPass
)

// resolveAll resolves NetworkPolicies and ClusterNetworkPolicies together
// over the CNP scene.
func resolveAll(t *testing.T, nps []*networkingv1.NetworkPolicy, cnps ...*cnpv1.ClusterNetworkPolicy) (map[types.NamespacedName]*PodPolicy, []ClusterProblem) {
	t.Helper()
	pods, nss, nodes := cnpScene()
	out, problems := Resolve(nps, pods, nss)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	return out, ResolveCluster(cnps, pods, nss, nodes, out)
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestClusterTiersInOrder(t *testing.T) {
	// Admin: deny dev → prod on 8080, but a Pass for 9090 before it hands
	// that port to NetworkPolicy. NetworkPolicy: a allows only prod. Baseline:
	// deny everything to prod (matters only where no NP isolates: b).
	admin := cnp("admin", cnpv1.AdminTier, 10, nsSubject("prod"))
	admin.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{
		ingressRule(pass, []cnpv1.ClusterNetworkPolicyIngressPeer{nsPeer("dev")}, cnpTCP(9090)),
		ingressRule(deny, []cnpv1.ClusterNetworkPolicyIngressPeer{nsPeer("dev")}),
	}
	acceptHigher := cnp("accept-first", cnpv1.AdminTier, 5, nsSubject("prod"))
	acceptHigher.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{
		ingressRule(accept, []cnpv1.ClusterNetworkPolicyIngressPeer{nsPeer("dev")}, cnpTCP(7070)),
	}
	baseline := cnp("baseline", cnpv1.BaselineTier, 1, nsSubject("prod"))
	baseline.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{
		ingressRule(deny, []cnpv1.ClusterNetworkPolicyIngressPeer{nsPeer("dev"), nsPeer("prod")}),
	}
	npA := np("prod", "a-from-prod", map[string]string{"app": "a"}, networkingv1.NetworkPolicySpec{
		Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}}}}}})
	pp, problems := resolveAll(t, []*networkingv1.NetworkPolicy{npA}, admin, acceptHigher, baseline)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	a, b, c := pp[key("prod", "a")], pp[key("prod", "b")], pp[key("dev", "c")]
	for _, tc := range []struct {
		pp    *PodPolicy
		from  string
		proto uint8
		port  uint16
		want  bool
		why   string
	}{
		{a, "10.244.2.2", 6, 7070, true, "Admin accept at priority 5 wins over the deny at 10 and over a's NetworkPolicy"},
		{a, "10.244.2.2", 6, 8080, false, "Admin deny dev, whatever a's NetworkPolicy"},
		{a, "10.244.2.2", 1, 0, false, "Admin deny without protocols covers ICMP"},
		{a, "10.244.2.2", 6, 9090, false, "Pass hands 9090 to NetworkPolicy, which allows only prod"},
		{b, "10.244.2.2", 6, 9090, false, "Pass hands 9090 on: b has no NetworkPolicy, Baseline denies"},
		{a, "10.244.1.3", 6, 8080, true, "prod → a: NetworkPolicy allows; Baseline does not apply to a pod NP isolates"},
		{b, "10.244.1.2", 6, 8080, false, "prod → b: no NetworkPolicy, Baseline denies"},
		{b, "192.168.56.11", 6, 8080, true, "a host-network pod is no namespace peer: nothing decides, allowed"},
		{c, "10.244.1.2", 6, 8080, true, "dev is no subject"},
	} {
		if got := tc.pp.allowsAll(Ingress, ip(tc.from), tc.proto, tc.port); got != tc.want {
			t.Errorf("%s from %s %d/%d: allowed %v, want %v (%s)", tc.pp.Pod, tc.from, tc.proto, tc.port, got, tc.want, tc.why)
		}
	}
	if len(c.Admin[Ingress])+len(c.Baseline[Ingress]) > 0 {
		t.Errorf("dev/c has verdicts: %v %v", c.Admin, c.Baseline)
	}
}

func TestClusterEgressPeersAndNamedPorts(t *testing.T) {
	egress := cnp("egress", cnpv1.AdminTier, 1, cnpv1.ClusterNetworkPolicySubject{Pods: &cnpv1.NamespacedPod{
		NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"env": "dev"}}}})
	egress.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{
		{Action: accept, To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Pods: &cnpv1.NamespacedPod{}}},
			Protocols: []cnpv1.ClusterNetworkPolicyProtocol{{DestinationNamedPort: "web"}}},
		{Action: accept, To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Nodes: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "control-plane"}}}},
			Protocols: []cnpv1.ClusterNetworkPolicyProtocol{{TCP: &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1.Port{Range: &cnpv1.PortRange{Start: 6443, End: 6444}}}}}},
		{Action: accept, To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1.CIDR{"192.168.57.0/24"}}}},
		{Action: deny, To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1.CIDR{"0.0.0.0/0"}}}},
	}
	pp, problems := resolveAll(t, nil, egress)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	c := pp[key("dev", "c")]
	for _, tc := range []struct {
		to    string
		proto uint8
		port  uint16
		want  bool
	}{
		{"10.244.1.2", 6, 8080, true},     // a's "web" is TCP 8080
		{"10.244.1.2", 17, 8080, false},   // … not UDP
		{"10.244.1.3", 17, 9090, true},    // b's "web" is UDP 9090
		{"10.244.1.3", 6, 8080, false},    // b's 8080 is no "web"
		{"192.168.56.10", 6, 6443, true},  // the control-plane node, in the range
		{"192.168.56.10", 6, 6445, false}, // … out of it
		{"192.168.56.11", 6, 6443, false}, // a worker
		{"192.168.57.9", 1, 0, true},      // networks, any protocol
		{"8.8.8.8", 17, 53, false},        // the deny of 0.0.0.0/0
	} {
		if got := c.allowsAll(Egress, ip(tc.to), tc.proto, tc.port); got != tc.want {
			t.Errorf("dev/c to %s %d/%d: allowed %v, want %v", tc.to, tc.proto, tc.port, got, tc.want)
		}
	}
}

func TestClusterFailsClosed(t *testing.T) {
	bad := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "x", Operator: "Sideways"}}}
	acceptBad := cnp("accept-bad", cnpv1.AdminTier, 1, nsSubject("prod"))
	acceptBad.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{
		ingressRule(accept, []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: bad}, nsPeer("dev")}),
	}
	passUnknown := cnp("pass-unknown", cnpv1.AdminTier, 2, nsSubject("prod"))
	passUnknown.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{ingressRule(pass, []cnpv1.ClusterNetworkPolicyIngressPeer{{}})}
	domains := cnp("domains", cnpv1.AdminTier, 3, nsSubject("dev"))
	domains.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{{Action: accept,
		To: []cnpv1.ClusterNetworkPolicyEgressPeer{{DomainNames: []cnpv1.DomainName{"example.com"}}}}}
	pp, problems := resolveAll(t, nil, acceptBad, passUnknown, domains)
	var msgs []string
	for _, p := range problems {
		msgs = append(msgs, p.Error())
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{"accept-bad: ingress 0: namespaces peer", "pass-unknown: ingress 0: a peer with no field", "domains: egress 0: domainNames"} {
		if !strings.Contains(all, want) {
			t.Errorf("problems lack %q:\n%s", want, all)
		}
	}
	a := pp[key("prod", "a")]
	// The Accept rule keeps its good peer (dev) and loses the bad one; the
	// Pass rule that cannot be read denies everything else.
	if !a.allowsAll(Ingress, ip("10.244.2.2"), 6, 80) {
		t.Error("dev → a: the readable peer of the Accept rule should still accept")
	}
	if a.allowsAll(Ingress, ip("10.244.1.3"), 6, 80) {
		t.Error("prod → a: the unreadable Pass rule should deny")
	}
	if c := pp[key("dev", "c")]; !c.allowsAll(Egress, ip("10.244.1.2"), 6, 80) {
		t.Error("the domainNames Accept rule should match nothing, not deny")
	}
}

package policy

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/knftables"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/podnet/podnet/internal/netnstest"
)

// applyAll resolves NetworkPolicies and ClusterNetworkPolicies against the
// kernel lab's pods (the router stands in for a Node, role=router) and
// syncs them into the node, as podnetd does.
func (k *kernelLab) applyAll(t *testing.T, nps []*networkingv1.NetworkPolicy, cnps ...*cnpv1.ClusterNetworkPolicy) {
	t.Helper()
	nodes := []*corev1.Node{{ObjectMeta: metav1.ObjectMeta{Name: "router", Labels: map[string]string{"role": "router"}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.56.100"}}}}}
	pp, problems := Resolve(nps, k.objs, k.nss)
	if len(problems) > 0 {
		t.Fatalf("resolve: %v", problems)
	}
	if cp := ResolveCluster(cnps, k.objs, k.nss, nodes, pp); len(cp) > 0 {
		t.Fatalf("resolve cluster policies: %v", cp)
	}
	if err := k.node.Do(func() error { return k.enf.Sync(context.Background(), pp) }); err != nil {
		t.Fatalf("sync: %v", err)
	}
}

func podsSubject(a string) cnpv1.ClusterNetworkPolicySubject {
	return cnpv1.ClusterNetworkPolicySubject{Pods: &cnpv1.NamespacedPod{PodSelector: app(a)}}
}

func podsPeer(a string) cnpv1.ClusterNetworkPolicyIngressPeer {
	return cnpv1.ClusterNetworkPolicyIngressPeer{Pods: &cnpv1.NamespacedPod{PodSelector: app(a)}}
}

func TestKernelClusterNetworkPolicy(t *testing.T) {
	requireKernel(t)
	k := newKernelLab(t)
	for _, n := range []string{"a", "b", "c"} {
		listen(t, k.pods[n], n, 8080, 9090)
	}
	listen(t, k.node, "node", 8080)
	listen(t, k.router, "router", 8080, 6443)
	listen(t, k.far, "far", 8080)

	// b takes 8080 from a only (NetworkPolicy).
	allowFromA := netpol("allow-from-pod-a", networkingv1.NetworkPolicySpec{PodSelector: app("pod-b"),
		Ingress: []networkingv1.NetworkPolicyIngressRule{{
			From:  []networkingv1.NetworkPolicyPeer{{PodSelector: ptr.To(app("pod-a"))}},
			Ports: []networkingv1.NetworkPolicyPort{tcpPort(8080)}}}})
	// Admin: c may reach b's 8080 whatever NetworkPolicy says (priority 1);
	// a may not (priority 2); 9090 from a is passed on to NetworkPolicy.
	admin := cnp("admin-b", cnpv1.AdminTier, 2, podsSubject("pod-b"))
	admin.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{
		ingressRule(pass, []cnpv1.ClusterNetworkPolicyIngressPeer{podsPeer("pod-a")}, cnpTCP(9090)),
		{Name: "no-a", Action: deny, From: []cnpv1.ClusterNetworkPolicyIngressPeer{podsPeer("pod-a")}},
	}
	adminC := cnp("admin-c-first", cnpv1.AdminTier, 1, podsSubject("pod-b"))
	adminC.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{
		ingressRule(accept, []cnpv1.ClusterNetworkPolicyIngressPeer{podsPeer("pod-c")}, cnpTCP(8080)),
	}
	// Baseline: nothing from pods reaches c, unless a NetworkPolicy of c's
	// says otherwise.
	baseline := cnp("baseline-c", cnpv1.BaselineTier, 1, podsSubject("pod-c"))
	baseline.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{
		ingressRule(deny, []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}),
	}

	t.Run("Admin before NetworkPolicy: Accept overrides its deny, Deny its allow, Pass hands over", func(t *testing.T) {
		k.applyAll(t, []*networkingv1.NetworkPolicy{allowFromA}, admin, adminC)
		k.check(t,
			probe{"c", "b", 8080, "b"},     // Admin accept, though the NP allows only a
			probe{"a", "b", 8080, ""},      // Admin deny, though the NP allows a
			probe{"a", "b", 9090, ""},      // Pass: the NP decides, and allows only 8080
			probe{"c", "b", 9090, ""},      // no CNP rule: the NP's default deny
			probe{"router", "b", 8080, ""}, // nor here
			probe{"node", "b", 9090, "b"},  // the node itself, always
		)
		k.applyAll(t, nil, admin) // no NP: Pass falls through to the default
		k.check(t, probe{"a", "b", 9090, "b"}, probe{"a", "b", 8080, ""}, probe{"c", "b", 9090, "b"})
	})

	t.Run("Baseline after NetworkPolicy: only for pods none isolates", func(t *testing.T) {
		k.applyAll(t, nil, baseline)
		k.check(t, probe{"a", "c", 8080, ""}, probe{"b", "c", 9090, ""},
			probe{"router", "c", 8080, "c"}) // the router is no pod: no peer of a namespaces peer
		k.applyAll(t, []*networkingv1.NetworkPolicy{netpol("c-from-a", networkingv1.NetworkPolicySpec{PodSelector: app("pod-c"),
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: ptr.To(app("pod-a"))}}}}})}, baseline)
		k.check(t, probe{"a", "c", 8080, "c"}, probe{"b", "c", 9090, ""}, probe{"router", "c", 8080, ""})
	})

	t.Run("egress to nodes and networks, the node's own address through the input hook", func(t *testing.T) {
		egress := cnp("egress-a", cnpv1.AdminTier, 1, podsSubject("pod-a"))
		egress.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{
			{Action: accept, To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Nodes: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "router"}}}},
				Protocols: []cnpv1.ClusterNetworkPolicyProtocol{cnpTCP(6443)}},
			{Action: deny, To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1.CIDR{"192.168.0.0/16", "10.244.1.1/32"}}}},
		}
		k.applyAll(t, nil, egress)
		k.check(t, probe{"a", "router", 6443, "router"}, probe{"a", "router", 8080, ""}, probe{"a", "far", 8080, ""},
			probe{"a", "node", 8080, ""}, probe{"a", "b", 8080, "b"}, probe{"b", "far", 8080, "far"})
		if got := udpOutcome(k.pods["a"], "192.168.57.2:5353"); got != "timed out" {
			t.Errorf("UDP a -> far:5353 under a deny without protocols: %s", got)
		}
	})

	t.Run("a new Admin deny cuts established flows; its drops are logged and counted by rule", func(t *testing.T) {
		k.applyAll(t, nil)
		conn := dialKeep(t, k.pods["a"], "10.244.1.3:8080")
		other := dialKeep(t, k.pods["c"], "10.244.1.3:8080")
		drops := k.readDrops(t)
		time.Sleep(100 * time.Millisecond)
		k.applyAll(t, nil, admin)
		if err := roundTrip(conn); err == nil {
			t.Error("a's connection to b still carries data after the Admin deny")
		}
		if err := roundTrip(other); err != nil {
			t.Errorf("c's connection to b, not denied, broke: %v", err)
		}
		k.check(t, probe{"a", "b", 8080, ""})
		select {
		case d := <-drops:
			info, ok := k.enf.Chain(d.Chain)
			if !ok || info.Cluster == nil || info.Cluster.Policy != "admin-b" || info.Cluster.Name != "no-a" || info.Cluster.Tier != Admin {
				t.Errorf("drop %+v: chain stands for %+v (%v), want admin-b's rule no-a", d, info, ok)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("no drop logged")
		}
		var counts map[string]uint64
		if err := k.node.Do(func() (err error) { counts, err = k.enf.Drops(context.Background()); return err }); err != nil {
			t.Fatal(err)
		}
		if n := counts[denyChainName(&RuleRef{Tier: Admin, Policy: "admin-b", Direction: Ingress, Index: 1})]; n < 1 {
			t.Errorf("drop counters %v: none for admin-b's rule 1", counts)
		}
	})

	t.Run("policies gone: deny chains and maps are emptied, then deleted", func(t *testing.T) {
		k.applyAll(t, []*networkingv1.NetworkPolicy{allowFromA}, admin, adminC, baseline)
		out := k.node.MustRun(t, "nft", "list", "table", "inet", TableName)
		for _, want := range []string{"chain " + denyPrefix, "-admin {", "-base {"} {
			if !strings.Contains(out, want) {
				t.Errorf("the table lacks %q:\n%s", want, out)
			}
		}
		// A new Enforcer (podnetd restarted) finds them in the kernel: its
		// first, full, sync empties them.
		k.enf = NewEnforcer(netnstest.GuardedNFT(t, k.node, knftables.InetFamily, TableName), Config{Conntrack: NewConntrack()})
		k.applyAll(t, nil)
		k.check(t, probe{"a", "b", 8080, "b"}, probe{"a", "c", 8080, "c"})
		time.Sleep(staleChainDelay)
		k.applyAll(t, nil)
		k.applyAll(t, []*networkingv1.NetworkPolicy{allowFromA}, admin, adminC, baseline)
		k.applyAll(t, nil) // and the partial sync path
		time.Sleep(staleChainDelay)
		k.applyAll(t, nil)
		out = k.node.MustRun(t, "nft", "list", "table", "inet", TableName)
		for _, left := range []string{"chain " + denyPrefix, "chain " + ingressPrefix, "map " + ingressPrefix, "counter " + denyPrefix} {
			if strings.Contains(out, left) {
				t.Errorf("stale %q left:\n%s", left, out)
			}
		}
	})
}

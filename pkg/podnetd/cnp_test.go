package podnetd_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/tools/record"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	cnpfake "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned/fake"

	"github.com/podnet/podnet/pkg/podnetd"
)

// cnpClient is a fake ClusterNetworkPolicy clientset whose discovery
// serves the resource (or not).
func cnpClient(served bool, cnps ...*cnpv1.ClusterNetworkPolicy) *cnpfake.Clientset {
	var objs []runtime.Object
	for _, c := range cnps {
		objs = append(objs, c)
	}
	c := cnpfake.NewSimpleClientset(objs...)
	if served {
		c.Discovery().(*fakediscovery.FakeDiscovery).Resources = []*metav1.APIResourceList{{
			GroupVersion: cnpv1.GroupVersion.String(),
			APIResources: []metav1.APIResource{{Name: "clusternetworkpolicies", Kind: "ClusterNetworkPolicy"}}}}
	}
	return c
}

func TestClusterNetworkPolicyInTheAgent(t *testing.T) {
	web := map[string]string{"app": "web"}
	denyWeb := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny-to-web"},
		Spec: cnpv1.ClusterNetworkPolicySpec{Tier: cnpv1.AdminTier, Priority: 1,
			Subject: cnpv1.ClusterNetworkPolicySubject{Pods: &cnpv1.NamespacedPod{PodSelector: metav1.LabelSelector{MatchLabels: web}}},
			Ingress: []cnpv1.ClusterNetworkPolicyIngressRule{{Name: "no-db", Action: cnpv1.ClusterNetworkPolicyRuleActionDeny,
				From: []cnpv1.ClusterNetworkPolicyIngressPeer{{Pods: &cnpv1.NamespacedPod{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}}}}}}}}
	unreadable := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "unreadable"},
		Spec: cnpv1.ClusterNetworkPolicySpec{Tier: cnpv1.BaselineTier, Priority: 1,
			Subject: cnpv1.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{}},
			Egress: []cnpv1.ClusterNetworkPolicyEgressRule{{Action: cnpv1.ClusterNetworkPolicyRuleActionAccept,
				To: []cnpv1.ClusterNetworkPolicyEgressPeer{{DomainNames: []cnpv1.DomainName{"example.com"}}}}}}}
	events := record.NewFakeRecorder(16)
	nft, socket := startPolicyAgentWith(t, []podnetd.Option{podnetd.WithClusterPolicyClient(cnpClient(true, denyWeb, unreadable)), podnetd.WithEventRecorder(events)},
		policyPod("web-1", "node-1", "", web), // starting: no IP in the API yet
		policyPod("db-0", "node-2", "10.244.2.5", map[string]string{"app": "db"}))

	// No NetworkPolicy selects web-1, but a ClusterNetworkPolicy does: the
	// announcement is answered once its verdicts are in.
	r, err := announceWhenListening(socket, "web-1", "10.244.1.7")
	if err != nil || !r.Isolated {
		t.Fatalf("announce web-1: %+v, %v; want answered after its policy pass", r, err)
	}
	if got := nft.keys("map", "ingress-pods"); !slices.Contains(got, "10.244.1.7") {
		t.Fatalf("ingress-pods %v, want web-1's announced 10.244.1.7", got)
	}
	all, _ := nft.ListAll(context.Background())
	var admin, deny string
	for _, m := range all["map"] {
		if strings.HasSuffix(m, "-admin") && strings.Contains(m, "web-1") {
			admin = m
		}
	}
	for _, c := range all["chain"] {
		if strings.HasPrefix(c, "cnp-") && strings.Contains(c, "deny-to-web") {
			deny = c
		}
	}
	if admin == "" || deny == "" {
		t.Fatalf("no admin map for web-1 or no deny chain for deny-to-web: %v", all)
	}
	if got := nft.keys("map", admin); !slices.Equal(got, []string{"10.244.2.5 . 0-255 . 0-65535"}) {
		t.Errorf("%s: %v, want db-0's address, every protocol and port", admin, got)
	}
	select {
	case e := <-events.Events:
		if !strings.Contains(e, "PolicyNotEnforceable") || !strings.Contains(e, "unreadable") || !strings.Contains(e, "domainNames") {
			t.Errorf("event %q, want PolicyNotEnforceable on unreadable naming domainNames", e)
		}
	case <-time.After(5 * time.Second):
		t.Error("no Warning event for the policy with domainNames")
	}
	// Told once, not at every pass.
	select {
	case e := <-events.Events:
		t.Errorf("a second event: %q", e)
	case <-time.After(300 * time.Millisecond):
	}
}

// Without the CRD the engine runs NetworkPolicy alone.
func TestClusterNetworkPolicyNotServed(t *testing.T) {
	nft, socket := startPolicyAgentWith(t, []podnetd.Option{podnetd.WithClusterPolicyClient(cnpClient(false))},
		policyPod("web-1", "node-1", "", map[string]string{"app": "web"}))
	r, err := announceWhenListening(socket, "web-1", "10.244.1.7")
	if err != nil || r.Isolated {
		t.Fatalf("announce web-1: %+v, %v; want open at once", r, err)
	}
	eventually(t, "the skeleton written", func() (bool, string) {
		all, _ := nft.ListAll(context.Background())
		return slices.Contains(all["chain"], "pods"), strings.Join(all["chain"], " ")
	})
}

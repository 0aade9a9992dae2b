package nodeagent

import (
	"context"
	"net/netip"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"
)

func TestResolvConf(t *testing.T) {
	const node = "# the host's\nnameserver 10.255.255.53\nsearch corp.example\noptions timeout:2\n"
	pod := func(policy corev1.DNSPolicy, cfg *corev1.PodDNSConfig) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop"}, Spec: corev1.PodSpec{DNSPolicy: policy, DNSConfig: cfg}}
	}
	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
		want string
	}{
		{"cluster first (the default)", pod("", nil),
			"search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"},
		{"default is the node's", pod(corev1.DNSDefault, nil), "search corp.example\nnameserver 10.255.255.53\noptions timeout:2\n"},
		{"none with dnsConfig", pod(corev1.DNSNone, &corev1.PodDNSConfig{Nameservers: []string{"1.2.3.4"}, Searches: []string{"a.b"},
			Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: ptr.To("2")}, {Name: "edns0"}}}),
			"search a.b\nnameserver 1.2.3.4\noptions ndots:2 edns0\n"},
		{"cluster first merged", pod(corev1.DNSClusterFirst, &corev1.PodDNSConfig{Searches: []string{"my.dns.search.suffix"},
			Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: ptr.To("2")}}}),
			"search shop.svc.cluster.local svc.cluster.local cluster.local my.dns.search.suffix\nnameserver 10.96.0.10\noptions ndots:2\n"},
	} {
		if got := resolvConf(tc.pod, node); got != tc.want {
			t.Errorf("%s:\n%s\nwant:\n%s", tc.name, got, tc.want)
		}
	}
	hostNet := pod("", nil)
	hostNet.Spec.HostNetwork = true
	if got := resolvConf(hostNet, node); got != "search corp.example\nnameserver 10.255.255.53\noptions timeout:2\n" {
		t.Errorf("a host-network pod with ClusterFirst gets the node's resolv.conf, got:\n%s", got)
	}
}

func TestHostsAndHostname(t *testing.T) {
	ip := netip.MustParseAddr("10.244.1.5")
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-0", Namespace: "shop"}}
	if got := hostsFile(pod, ip); got != "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.244.1.5\tweb-0\n" {
		t.Errorf("hosts:\n%s", got)
	}
	pod.Spec.Hostname, pod.Spec.Subdomain = "db-0", "db"
	pod.Spec.HostAliases = []corev1.HostAlias{{IP: "1.2.3.4", Hostnames: []string{"foo.local", "bar.local"}}}
	want := "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" +
		"10.244.1.5\tdb-0.db.shop.svc.cluster.local\tdb-0\n\n# Entries added by HostAliases.\n1.2.3.4\tfoo.local\tbar.local\n"
	if got := hostsFile(pod, ip); got != want {
		t.Errorf("hosts with hostname, subdomain and aliases:\n%s\nwant:\n%s", got, want)
	}
	if podHostname(pod) != "db-0" {
		t.Errorf("hostname %q, want spec.hostname", podHostname(pod))
	}
}

func TestTokenRequestsAreBoundAndRefreshed(t *testing.T) {
	client := fake.NewClientset()
	var reqs []*authenticationv1.TokenRequest
	client.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		ca, ok := a.(k8stesting.CreateAction)
		if !ok || a.GetSubresource() != "token" {
			return false, nil, nil
		}
		tr := ca.GetObject().(*authenticationv1.TokenRequest).DeepCopy()
		reqs = append(reqs, tr)
		tr.Status = authenticationv1.TokenRequestStatus{Token: "t" + string(rune('0'+len(reqs))),
			ExpirationTimestamp: metav1.NewTime(time.Unix(1000+*tr.Spec.ExpirationSeconds, 0))}
		return true, tr, nil
	})
	now := time.Unix(1000, 0)
	c := newTokenCache()
	c.now = func() time.Time { return now }
	pod := testPod()
	proj := &corev1.ServiceAccountTokenProjection{ExpirationSeconds: ptr.To(int64(3600)), Audience: "vault", Path: "token"}
	get := func() string {
		tok, err := c.get(context.Background(), client, pod, proj)
		if err != nil {
			t.Fatal(err)
		}
		return string(tok)
	}
	if got := get(); got != "t1" {
		t.Fatalf("first token %q", got)
	}
	r := reqs[0]
	if r.Spec.BoundObjectRef == nil || r.Spec.BoundObjectRef.Kind != "Pod" || r.Spec.BoundObjectRef.Name != "web-0" ||
		r.Spec.BoundObjectRef.UID != pod.UID || len(r.Spec.Audiences) != 1 || r.Spec.Audiences[0] != "vault" {
		t.Errorf("token request %+v: want it bound to the pod, for audience vault", r.Spec)
	}
	now = now.Add(47 * time.Minute) // 78% of an hour: kept
	if got := get(); got != "t1" || len(reqs) != 1 {
		t.Errorf("at 78%% of its life the token was requested again (%q)", got)
	}
	now = now.Add(2 * time.Minute) // 82%: refreshed
	if got := get(); got != "t2" {
		t.Errorf("at 82%% of its life the token was not refreshed (%q)", got)
	}
	c.forget(pod.UID)
	if len(c.tokens) != 0 {
		t.Error("forget kept the pod's tokens")
	}
}

package podnetd_test

// The NetworkPolicy engine inside the agent, on a fake API and a knftables
// Fake: what the table holds, and how the plugin's announcement of a new
// pod (whose IP the API does not show yet) is answered.

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/knftables"

	"github.com/podnet/podnet/pkg/announce"
	"github.com/podnet/podnet/pkg/podnetd"
	"github.com/podnet/podnet/pkg/policy"
)

func policyPod(name, node, ip string, labels map[string]string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c"}}}, Status: corev1.PodStatus{Phase: corev1.PodPending}}
	if ip != "" {
		p.Status.Phase, p.Status.PodIP, p.Status.PodIPs = corev1.PodRunning, ip, []corev1.PodIP{{IP: ip}}
	}
	return p
}

// startPolicyAgent runs an agent with only the NetworkPolicy engine on
// node-1, with objs in the API; it returns the table and the socket.
func startPolicyAgent(t *testing.T, objs ...runtime.Object) (*lockedNFT, string) {
	t.Helper()
	return startPolicyAgentWith(t, nil, objs...)
}

// startPolicyAgentWith is startPolicyAgent with more options.
func startPolicyAgentWith(t *testing.T, opts []podnetd.Option, objs ...runtime.Object) (*lockedNFT, string) {
	t.Helper()
	nft := &lockedNFT{Fake: knftables.NewFake(knftables.InetFamily, policy.TableName)}
	socket := filepath.Join(t.TempDir(), "policy.sock")
	objs = append(objs, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default", Labels: map[string]string{"kubernetes.io/metadata.name": "default"}}})
	a, err := podnetd.New(podnetd.Config{NodeName: "node-1", NetworkPolicy: true, AgentSocket: socket, ProxyOnly: true},
		fake.NewClientset(objs...), append([]podnetd.Option{podnetd.WithPolicyNFTables(nft), podnetd.WithPolicyConntrack(&policy.FakeConntrack{})}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return nft, socket
}

func TestPolicyAnnouncedPodIsEnforcedBeforeTheAnswer(t *testing.T) {
	denyAll := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "deny-web"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}}
	nft, socket := startPolicyAgent(t, denyAll,
		policyPod("web-1", "node-1", "", map[string]string{"app": "web"}), // starting: no IP in the API yet
		policyPod("db-1", "node-1", "", map[string]string{"app": "db"}),
		policyPod("web-far", "node-2", "", map[string]string{"app": "web"}),
		policyPod("web-0", "node-1", "10.244.1.5", map[string]string{"app": "web"}))
	send := func(name, ip string) (announce.Reply, error) { return announceWhenListening(socket, name, ip) }
	r, err := send("web-1", "10.244.1.7")
	if err != nil || !r.Isolated {
		t.Fatalf("announce web-1: %+v, %v; want isolated", r, err)
	}
	// When the answer comes, the announced address is in the table.
	if got := nft.keys("map", "ingress-pods"); !slices.Contains(got, "10.244.1.7") || !slices.Contains(got, "10.244.1.5") {
		t.Errorf("ingress-pods %v after the answer, want web-1's announced 10.244.1.7 and web-0's 10.244.1.5", got)
	}
	if r, err := send("db-1", "10.244.1.8"); err != nil || r.Isolated {
		t.Errorf("announce db-1 (no policy selects it): %+v, %v; want open at once", r, err)
	}
	if _, err := send("web-far", "10.244.2.9"); err == nil || !strings.Contains(err.Error(), `bound to node "node-2"`) {
		t.Errorf("announce a pod of another node: %v, want refused", err)
	}
	if _, err := send("nobody", "10.244.1.9"); err == nil {
		t.Error("announce a pod the API does not know: answered")
	}
}

// announceWhenListening announces the pod default/name with ip as the CNI
// plugin does, trying again while podnetd does not listen yet.
func announceWhenListening(socket, name, ip string) (announce.Reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var r announce.Reply
	var err error
	for range 100 {
		if r, err = announce.Send(ctx, socket, announce.Pod{Namespace: "default", Name: name, IPs: []string{ip}}); err == nil ||
			!strings.Contains(err.Error(), "connect:") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return r, err
}

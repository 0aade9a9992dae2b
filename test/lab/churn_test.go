package lab_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/podnet/podnet/pkg/lab"
	"github.com/podnet/podnet/pkg/policy"
)

// Thousands of pods churning. The pods are API objects bound to a Node
// with no kubelet ("ghost", tolerating its taints), their addresses
// written into their status as a kubelet would: podnetd sees them as any
// other pod, peers of the policies of node-1's real pod. 100 policies in
// default select target (on node-1) and take friends from the churn
// namespaces; while pods are relabelled, deleted and re-created with new
// addresses and namespaces relabelled, a real friend keeps reaching target
// and a real stranger never does. Afterwards the table holds exactly the
// addresses the API says, no other pod chain, and podnetd never restarted.
func TestLabPolicyChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("lab test")
	}
	const (
		ghosts     = 2000
		namespaces = 10
		policies   = 100
		churnFor   = 60 * time.Second
	)
	e := upLab(t)
	ctx := context.Background()
	// client-go's default 5 requests a second would take a quarter of an
	// hour for the ghosts alone.
	rc, err := clientcmd.BuildConfigFromFlags("", lab.New(lab.Options{Dir: e.dir}).AdminKubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	rc.QPS, rc.Burst = 200, 400
	fast, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	cs := fast.CoreV1()
	e.runServer(t, "target", "node-1", map[string]string{"app": "target"})
	for name, role := range map[string]string{"friend": "friend", "stranger": "stranger"} {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"role": role}},
			Spec: corev1.PodSpec{NodeName: "node-2", TerminationGracePeriodSeconds: new(int64), Containers: []corev1.Container{{
				Name: "c", Image: "registry.k8s.io/e2e-test-images/agnhost:2.53", Args: []string{"pause"}}}}}
		if _, err := cs.Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	targetIP := e.waitReady(t, "target")
	friendIP := e.waitRunning(t, "friend")
	e.waitRunning(t, "stranger")

	if _, err := cs.Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "ghost"},
		Spec: corev1.NodeSpec{PodCIDR: "10.200.0.0/16"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range namespaces {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("churn-%d", i), Labels: map[string]string{"env": "churn"}}}
		if _, err := cs.Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Every ghost gets a fresh address from 10.200.0.0/16.
	var next atomic.Uint32
	newIP := func() string {
		n := next.Add(1)
		return fmt.Sprintf("10.200.%d.%d", n/250, 1+n%250)
	}
	createGhost := func(i int) error {
		role := "other"
		if i%2 == 0 {
			role = "friend"
		}
		ns := fmt.Sprintf("churn-%d", i%namespaces)
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ghost-%d", i), Namespace: ns,
			Labels: map[string]string{"role": role, "group": fmt.Sprint(i % policies)}},
			Spec: corev1.PodSpec{NodeName: "ghost", Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
				Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}}}}
		created, err := cs.Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		ip := newIP()
		created.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
		_, err = cs.Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{})
		return err
	}
	start := time.Now()
	parallel(t, ghosts, 8, createGhost)
	t.Logf("%d ghost pods created with addresses in %s", ghosts, time.Since(start).Round(100*time.Millisecond))
	// 100 policies on target: policy i takes the friends of group i from
	// the churn namespaces; one more takes the real friend.
	np := func(name string, peer networkingv1.NetworkPolicyPeer) *networkingv1.NetworkPolicy {
		return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "target"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{peer}}}}}
	}
	start = time.Now()
	parallel(t, policies, 8, func(i int) error {
		_, err := fast.NetworkingV1().NetworkPolicies("default").Create(ctx, np(fmt.Sprintf("group-%d", i), networkingv1.NetworkPolicyPeer{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"env": "churn"}},
			PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"role": "friend", "group": fmt.Sprint(i)}}}), metav1.CreateOptions{})
		return err
	})
	if _, err := e.client.NetworkingV1().NetworkPolicies("default").Create(ctx, np("real-friend", networkingv1.NetworkPolicyPeer{
		PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "friend"}}}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d policies created in %s", policies+1, time.Since(start).Round(100*time.Millisecond))
	connect := func(from string) string {
		out, err := e.exec(from, "/agnhost", "connect", "--timeout=3s", targetIP+":8080")
		if err == nil {
			return "ok"
		}
		if strings.Contains(out, "TIMEOUT") {
			return "dropped"
		}
		return strings.TrimSpace(out)
	}
	waitFor(t, 30*time.Second, "the stranger refused", func() (bool, string) {
		got := connect("stranger")
		return got == "dropped", got
	})

	// The churn, and the probes beside it: each client connects again and
	// again (a loop inside its pod, 2-second timeouts) for the churn's
	// length, printing ok or no per attempt.
	type tally struct{ ok, no int }
	results := map[string]*tally{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, who := range []string{"friend", "stranger"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop := fmt.Sprintf(`end=$(( $(date +%%s) + %d )); while [ $(date +%%s) -lt $end ]; do `+
				`if /agnhost connect --timeout=2s %s:8080 >/dev/null 2>&1; then echo ok; else echo no; fi; done`, int(churnFor.Seconds()), targetIP)
			out, err := e.exec(who, "sh", "-c", loop)
			tl := &tally{ok: strings.Count(out, "ok\n"), no: strings.Count(out, "no\n")}
			if err != nil {
				t.Errorf("%s's probe loop: %v\n%s", who, err, lastLines(out, 5))
			}
			mu.Lock()
			results[who] = tl
			mu.Unlock()
		}()
	}
	r := rand.New(rand.NewSource(1))
	ops := map[string]int{}
	recreated := ghosts
	for deadline := time.Now().Add(churnFor); time.Now().Before(deadline); {
		i := r.Intn(ghosts)
		ns := fmt.Sprintf("churn-%d", i%namespaces)
		name := fmt.Sprintf("ghost-%d", i)
		var err error
		switch op := r.Intn(10); {
		case op < 5: // relabel
			role := []string{"friend", "other"}[r.Intn(2)]
			_, err = cs.Pods(ns).Patch(ctx, name, types.MergePatchType, []byte(`{"metadata":{"labels":{"role":"`+role+`"}}}`), metav1.PatchOptions{})
			ops["relabel pod"]++
		case op < 9: // delete, re-create with a new address
			if err = cs.Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err == nil {
				waitGone(ctx, cs, ns, name)
				err = createGhost(i)
				recreated++
			}
			ops["re-create pod"]++
		default: // a namespace in or out of env=churn
			env := []string{"churn", "off"}[r.Intn(2)]
			_, err = cs.Namespaces().Patch(ctx, fmt.Sprintf("churn-%d", r.Intn(namespaces)), types.MergePatchType,
				[]byte(`{"metadata":{"labels":{"env":"`+env+`"}}}`), metav1.PatchOptions{})
			ops["relabel namespace"]++
		}
		if err != nil {
			t.Errorf("churn: %v", err)
		}
	}
	wg.Wait()
	f, s := results["friend"], results["stranger"]
	t.Logf("churn for %s: %v; the friend's connects: %d ok, %d refused; the stranger's: %d ok, %d refused", churnFor, ops, f.ok, f.no, s.ok, s.no)
	if f.no > 0 || f.ok == 0 {
		t.Errorf("the friend: %d connects ok, %d refused during the churn; want every one ok", f.ok, f.no)
	}
	if s.ok > 0 || s.no == 0 {
		t.Errorf("the stranger: %d connects ok, %d refused during the churn; want every one refused", s.ok, s.no)
	}

	// Settled: target's allow set is exactly the friends the API names.
	want := map[netip.Addr]bool{netip.MustParseAddr(friendIP): true}
	nsList, err := cs.Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	inChurn := map[string]bool{}
	for _, ns := range nsList.Items {
		inChurn[ns.Name] = ns.Labels["env"] == "churn"
	}
	pods, err := cs.Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=ghost"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.Labels["role"] == "friend" && inChurn[p.Namespace] && p.Status.PodIP != "" && p.DeletionTimestamp == nil {
			want[netip.MustParseAddr(p.Status.PodIP)] = true
		}
	}
	chain := policy.ChainName(policy.Ingress, types.NamespacedName{Namespace: "default", Name: "target"})
	var got map[netip.Addr]bool
	waitFor(t, 30*time.Second, fmt.Sprintf("target's allow set holds the %d friends the API names", len(want)), func() (bool, string) {
		got = setAddrs(t, e, "node-1", chain+"-any")
		var missing, extra int
		for a := range want {
			if !got[a] {
				missing++
			}
		}
		for a := range got {
			if !want[a] {
				extra++
			}
		}
		return missing == 0 && extra == 0, fmt.Sprintf("%d wanted, %d in the set: %d missing, %d extra", len(want), len(got), missing, extra)
	})
	out := e.onNode("node-1", "nft list table inet "+policy.TableName)
	if n := strings.Count(out, "chain in-") + strings.Count(out, "chain out-"); n != 1 {
		t.Errorf("node-1's policy table has %d pod chains, want target's ingress alone:\n%s", n, lastLines(out, 40))
	}
	for _, node := range []string{"node-1", "node-2"} {
		if n := podnetdRestarts(t, e, node); n > 0 {
			t.Errorf("podnetd on %s restarted %d times during the churn", node, n)
		}
	}
	t.Logf("%d ghost pods created in all, %d friends in target's set", recreated, len(got))
}

// parallel runs fn(0..n-1) on workers goroutines; the first error fails t.
func parallel(t *testing.T, n, workers int, fn func(i int) error) {
	t.Helper()
	var wg sync.WaitGroup
	var first atomic.Value
	work := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := fn(i); err != nil {
					first.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	if err, ok := first.Load().(error); ok {
		t.Fatal(err)
	}
}

// waitGone waits (up to 10 s) until the pod is gone from the API.
func waitGone(ctx context.Context, cs typedcorev1.CoreV1Interface, ns, name string) {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := cs.Pods(ns).Get(ctx, name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			return
		}
	}
}

// setAddrs reads an interval set of IPv4 addresses on a node and expands
// it to its addresses.
func setAddrs(t *testing.T, e *env, node, set string) map[netip.Addr]bool {
	t.Helper()
	out := e.onNode(node, "nft -j list set inet "+policy.TableName+" "+set)
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("nft -j list set %s: %v\n%s", set, err, out)
	}
	addrs := map[netip.Addr]bool{}
	for _, o := range doc.Nftables {
		raw, ok := o["set"]
		if !ok {
			continue
		}
		var s struct {
			Elem []json.RawMessage `json:"elem"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatal(err)
		}
		for _, el := range s.Elem {
			var one string
			var rng struct {
				Range [2]string `json:"range"`
			}
			var pfx struct {
				Prefix struct {
					Addr string `json:"addr"`
					Len  int    `json:"len"`
				} `json:"prefix"`
			}
			switch {
			case json.Unmarshal(el, &one) == nil:
				addrs[netip.MustParseAddr(one)] = true
			case json.Unmarshal(el, &rng) == nil && rng.Range[0] != "":
				for a, last := netip.MustParseAddr(rng.Range[0]), netip.MustParseAddr(rng.Range[1]); !last.Less(a); a = a.Next() {
					addrs[a] = true
				}
			case json.Unmarshal(el, &pfx) == nil && pfx.Prefix.Addr != "":
				p := netip.PrefixFrom(netip.MustParseAddr(pfx.Prefix.Addr), pfx.Prefix.Len)
				for a := p.Addr(); p.Contains(a); a = a.Next() {
					addrs[a] = true
				}
			default:
				t.Fatalf("set %s: element %s not understood", set, el)
			}
		}
	}
	return addrs
}

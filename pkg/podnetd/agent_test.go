package podnetd_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clienttesting "k8s.io/client-go/testing"
	"sigs.k8s.io/knftables"

	"github.com/podnet/podnet/pkg/backend"
	"github.com/podnet/podnet/pkg/masq"
)

func TestSetupWaitsForPodCIDRAndAddress(t *testing.T) {
	t.Parallel()
	self := node(selfName, "", "")
	self.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeExternalIP, Address: "203.0.113.11"}}
	h := newHarness(t, self, vtep(node("node-2", "10.244.2.0/24", "192.168.56.12"), "0a:58:c0:a8:38:0c"))
	h.start()
	h.waitWatching()
	eventually(t, "the agent saying it waits", func() (bool, string) {
		return len(h.logs.records(t, "waiting for this node's pod subnet (Node.spec.podCIDRs, allocated by kube-controller-manager) and address (reported by kubelet)")) == 1, h.logs.String()
	})

	// A pod subnet without an InternalIP is not enough either: the agent
	// waits, quietly (no failure, no retry, no Setup, no conflist).
	h.update(selfName, func(n *corev1.Node) { n.Spec.PodCIDR, n.Spec.PodCIDRs = "10.244.1.0/24", []string{"10.244.1.0/24"} })
	consistently(t, 300*time.Millisecond, "waiting quietly with a pod subnet but no InternalIP", func() (bool, string) {
		subnet, _ := readConflist(t, h.cfg.CNIConfDir)
		retries := h.logs.records(t, "sync failed; retrying")
		return len(h.be.Setups()) == 0 && len(h.be.Syncs()) == 0 && subnet == "" && len(retries) == 0,
			fmtAny(map[string]any{"setups": h.be.Setups(), "conflist": subnet, "retries": retries})
	})
	if err := h.agent.Health.Healthy(); err == nil {
		t.Error("healthy before this node was set up")
	}
	h.update(selfName, func(n *corev1.Node) {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "192.168.56.11"})
	})
	h.ready()

	want := backend.Local{Node: selfName, PodCIDR: netip.MustParsePrefix("10.244.1.0/24"), NodeIP: netip.MustParseAddr("192.168.56.11"), Link: "eth1"}
	if got := h.be.Setups(); len(got) != 1 || got[0] != want {
		t.Errorf("Setup calls: %+v, want one with %+v", got, want)
	}
	if got := h.underlayCalls(); len(got) != 1 || got[0] != want.NodeIP {
		t.Errorf("underlay looked up for %v, want [%s]", got, want.NodeIP)
	}
	n := h.node(selfName)
	for k, v := range facts.Annotations {
		if n.Annotations[k] != v {
			t.Errorf("annotation %s = %q, want %q", k, n.Annotations[k], v)
		}
	}
	if subnet, mtu := readConflist(t, h.cfg.CNIConfDir); subnet != "10.244.1.0/24" || mtu != facts.MTU {
		t.Errorf("conflist: subnet %q, mtu %d; want 10.244.1.0/24, %d", subnet, mtu, facts.MTU)
	}
	eventually(t, "Sync of node-2", func() (bool, string) { return h.syncedNodes("node-2") })
	if got := metric(t, h.reg, "podnet_sync_errors_total"); got != 0 {
		t.Errorf("podnet_sync_errors_total = %v: waiting is not a failure", got)
	}
	eventually(t, "healthy", func() (bool, string) {
		err := h.agent.Health.Healthy()
		return err == nil, errString(err)
	})
}

func TestMTUOverride(t *testing.T) {
	t.Parallel()
	h := newHarness(t, node(selfName, "10.244.1.0/24", "192.168.56.11"))
	h.cfg.MTU = 1400
	h.start()
	h.ready()
	if subnet, mtu := readConflist(t, h.cfg.CNIConfDir); subnet != "10.244.1.0/24" || mtu != 1400 {
		t.Errorf("conflist: subnet %q, mtu %d; want 10.244.1.0/24, 1400 (--mtu over the backend's %d)", subnet, mtu, facts.MTU)
	}
}

func TestSyncGetsEveryOtherNode(t *testing.T) {
	t.Parallel()
	h := newHarness(t,
		node(selfName, "10.244.1.0/24", "192.168.56.11"),
		vtep(node("node-3", "10.244.3.0/24", "192.168.56.13"), "0a:58:c0:a8:38:0d"),
		vtep(node("node-2", "10.244.2.0/24", "192.168.56.12"), "0a:58:c0:a8:38:0c"),
		node("node-4", "", "192.168.56.14"),                                 // no pod subnet yet
		node("node-5", "10.244.5.0/24", ""),                                 // no address yet
		vtep(node("node-6", "10.244.6.0/24", "192.168.57.16"), "not-a-mac"), // host-gw only
	)
	h.start()
	eventually(t, "a Sync", func() (bool, string) { return h.syncedNodes("node-2", "node-3", "node-6") })
	s, _ := h.lastSync()
	want := []backend.Remote{
		{Node: "node-2", PodCIDR: netip.MustParsePrefix("10.244.2.0/24"), NodeIP: netip.MustParseAddr("192.168.56.12"), VTEPMAC: mac(t, "0a:58:c0:a8:38:0c")},
		{Node: "node-3", PodCIDR: netip.MustParsePrefix("10.244.3.0/24"), NodeIP: netip.MustParseAddr("192.168.56.13"), VTEPMAC: mac(t, "0a:58:c0:a8:38:0d")},
		{Node: "node-6", PodCIDR: netip.MustParsePrefix("10.244.6.0/24"), NodeIP: netip.MustParseAddr("192.168.57.16")},
	}
	if !reflect.DeepEqual(s.Remotes, want) {
		t.Errorf("Sync got\n%+v\nwant\n%+v", s.Remotes, want)
	}

	h.waitWatching()
	start := time.Now()
	if _, err := h.client.CoreV1().Nodes().Create(t.Context(), node("node-7", "10.244.7.0/24", "192.168.56.17"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "node-7 synced", func() (bool, string) { return h.syncedNodes("node-2", "node-3", "node-6", "node-7") })
	if err := h.client.CoreV1().Nodes().Delete(t.Context(), "node-2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "node-2 gone from the Sync", func() (bool, string) { return h.syncedNodes("node-3", "node-6", "node-7") })
	// Events, not the resync, carried both changes.
	if took := time.Since(start); took >= h.cfg.Resync {
		t.Errorf("an added and a deleted node took %s to reach the backend, not less than the resync period %s", took, h.cfg.Resync)
	}
}

func TestPodCIDRChangeSetsUpAgain(t *testing.T) {
	t.Parallel()
	h := newHarness(t, node(selfName, "10.244.1.0/24", "192.168.56.11"))
	h.start()
	h.ready()
	h.waitWatching()
	// The Node deleted and registered anew; node IPAM gave another subnet.
	h.update(selfName, func(n *corev1.Node) { n.Spec.PodCIDR, n.Spec.PodCIDRs = "10.244.9.0/24", []string{"10.244.9.0/24"} })
	eventually(t, "a second Setup with the new subnet", func() (bool, string) {
		s := h.be.Setups()
		return len(s) == 2 && s[1].PodCIDR == netip.MustParsePrefix("10.244.9.0/24"), "Setups: " + fmtAny(s)
	})
	eventually(t, "the conflist rewritten with the new subnet", func() (bool, string) {
		subnet, mtu := readConflist(t, h.cfg.CNIConfDir)
		return subnet == "10.244.9.0/24" && mtu == facts.MTU, subnet
	})
}

func TestPutsBackWhatOthersRemove(t *testing.T) {
	t.Parallel()
	h := newHarness(t, node(selfName, "10.244.1.0/24", "192.168.56.11"))
	h.start()
	h.ready()
	h.waitWatching()
	h.update(selfName, func(n *corev1.Node) {
		n.Annotations = map[string]string{"someone.else/keeps": "this"}
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionTrue, Reason: "NoRouteCreated"}}
	})
	if n := h.node(selfName); hasFacts(n) || networkAvailable(n) {
		t.Fatalf("the test did not remove the facts: %s", describe(n))
	}
	h.ready()
	if got := h.node(selfName).Annotations["someone.else/keeps"]; got != "this" {
		t.Errorf("another component's annotation = %q after the agent published", got)
	}
}

func TestPatchFailuresRetriedWithBackoff(t *testing.T) {
	t.Parallel()
	remote := vtep(node("node-2", "10.244.2.0/24", "192.168.56.12"), "0a:58:c0:a8:38:0c")
	h := newHarness(t, node(selfName, "10.244.1.0/24", "192.168.56.11"), remote)
	h.retry = 50 * time.Millisecond
	h.cfg.Resync = 5 * time.Second // no resync in this test: retries only
	var patches patchLog
	patches.fail = 4
	h.client.PrependReactor("patch", "nodes", patches.react)
	h.start()
	h.ready()

	at := patches.times()
	if len(at) < 5 {
		t.Fatalf("%d patches, want 4 refused and then the successful ones", len(at))
	}
	retries := h.logs.records(t, "sync failed; retrying")
	if len(retries) < 4 {
		t.Fatalf("%d retries logged, want 4 (one per refused patch)", len(retries))
	}
	for i, r := range retries[:4] {
		want := h.retry << i // 50ms, 100ms, 200ms, 400ms
		if got := time.Duration(r["retry_in"].(float64)); got != want {
			t.Errorf("retry %d: retry_in %s, want %s", i+1, got, want)
		}
		if r["failures"] != float64(i+1) || !strings.Contains(r["err"].(string), "annotate node node-1") {
			t.Errorf("retry %d logged as %v", i+1, r)
		}
		if gap := at[i+1].Sub(at[i]); gap < want {
			t.Errorf("patch %d came %s after patch %d, before its backoff delay %s", i+2, gap, i+1, want)
		}
	}
	// Meanwhile the dataplane followed the cached Nodes: every refused
	// patch's pass synced node-2, and no Sync ever emptied the dataplane.
	during := 0
	for _, s := range h.be.Syncs() {
		if got := remoteNames(s.Remotes); len(got) != 1 || got[0] != "node-2" {
			t.Errorf("Sync at %s with %v, want node-2", s.At.Format(time.StampMilli), got)
		}
		if s.At.Before(at[4]) {
			during++
		}
	}
	if during < 4 {
		t.Errorf("%d Syncs while the patches were refused, want one per pass (4)", during)
	}
	if len(h.logs.records(t, "sync succeeded again")) != 1 {
		t.Error("the recovery is not logged")
	}

	// A success resets the backoff: the next failure waits the first delay.
	h.waitWatching()
	patches.failMore(1)
	h.update(selfName, func(n *corev1.Node) { n.Annotations = nil })
	h.ready()
	retries = h.logs.records(t, "sync failed; retrying")
	if last := retries[len(retries)-1]; time.Duration(last["retry_in"].(float64)) != h.retry || last["failures"] != float64(1) {
		t.Errorf("first retry after a success logged as %v, want retry_in %s, failures 1", last, h.retry)
	}
}

// patchLog records Node patches and refuses the first ones.
type patchLog struct {
	mu   sync.Mutex
	at   []time.Time
	fail int // patches left to refuse
}

func (p *patchLog) react(clienttesting.Action) (bool, runtime.Object, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.at = append(p.at, time.Now())
	if p.fail > 0 {
		p.fail--
		return true, nil, apierrors.NewServiceUnavailable("etcd is down (test)")
	}
	return false, nil, nil // on to the fake's tracker
}

func (p *patchLog) times() []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]time.Time(nil), p.at...)
}

func (p *patchLog) failMore(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fail = n
}

func TestBackendSyncErrorRetriedSoonerThanResync(t *testing.T) {
	t.Parallel()
	h := newHarness(t, node(selfName, "10.244.1.0/24", "192.168.56.11"), node("node-2", "10.244.2.0/24", "192.168.56.12"))
	h.cfg.Resync = 5 * time.Second
	h.start()
	h.ready()
	h.waitWatching()
	if got := metric(t, h.reg, "podnet_sync_errors_total"); got != 0 {
		t.Fatalf("podnet_sync_errors_total = %v before any failure", got)
	}

	h.be.FailSync(errors.New("netlink: no buffer space available"), 3)
	start := time.Now()
	if _, err := h.client.CoreV1().Nodes().Create(t.Context(), node("node-3", "10.244.3.0/24", "192.168.56.13"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "node-3 synced", func() (bool, string) {
		s, ok := h.lastSync()
		return ok && s.Err == nil && len(s.Remotes) == 2, "last Sync: " + fmtAny(s)
	})
	if took := time.Since(start); took >= h.cfg.Resync/2 {
		t.Errorf("three failed Syncs and the good one took %s; retries should come much sooner than the resync (%s)", took, h.cfg.Resync)
	}
	failed := 0
	for _, s := range h.be.Syncs() {
		if s.Err != nil {
			failed++
			if got := remoteNames(s.Remotes); len(got) != 2 {
				t.Errorf("a failed Sync had %v, want node-2 and node-3", got)
			}
		}
	}
	if failed != 3 {
		t.Errorf("%d failed Syncs, want 3", failed)
	}
	if got := metric(t, h.reg, "podnet_sync_errors_total"); got != 3 {
		t.Errorf("podnet_sync_errors_total = %v, want 3", got)
	}
	if r := h.logs.records(t, "sync failed; retrying"); len(r) != 3 || !strings.Contains(r[0]["err"].(string), "no buffer space") {
		t.Errorf("retries logged: %v", r)
	}
}

func TestSetupErrorRetried(t *testing.T) {
	t.Parallel()
	h := newHarness(t, node(selfName, "10.244.1.0/24", "192.168.56.11"))
	h.be.FailSetup(errors.New("create podnet.1: operation not permitted"), 2)
	h.start()
	h.ready()
	if got := len(h.be.Setups()); got != 3 {
		t.Errorf("%d Setup calls, want 2 failed and 1 good", got)
	}
	if subnet, _ := readConflist(t, h.cfg.CNIConfDir); subnet != "10.244.1.0/24" {
		t.Errorf("conflist subnet %q", subnet)
	}
}

func TestMasqueradeTable(t *testing.T) {
	t.Parallel()
	h := newHarness(t, node(selfName, "10.244.1.0/24", "192.168.56.11"))
	h.cfg.Resync = 200 * time.Millisecond
	h.start()
	h.ready()
	if ok, dump := masquerading(h.nft); !ok {
		t.Fatalf("the masquerade table does not masquerade the cluster CIDR to elsewhere only:\n%s", dump)
	}
	// Drift: someone deletes the table; a resync puts it back.
	tx := h.nft.NewTransaction()
	tx.Delete(&knftables.Table{})
	if err := h.nft.Run(t.Context(), tx); err != nil {
		t.Fatal(err)
	}
	if ok, _ := masquerading(h.nft); ok {
		t.Fatal("the test did not delete the table")
	}
	eventually(t, "the masquerade table restored", func() (bool, string) { return masquerading(h.nft) })
}

// masquerading says whether nft's table masquerades IPv4 traffic from the
// cluster CIDR (10.244.0.0/16), except to pods and to the node network,
// judged by the order of the postrouting rules, the sets they name and
// what those sets hold (not the rule text byte for byte). It also returns
// the table's dump.
func masquerading(nft *knftables.Fake) (bool, string) {
	dump := nft.Dump()
	nft.RLock()
	defer nft.RUnlock()
	tb := nft.Table
	if tb == nil {
		return false, "no table " + masq.TableName
	}
	holds := func(set, key string) bool {
		s := tb.Sets[set]
		return s != nil && s.Type == "ipv4_addr" && slices.ContainsFunc(s.Elements, func(e *knftables.Element) bool {
			return len(e.Key) == 1 && e.Key[0] == key
		})
	}
	var masquerades, keepsPods, keepsNodes bool
	for _, c := range tb.Chains {
		if c.Hook == nil || *c.Hook != knftables.PostroutingHook {
			continue
		}
		for _, r := range c.Rules {
			w := strings.Fields(r.Rule)
			if len(w) < 4 || w[0] != "ip" || !strings.HasPrefix(w[2], "@") {
				continue
			}
			set := w[2][1:]
			switch {
			case w[1] == "saddr" && w[3] == "masquerade":
				// Only after the exceptions (rules apply in order).
				masquerades = masquerades || (keepsPods && keepsNodes && holds(set, "10.244.0.0/16"))
			case w[1] == "daddr" && w[3] == "return":
				keepsPods = keepsPods || holds(set, "10.244.0.0/16")
				keepsNodes = keepsNodes || holds(set, segment.String())
			}
		}
	}
	return masquerades && keepsPods && keepsNodes, dump
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	h := newHarness(t,
		node(selfName, "10.244.1.0/24", "192.168.56.11"),
		node("node-2", "10.244.2.0/24", "192.168.56.12"),
		node("node-3", "10.244.3.0/24", "192.168.57.13"))
	h.be.SetRefused(map[string]string{"node-3": "on another segment (host-gw)"})
	h.start()
	h.ready()
	eventually(t, "gauges set", func() (bool, string) {
		r, f := metric(t, h.reg, "podnet_remote_nodes"), metric(t, h.reg, "podnet_remote_nodes_refused")
		return r == 1 && f == 1, fmtAny([]float64{r, f})
	})
	if got := metric(t, h.reg, "podnet_dataplane_changes_total", "op", "add"); got != 1 {
		t.Errorf("podnet_dataplane_changes_total{op=add} = %v, want 1", got)
	}
	if got := metric(t, h.reg, "podnet_sync_errors_total"); got != 0 {
		t.Errorf("podnet_sync_errors_total = %v, want 0", got)
	}
	h.waitWatching()
	h.be.FailSync(errors.New("boom"), 1)
	if err := h.client.CoreV1().Nodes().Delete(t.Context(), "node-2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "node-2 removed", func() (bool, string) {
		got := metric(t, h.reg, "podnet_dataplane_changes_total", "op", "remove")
		return got == 1, fmtAny(got)
	})
	if got := metric(t, h.reg, "podnet_sync_errors_total"); got != 1 {
		t.Errorf("podnet_sync_errors_total = %v, want 1", got)
	}
	if got := metric(t, h.reg, "podnet_remote_nodes"); got != 0 {
		t.Errorf("podnet_remote_nodes = %v, want 0", got)
	}
}

// An API server that answers nothing at all: the informer keeps its cache,
// the agent keeps syncing the dataplane from it (never emptying it), and
// catches up with what changed meanwhile once the server is back.
func TestAPIServerOutageKeepsDataplane(t *testing.T) {
	t.Parallel()
	h := newHarness(t, node(selfName, "10.244.1.0/24", "192.168.56.11"),
		node("node-2", "10.244.2.0/24", "192.168.56.12"), node("node-3", "10.244.3.0/24", "192.168.56.13"))
	h.cfg.Resync = 150 * time.Millisecond
	h.start()
	h.ready()
	h.waitWatching()
	eventually(t, "a Sync of both nodes", func() (bool, string) { return h.syncedNodes("node-2", "node-3") })

	h.setOutage(true)
	outage := time.Now()
	// The cluster changes while this agent cannot see it.
	nodes := corev1.SchemeGroupVersion.WithResource("nodes")
	if err := h.client.Tracker().Delete(nodes, "", "node-3"); err != nil {
		t.Fatal(err)
	}
	if err := h.client.Tracker().Add(node("node-4", "10.244.4.0/24", "192.168.56.14")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "resyncs during the outage", func() (bool, string) {
		n := 0
		for _, s := range h.be.Syncs() {
			if s.At.After(outage) {
				n++
			}
		}
		return n >= 3 && h.refused() > 0, fmtAny(n)
	})
	for _, s := range h.be.Syncs() {
		if got := strings.Join(remoteNames(s.Remotes), ","); s.At.After(outage) && got != "node-2,node-3" {
			t.Errorf("Sync during the outage with %q, want the cached node-2,node-3", got)
		}
	}
	h.setOutage(false)
	// The informer relists after its own backoff (0.8 s, doubling, jittered):
	// usually within 1.6 s of the outage's start.
	eventuallyWithin(t, 10*time.Second, "the agent caught up after the outage", func() (bool, string) { return h.syncedNodes("node-2", "node-4") })
	if err := h.agent.Health.Healthy(); err != nil {
		t.Errorf("unhealthy after the outage: %v", err)
	}
}

func mac(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func fmtAny(v any) string { return fmt.Sprintf("%+v", v) }

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// A refused remote gets one Warning Event on this Node, naming the node
// and the reason — not one per sync — and another when the reason changes.
func TestRefusedNodeRecordsAnEvent(t *testing.T) {
	t.Parallel()
	h := newHarness(t,
		node(selfName, "10.244.1.0/24", "192.168.56.11"),
		node("node-3", "10.244.3.0/24", "192.168.57.13"))
	h.be.SetRefused(map[string]string{"node-3": "192.168.57.13 is not in 192.168.56.0/24"})
	h.start()
	h.ready()
	events := func() []corev1.Event {
		l, err := h.client.CoreV1().Events("").List(t.Context(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var out []corev1.Event
		for _, e := range l.Items {
			if e.Reason == "RemoteNodeRefused" {
				out = append(out, e)
			}
		}
		return out
	}
	eventually(t, "a RemoteNodeRefused event", func() (bool, string) {
		ev := events()
		return len(ev) == 1, fmtAny(ev)
	})
	e := events()[0]
	if e.Type != corev1.EventTypeWarning || e.InvolvedObject.Kind != "Node" || e.InvolvedObject.Name != selfName ||
		!strings.Contains(e.Message, "node node-3") || !strings.Contains(e.Message, "192.168.57.13 is not in 192.168.56.0/24") {
		t.Errorf("event %+v: want a Warning on Node %s naming node-3 and the reason", e, selfName)
	}
	syncs := len(h.be.Syncs())
	eventually(t, "more syncs", func() (bool, string) { return len(h.be.Syncs()) >= syncs+2, fmtAny(len(h.be.Syncs())) })
	if ev := events(); len(ev) != 1 || ev[0].Count > 1 {
		t.Errorf("the same refusal was reported again on later syncs: %s", fmtAny(ev))
	}
	h.be.SetRefused(map[string]string{"node-3": "it has not published a VTEP MAC yet"})
	h.update("node-3", func(n *corev1.Node) { n.Labels = map[string]string{"poke": "1"} })
	eventually(t, "a second event for the new reason", func() (bool, string) {
		ev := events()
		return len(ev) == 2, fmtAny(ev)
	})
}

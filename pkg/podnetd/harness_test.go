package podnetd_test

// The harness runs the real agent loop on fakes: a fake clientset with Node
// objects (k8s.io/client-go/kubernetes/fake), backend.Fake, a knftables
// Fake bound to the masquerade table, and an underlay lookup that answers
// without netlink. Nothing here touches the kernel, as root or not.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"sigs.k8s.io/knftables"

	"github.com/podnet/podnet/pkg/backend"
	"github.com/podnet/podnet/pkg/masq"
	"github.com/podnet/podnet/pkg/netconf"
	"github.com/podnet/podnet/pkg/podnetd"
)

const (
	selfName = "node-1"
	// timeout bounds every wait for the agent; a passing wait takes
	// milliseconds (events) or a few retry delays.
	timeout = 3 * time.Second
)

// facts are what the fake backend publishes, as vxlan would.
var facts = backend.Facts{MTU: 1450, Annotations: map[string]string{
	backend.AnnotationBackend:  "vxlan",
	backend.AnnotationVTEPMAC:  "0a:58:c0:a8:38:0b",
	backend.AnnotationPublicIP: "192.168.56.11",
}}

var segment = netip.MustParsePrefix("192.168.56.0/24")

type harness struct {
	t      *testing.T
	cfg    podnetd.Config
	retry  time.Duration
	client *fake.Clientset
	be     *backend.Fake
	nft    *knftables.Fake
	reg    *prometheus.Registry
	logs   *logBuffer
	agent  *podnetd.Agent
	opts   []podnetd.Option // more options for New

	watching  chan struct{} // closed when the informer's first watch is established
	watchOnce sync.Once

	mu       sync.Mutex
	underlay []netip.Addr      // the addresses the agent looked up
	watches  []watch.Interface // every watch the informer opened
	outage   bool              // the "API server" answers nothing about nodes
	refusals int               // requests refused during outages
}

func newHarness(t *testing.T, nodes ...*corev1.Node) *harness {
	t.Helper()
	objs := make([]runtime.Object, len(nodes))
	for i, n := range nodes {
		objs[i] = n
	}
	h := &harness{
		t: t,
		cfg: podnetd.Config{NodeName: selfName, Backend: "vxlan", CNIConfDir: filepath.Join(t.TempDir(), "net.d"),
			PodnetDataDir: "/var/lib/cni/podnet", ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
			Resync: 2 * time.Second},
		retry:    20 * time.Millisecond,
		client:   fake.NewClientset(objs...),
		be:       backend.NewFake(facts),
		nft:      knftables.NewFake(masq.Family, masq.TableName),
		reg:      prometheus.NewRegistry(),
		logs:     &logBuffer{},
		watching: make(chan struct{}),
	}
	h.client.PrependReactor("*", "nodes", func(clienttesting.Action) (bool, runtime.Object, error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.outage {
			h.refusals++
			return true, nil, apierrors.NewServiceUnavailable("the API server is down (test)")
		}
		return false, nil, nil
	})
	// The fake tracker does not replay events from a resourceVersion:
	// anything written between the informer's list and its watch is lost,
	// so tests that write wait for the watch (h.watching).
	h.client.PrependWatchReactor("nodes", func(action clienttesting.Action) (bool, watch.Interface, error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.outage {
			h.refusals++
			return true, nil, apierrors.NewServiceUnavailable("the API server is down (test)")
		}
		var opts metav1.ListOptions
		if w, ok := action.(clienttesting.WatchActionImpl); ok {
			opts = w.ListOptions
		}
		w, err := h.client.Tracker().Watch(action.GetResource(), action.GetNamespace(), opts)
		if err != nil {
			return true, nil, err
		}
		h.watches = append(h.watches, w)
		h.watchOnce.Do(func() { close(h.watching) })
		return true, w, nil
	})
	return h
}

// start runs the agent until the test ends.
func (h *harness) start() { h.startOn(h.client) }

// startOn runs the agent on client (h.client, or a wrapper of it) until
// the test ends.
func (h *harness) startOn(client kubernetes.Interface) {
	t := h.t
	t.Helper()
	h.cfg.Metrics = h.reg
	h.cfg.Log = slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	under := func(ip netip.Addr) (string, netip.Prefix, error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.underlay = append(h.underlay, ip)
		return "eth1", segment, nil
	}
	a, err := podnetd.New(h.cfg, client, append([]podnetd.Option{podnetd.WithBackend(h.be), podnetd.WithNFTables(h.nft),
		podnetd.WithUnderlay(under), podnetd.WithRetryDelay(h.retry)}, h.opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.agent = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(timeout):
			t.Errorf("Run did not return %s after its context ended", timeout)
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", h.logs.String())
		}
	})
	// Run must not give up on its own (as it did on a failed annotate).
	t.Cleanup(func() {
		select {
		case err := <-done:
			t.Errorf("Run returned before the test ended: %v", err)
			done <- err
		default:
		}
	})
}

// waitWatching waits until the informer watches Nodes: from then on a
// write through the client reaches the agent.
func (h *harness) waitWatching() {
	h.t.Helper()
	select {
	case <-h.watching:
	case <-time.After(timeout):
		h.t.Fatal("the agent's informer never watched Nodes")
	}
}

// ready waits until the agent has set up this node and published it.
func (h *harness) ready() {
	h.t.Helper()
	eventually(h.t, "this node published (annotations, NetworkUnavailable=False)", func() (bool, string) {
		n := h.node(selfName)
		return hasFacts(n) && networkAvailable(n), describe(n)
	})
}

// setOutage makes the fake API server refuse every request about nodes,
// and ends the watches it had open (as a dead server's connections end).
func (h *harness) setOutage(on bool) {
	h.mu.Lock()
	h.outage = on
	var ws []watch.Interface
	if on {
		ws, h.watches = h.watches, nil
	}
	h.mu.Unlock()
	for _, w := range ws {
		w.Stop()
	}
}

func (h *harness) refused() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.refusals
}

func (h *harness) underlayCalls() []netip.Addr {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]netip.Addr(nil), h.underlay...)
}

// node reads a Node from the fake API server (nil if there is none).
func (h *harness) node(name string) *corev1.Node {
	h.t.Helper()
	n, err := h.client.Tracker().Get(corev1.SchemeGroupVersion.WithResource("nodes"), "", name)
	if apierrors.IsNotFound(err) {
		return nil
	} else if err != nil {
		h.t.Fatalf("get node %s: %v", name, err)
	}
	return n.(*corev1.Node)
}

// update changes a Node through the client, as another component would.
func (h *harness) update(name string, change func(*corev1.Node)) {
	h.t.Helper()
	n := h.node(name)
	if n == nil {
		h.t.Fatalf("update node %s: no such node", name)
	}
	n = n.DeepCopy()
	change(n)
	if _, err := h.client.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		h.t.Fatalf("update node %s: %v", name, err)
	}
}

// lastSync is the last call of the backend's Sync (ok false if none).
func (h *harness) lastSync() (backend.FakeSync, bool) {
	s := h.be.Syncs()
	if len(s) == 0 {
		return backend.FakeSync{}, false
	}
	return s[len(s)-1], true
}

// syncedNodes says whether the last Sync got exactly these remote nodes.
func (h *harness) syncedNodes(want ...string) (bool, string) {
	s, ok := h.lastSync()
	if !ok {
		return false, "no Sync yet"
	}
	got := remoteNames(s.Remotes)
	return strings.Join(got, ",") == strings.Join(want, ","), "last Sync: " + strings.Join(got, ",")
}

func remoteNames(rs []backend.Remote) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, r.Node)
	}
	return out
}

// node returns a Node with a pod subnet and an InternalIP (either may be
// empty), as node IPAM and kubelet leave it.
func node(name, cidr, ip string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if cidr != "" {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = cidr, []string{cidr}
	}
	if ip != "" {
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: name}, {Type: corev1.NodeInternalIP, Address: ip}}
	}
	return n
}

// vtep gives n the annotation of its VXLAN device's MAC.
func vtep(n *corev1.Node, mac string) *corev1.Node {
	n.Annotations = map[string]string{backend.AnnotationVTEPMAC: mac}
	return n
}

func hasFacts(n *corev1.Node) bool {
	if n == nil {
		return false
	}
	for k, v := range facts.Annotations {
		if n.Annotations[k] != v {
			return false
		}
	}
	return true
}

func networkAvailable(n *corev1.Node) bool {
	if n == nil {
		return false
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable {
			return c.Status == corev1.ConditionFalse && c.Reason == "PodnetIsUp"
		}
	}
	return false
}

func describe(n *corev1.Node) string {
	if n == nil {
		return "no node"
	}
	b, _ := json.Marshal(map[string]any{"annotations": n.Annotations, "conditions": n.Status.Conditions, "podCIDR": n.Spec.PodCIDR})
	return string(b)
}

// conflist is what the agent wrote for the CNI plugin.
type conflist struct {
	Plugins []struct {
		Type string `json:"type"`
		MTU  int    `json:"mtu"`
		IPAM struct {
			Ranges [][]struct {
				Subnet string `json:"subnet"`
			} `json:"ranges"`
		} `json:"ipam"`
	} `json:"plugins"`
}

// readConflist returns the subnet and MTU of the podnet plugin in the
// conflist in dir ("" and 0 if there is none).
func readConflist(t *testing.T, dir string) (string, int) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, netconf.ConflistName))
	if errors.Is(err, os.ErrNotExist) {
		return "", 0
	} else if err != nil {
		t.Fatal(err)
	}
	var c conflist
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("conflist: %v\n%s", err, b)
	}
	for _, p := range c.Plugins {
		if p.Type == "podnet" && len(p.IPAM.Ranges) == 1 && len(p.IPAM.Ranges[0]) == 1 {
			return p.IPAM.Ranges[0][0].Subnet, p.MTU
		}
	}
	t.Fatalf("conflist has no podnet plugin with one range:\n%s", b)
	return "", 0
}

// eventually polls cond until it holds, failing the test at the deadline
// with cond's description of what it saw last.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	eventuallyWithin(t, timeout, what, cond)
}

func eventuallyWithin(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, got := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s, still not %s; got %s", d, what, got)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// consistently checks cond during d (the agent must not do something
// while it waits), failing the test the moment it does not hold.
func consistently(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if ok, got := cond(); !ok {
			t.Fatalf("not %s; got %s", what, got)
		}
	}
}

// metric is the value of a counter or gauge in reg, summed over the
// series whose labels include the given name/value pairs.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					found = found || (l.GetName() == labels[i] && l.GetValue() == labels[i+1])
				}
				if !found {
					continue series
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
		return sum
	}
	t.Fatalf("metric %s is not registered", name)
	return 0
}

// logBuffer collects the agent's JSON log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// records returns the log records with this message.
func (l *logBuffer) records(t *testing.T, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(l.String(), "\n") {
		if line == "" {
			continue
		}
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if r["msg"] == msg {
			out = append(out, r)
		}
	}
	return out
}

package podnetd_test

// The wiring of the Service proxy into podnetd (services.go, run.go, the
// Config fields ServiceProxy, ProxyOnly and NodePortAddresses, and
// Agent.Healthy), on the fakes of proxy_test.go: what the proxy's table (a
// knftables Fake), the conntrack cleaner and the health-check node ports
// get from the Services, EndpointSlices and Node in the fake API, and when.
// The rules themselves are package proxy's business (and tests): here the
// table is read only through its dispatch maps and sets, and the endpoint
// pick maps.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	typeddiscoveryv1 "k8s.io/client-go/kubernetes/typed/discovery/v1"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/knftables"

	"github.com/podnet/podnet/pkg/backend"
	"github.com/podnet/podnet/pkg/podnetd"
	"github.com/podnet/podnet/pkg/proxy"
)

// waitWatches waits until the informers of Nodes, Services and
// EndpointSlices all watch: from then on every write reaches the agent.
func (h *proxyHarness) waitWatches() {
	h.t.Helper()
	h.waitWatching()
	for res, ch := range h.watched {
		select {
		case <-ch:
		case <-time.After(timeout):
			h.t.Fatalf("the agent never watched %s", res)
		}
	}
}

// settle lets the passes of the start run out (the informers notify their
// first objects after they report synced, and each notification wakes
// the proxy up), so that only the next change's own event can bring it to
// the table.
func (h *proxyHarness) settle() {
	h.t.Helper()
	before := h.table().String()
	consistently(h.t, 300*time.Millisecond, "the table settled", func() (bool, string) {
		now := h.table().String()
		return now == before, now
	})
}

// table is what the proxy's table holds, in the terms these tests use.
type table struct {
	ServiceIPs, NodePorts, Rejected, NodePortIPs, Endpoints []string
}

func (h *proxyHarness) table() table {
	return table{ServiceIPs: h.pnft.keys("map", "service-ips"), NodePorts: h.pnft.keys("map", "service-nodeports"),
		Rejected: h.pnft.keys("map", "no-endpoint-services"), NodePortIPs: h.pnft.keys("set", "nodeport-ips"),
		Endpoints: pickedEndpoints(h.pnft)}
}

func (tb table) String() string {
	return fmt.Sprintf("service-ips %v, service-nodeports %v, no-endpoint-services %v, nodeport-ips %v, endpoints %v",
		tb.ServiceIPs, tb.NodePorts, tb.Rejected, tb.NodePortIPs, tb.Endpoints)
}

// pickedEndpoints are the endpoints ("ip . port") in the pick maps, where
// the Services' chains choose theirs, sorted.
func pickedEndpoints(l *lockedNFT) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	if l.Fake.Table == nil {
		return out
	}
	for name, m := range l.Fake.Table.Maps {
		if !strings.HasPrefix(name, "pick-") {
			continue
		}
		for _, e := range m.Elements {
			out = append(out, strings.Join(e.Value, " . "))
		}
	}
	slices.Sort(out)
	return out
}

// probeNFT counts the proxy's transactions, fails them while told to, and
// remembers every key no-endpoint-services ever held after one.
type probeNFT struct {
	*lockedNFT
	mu       sync.Mutex
	runs     int
	fail     error
	rejected map[string]bool
}

func (p *probeNFT) Run(ctx context.Context, tx *knftables.Transaction) error {
	p.mu.Lock()
	p.runs++
	fail := p.fail
	p.mu.Unlock()
	if fail != nil {
		return fail
	}
	err := p.lockedNFT.Run(ctx, tx)
	rejected := p.keys("map", "no-endpoint-services")
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rejected == nil {
		p.rejected = map[string]bool{}
	}
	for _, k := range rejected {
		p.rejected[k] = true
	}
	return err
}

func (p *probeNFT) setFail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fail = err
}

func (p *probeNFT) stats() (runs int, everRejected []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.runs, slices.Sorted(maps.Keys(p.rejected))
}

// healthRecorder records every SyncServices call.
type healthRecorder struct {
	mu    sync.Mutex
	calls int
	last  map[uint16]proxy.HealthService
}

func (r *healthRecorder) SyncServices(m map[uint16]proxy.HealthService) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	r.last = maps.Clone(m)
	return nil
}

func (r *healthRecorder) state() (int, map[uint16]proxy.HealthService) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls, maps.Clone(r.last)
}

// put creates or updates o through the client, as its controller would.
func (h *proxyHarness) put(o runtime.Object) {
	h.t.Helper()
	ctx := context.Background()
	var err error
	switch o := o.(type) {
	case *corev1.Service:
		if _, err = h.client.CoreV1().Services(o.Namespace).Update(ctx, o, metav1.UpdateOptions{}); apierrors.IsNotFound(err) {
			_, err = h.client.CoreV1().Services(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		}
	case *discoveryv1.EndpointSlice:
		if _, err = h.client.DiscoveryV1().EndpointSlices(o.Namespace).Update(ctx, o, metav1.UpdateOptions{}); apierrors.IsNotFound(err) {
			_, err = h.client.DiscoveryV1().EndpointSlices(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		}
	case *corev1.Node:
		if _, err = h.client.CoreV1().Nodes().Update(ctx, o, metav1.UpdateOptions{}); apierrors.IsNotFound(err) {
			_, err = h.client.CoreV1().Nodes().Create(ctx, o, metav1.CreateOptions{})
		}
	default:
		h.t.Fatalf("put %T", o)
	}
	if err != nil {
		h.t.Fatalf("put %T: %v", o, err)
	}
}

func (h *proxyHarness) deleteService(name string) {
	h.t.Helper()
	if err := h.client.CoreV1().Services("default").Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *proxyHarness) deleteSlice(name string) {
	h.t.Helper()
	if err := h.client.DiscoveryV1().EndpointSlices("default").Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

// setNode replaces this node's Node in the fake API before the agent
// starts (nil: no Node at all).
func (h *proxyHarness) setNode(n *corev1.Node) {
	h.t.Helper()
	gvr := corev1.SchemeGroupVersion.WithResource("nodes")
	if err := h.client.Tracker().Delete(gvr, "", selfName); err != nil {
		h.t.Fatal(err)
	}
	if n != nil {
		if err := h.client.Tracker().Add(n); err != nil {
			h.t.Fatal(err)
		}
	}
}

// publishedNode is this node as the network part leaves it (its facts
// published, NetworkUnavailable=False): the agent writes it no more, so no
// event of its Node wakes the proxy up, and a test sees which events do.
func publishedNode() *corev1.Node {
	n := node(selfName, "10.244.1.0/24", "192.168.56.11")
	n.Annotations = maps.Clone(facts.Annotations)
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse, Reason: "PodnetIsUp"}}
	return n
}

func labelled(kv ...string) func(metav1.Object) {
	return func(o metav1.Object) {
		l := map[string]string{}
		maps.Copy(l, o.GetLabels())
		for i := 0; i+1 < len(kv); i += 2 {
			l[kv[i]] = kv[i+1]
		}
		o.SetLabels(l)
	}
}

func withLabels[T metav1.Object](o T, edit func(metav1.Object)) T { edit(o); return o }

// tcp is one TCP Service port named http, as epSlice's slices have.
func tcp(port int32) corev1.ServicePort {
	return corev1.ServicePort{Name: "http", Port: port, Protocol: corev1.ProtocolTCP}
}

// Services and their EndpointSlices reach the table: those there at
// start, and every later change (endpoints changed, a Service added, one
// deleted, a slice deleted) by its event, not by the resync.
func TestServicesFollowTheAPI(t *testing.T) {
	t.Parallel()
	h := newProxyHarness(t, svc("web", "10.96.0.20", nil), epSlice("web", corev1.ProtocolTCP, "10.244.2.5@node-2"))
	h.setNode(publishedNode())
	h.cfg.Resync = time.Minute // no resync, no Node written: the Services' events carry every change
	h.start()
	eventually(t, "web with its endpoint", func() (bool, string) {
		tb := h.table()
		return slices.Equal(tb.ServiceIPs, []string{"10.96.0.20 . tcp . 80"}) && slices.Equal(tb.Endpoints, []string{"10.244.2.5 . 8080"}) &&
			len(tb.Rejected) == 0, tb.String()
	})

	h.waitWatches()
	h.settle()
	h.put(epSlice("web", corev1.ProtocolTCP, "10.244.2.7@node-2")) // 10.244.2.5 replaced
	eventually(t, "web's new endpoint, and only it", func() (bool, string) {
		tb := h.table()
		return slices.Equal(tb.Endpoints, []string{"10.244.2.7 . 8080"}), tb.String()
	})

	h.put(svc("api", "10.96.0.21", nil, tcp(443)))
	h.put(epSlice("api", corev1.ProtocolTCP, "10.244.3.4@node-3"))
	eventually(t, "api added beside web", func() (bool, string) {
		tb := h.table()
		return slices.Equal(tb.ServiceIPs, []string{"10.96.0.20 . tcp . 80", "10.96.0.21 . tcp . 443"}) &&
			slices.Equal(tb.Endpoints, []string{"10.244.2.7 . 8080", "10.244.3.4 . 8080"}), tb.String()
	})

	// The Service goes first; its slice lingers until the garbage
	// collector comes (never, here): nothing of web may stay.
	h.deleteService("web")
	eventually(t, "web gone, slice or not", func() (bool, string) {
		tb := h.table()
		return slices.Equal(tb.ServiceIPs, []string{"10.96.0.21 . tcp . 443"}) && slices.Equal(tb.Endpoints, []string{"10.244.3.4 . 8080"}) &&
			len(tb.Rejected) == 0, tb.String()
	})

	h.deleteSlice("api-1")
	eventually(t, "api without endpoints: rejected, not forwarded", func() (bool, string) {
		tb := h.table()
		return len(tb.ServiceIPs) == 0 && len(tb.Endpoints) == 0 && slices.Equal(tb.Rejected, []string{"10.96.0.21 . tcp . 443"}), tb.String()
	})
}

// kube-proxy's label filter, on both informers: a Service another proxy
// implements (service.kubernetes.io/service-proxy-name) or labelled
// headless is not programmed, and neither is a slice so labelled; headless
// Services (clusterIP None) are not either.
func TestServicesKubeProxyLabelFilter(t *testing.T) {
	t.Parallel()
	otherProxy := labelled(podnetd.LabelServiceProxyName, "other")
	headless := labelled(podnetd.LabelHeadless, "")
	h := newProxyHarness(t,
		svc("mine", "10.96.0.30", nil), epSlice("mine", corev1.ProtocolTCP, "10.244.2.1"),
		// The endpointslice controller copies a Service's labels to its slices.
		withLabels(svc("other", "10.96.0.31", nil), otherProxy), withLabels(epSlice("other", corev1.ProtocolTCP, "10.244.2.2"), otherProxy),
		withLabels(svc("tagged", "10.96.0.32", nil), headless), withLabels(epSlice("tagged", corev1.ProtocolTCP, "10.244.2.3"), headless),
		svc("hl", corev1.ClusterIPNone, func(s *corev1.Service) { s.Spec.ClusterIPs = nil }),
		withLabels(epSlice("hl", corev1.ProtocolTCP, "10.244.2.4"), headless),
		// A slice of podnet's Service that another proxy's label hides
		// (kube-proxy ignores it too): the Service has no endpoints.
		svc("split", "10.96.0.33", nil), withLabels(epSlice("split", corev1.ProtocolTCP, "10.244.2.5"), otherProxy),
	)
	h.start()
	eventually(t, "mine programmed, split rejected, nothing else", func() (bool, string) {
		tb := h.table()
		return slices.Equal(tb.ServiceIPs, []string{"10.96.0.30 . tcp . 80"}) && slices.Equal(tb.Endpoints, []string{"10.244.2.1 . 8080"}) &&
			slices.Equal(tb.Rejected, []string{"10.96.0.33 . tcp . 80"}), tb.String()
	})
	consistently(t, 200*time.Millisecond, "still nothing of other, tagged or hl", func() (bool, string) {
		tb := h.table()
		return len(tb.ServiceIPs) == 1 && len(tb.Endpoints) == 1 && len(tb.Rejected) == 1, tb.String()
	})

	// The filter is in every list and watch the proxy's informers make, so
	// that the API server sends nothing of the others (and sends a
	// deletion when an object gains a label).
	seen := map[string]bool{}
	for _, a := range h.client.Actions() {
		res := a.GetResource().Resource
		if res != "services" && res != "endpointslices" {
			continue
		}
		var sel labels.Selector
		switch a := a.(type) {
		case clienttesting.ListAction:
			sel = a.GetListRestrictions().Labels
		case clienttesting.WatchAction:
			sel = a.GetWatchRestrictions().Labels
		default:
			continue
		}
		seen[a.GetVerb()+" "+res] = true
		if sel == nil || !sel.Matches(labels.Set{discoveryv1.LabelServiceName: "mine"}) ||
			sel.Matches(labels.Set{podnetd.LabelServiceProxyName: "other"}) || sel.Matches(labels.Set{podnetd.LabelHeadless: ""}) {
			t.Errorf("%s %s with label selector %v, want kube-proxy's: no %s, no %s", a.GetVerb(), res, sel,
				podnetd.LabelServiceProxyName, podnetd.LabelHeadless)
		}
	}
	for _, want := range []string{"list services", "watch services", "list endpointslices", "watch endpointslices"} {
		if !seen[want] {
			t.Errorf("no %s by the agent; saw %v", want, seen)
		}
	}
}

// gatedClient is the fake clientset whose EndpointSlice lists wait for
// open to close (or their context to end): a slow API server, without
// holding the fake's lock as a blocking reactor would.
type gatedClient struct {
	*fake.Clientset
	open    chan struct{}
	entered chan struct{} // closed at the first List
	once    sync.Once
}

func (c *gatedClient) DiscoveryV1() typeddiscoveryv1.DiscoveryV1Interface {
	return gatedDiscovery{c.Clientset.DiscoveryV1(), c}
}

type gatedDiscovery struct {
	typeddiscoveryv1.DiscoveryV1Interface
	c *gatedClient
}

func (d gatedDiscovery) EndpointSlices(ns string) typeddiscoveryv1.EndpointSliceInterface {
	return gatedSlices{d.DiscoveryV1Interface.EndpointSlices(ns), d.c}
}

type gatedSlices struct {
	typeddiscoveryv1.EndpointSliceInterface
	c *gatedClient
}

func (s gatedSlices) List(ctx context.Context, opts metav1.ListOptions) (*discoveryv1.EndpointSliceList, error) {
	s.c.once.Do(func() { close(s.c.entered) })
	select {
	case <-s.c.open:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return s.EndpointSliceInterface.List(ctx, opts)
}

// Nothing is written to the proxy's table before every informer has
// synced: while the EndpointSlices are still being listed (Nodes and
// Services long synced), a sync would reject every Service. Once the
// list answers, the first write already has the endpoints.
func TestServicesWaitForEveryInformer(t *testing.T) {
	t.Parallel()
	h := newProxyHarness(t, svc("web", "10.96.0.20", nil), epSlice("web", corev1.ProtocolTCP, "10.244.2.5@node-2"))
	gc := &gatedClient{Clientset: h.client, open: make(chan struct{}), entered: make(chan struct{})}
	h.startOn(gc)
	var once sync.Once
	release := func() { once.Do(func() { close(gc.open) }) }
	t.Cleanup(release) // before the agent's cleanup (LIFO): its informers must stop
	select {
	case <-gc.entered:
	case <-time.After(timeout):
		t.Fatal("the agent never listed EndpointSlices")
	}
	h.waitWatching()
	select {
	case <-h.watched["services"]:
	case <-time.After(timeout):
		t.Fatal("the agent never watched Services")
	}
	consistently(t, 400*time.Millisecond, "no proxy table while the EndpointSlices are being listed", func() (bool, string) {
		tables, _ := h.pnft.ListAll(context.Background())
		runs, _ := h.probe.stats()
		calls, _ := h.hc.state()
		return len(tables) == 0 && runs == 0 && calls == 0 && len(h.ct.Filters()) == 0,
			fmt.Sprintf("tables %v, %d transactions, %d health syncs, conntrack %v", tables, runs, calls, h.ct.Filters())
	})
	if err := h.agent.Healthy(); err == nil || !strings.Contains(err.Error(), "service proxy:") {
		t.Errorf("Healthy before the proxy synced: %v, want the service proxy unhealthy", err)
	}

	release()
	eventually(t, "web programmed with its endpoint", func() (bool, string) {
		tb := h.table()
		return slices.Equal(tb.ServiceIPs, []string{"10.96.0.20 . tcp . 80"}) && slices.Equal(tb.Endpoints, []string{"10.244.2.5 . 8080"}), tb.String()
	})
	if _, rejected := h.probe.stats(); len(rejected) != 0 {
		t.Errorf("no-endpoint-services held %v at some point: a sync ran before the EndpointSlices were listed", rejected)
	}
}

// ProxyOnly: the Service proxy alone. No backend, no CNI config, no
// masquerade, no Node written, no Event; healthy without the network. It
// needs no backend at all, and is refused without the proxy.
func TestServicesProxyOnlyTouchesNoNetwork(t *testing.T) {
	t.Parallel()
	h := newProxyHarness(t, svc("web", "10.96.0.20", nil), epSlice("web", corev1.ProtocolTCP, "10.244.2.5@node-2"))
	h.cfg.ProxyOnly = true
	h.start()
	eventually(t, "web programmed, and the agent healthy with no network part", func() (bool, string) {
		tb, err := h.table(), h.agent.Healthy()
		return slices.Equal(tb.ServiceIPs, []string{"10.96.0.20 . tcp . 80"}) && err == nil, fmt.Sprint(tb, " healthy: ", errString(err))
	})
	writes := func() []string {
		var out []string
		for _, a := range h.client.Actions() {
			res, verb := a.GetResource().Resource, a.GetVerb()
			if res == "events" || (res == "nodes" && verb != "list" && verb != "watch" && verb != "get") {
				out = append(out, verb+" "+res+"/"+a.GetSubresource())
			}
		}
		return out
	}
	consistently(t, 300*time.Millisecond, "nothing of the network done", func() (bool, string) {
		subnet, _ := readConflist(t, h.cfg.CNIConfDir)
		masq, _ := h.nft.ListAll(context.Background())
		w := writes()
		return len(h.be.Setups()) == 0 && len(h.be.Syncs()) == 0 && subnet == "" && len(masq) == 0 && len(w) == 0 && len(h.underlayCalls()) == 0,
			fmtAny(map[string]any{"setups": h.be.Setups(), "syncs": h.be.Syncs(), "conflist": subnet, "masq": masq, "api writes": w})
	})
	if n := h.node(selfName); hasFacts(n) || networkAvailable(n) {
		t.Errorf("this Node was published: %s", describe(n))
	}

	// --run-network=false needs no backend; the proxy off too is nothing.
	if _, err := podnetd.New(podnetd.Config{NodeName: selfName, ServiceProxy: true, ProxyOnly: true, Backend: "no-such-backend"}, h.client); err != nil {
		t.Errorf("New, proxy only, with a backend that does not exist: %v", err)
	}
	if _, err := podnetd.New(podnetd.Config{NodeName: selfName, Backend: "vxlan", ProxyOnly: true}, h.client); err == nil {
		t.Error("New with ProxyOnly and the Service proxy off: no error")
	}
}

// The proxy off (the default Config): no transaction on its table, no
// conntrack or health-check call, no Service or EndpointSlice informer
// (a cluster that runs kube-proxy grants podnetd no access to them).
func TestServicesProxyOffTouchesNothing(t *testing.T) {
	t.Parallel()
	h := newProxyHarness(t, svc("web", "10.96.0.20", nil), epSlice("web", corev1.ProtocolTCP, "10.244.2.5@node-2"))
	h.cfg.ServiceProxy, h.cfg.NodePortAddresses = false, nil
	h.start()
	h.ready()
	consistently(t, 300*time.Millisecond, "the proxy untouched", func() (bool, string) {
		runs, _ := h.probe.stats()
		calls, _ := h.hc.state()
		tables, _ := h.pnft.ListAll(context.Background())
		return runs == 0 && calls == 0 && len(tables) == 0 && len(h.ct.Filters()) == 0,
			fmt.Sprintf("%d transactions, tables %v, %d health syncs, conntrack %v", runs, tables, calls, h.ct.Filters())
	})
	for _, a := range h.client.Actions() {
		if res := a.GetResource().Resource; res == "services" || res == "endpointslices" {
			t.Errorf("the agent without its proxy did %s %s", a.GetVerb(), res)
		}
	}
	if err := h.agent.Healthy(); err != nil {
		t.Errorf("Healthy, network synced and no proxy: %v", err)
	}
}

// Agent.Healthy combines the parts that run, each named: the network
// waiting while the proxy synced; the proxy failing while the network
// synced; healthy once both did. A failed proxy sync is retried on its
// own (no event, no resync here).
func TestServicesHealthyCombinesParts(t *testing.T) {
	t.Parallel()
	healthy := func(h *proxyHarness, network, proxy bool) (bool, string) {
		err := h.agent.Healthy()
		if err == nil {
			return network && proxy, "<nil>"
		}
		s := err.Error()
		return strings.Contains(s, "network:") != network && strings.Contains(s, "service proxy:") != proxy, s
	}
	t.Run("network waiting", func(t *testing.T) {
		t.Parallel()
		h := newProxyHarness(t, svc("web", "10.96.0.20", nil), epSlice("web", corev1.ProtocolTCP, "10.244.2.5@node-2"))
		h.setNode(node(selfName, "", "192.168.56.11")) // no pod subnet yet
		h.start()
		eventually(t, "the proxy synced, the network not: unhealthy, network only", func() (bool, string) {
			ok, s := healthy(h, false, true)
			return ok && len(h.table().ServiceIPs) == 1, s
		})
		h.waitWatches()
		h.update(selfName, func(n *corev1.Node) { n.Spec.PodCIDR, n.Spec.PodCIDRs = "10.244.1.0/24", []string{"10.244.1.0/24"} })
		eventually(t, "healthy, both parts synced", func() (bool, string) { return healthy(h, true, true) })
	})
	t.Run("proxy failing", func(t *testing.T) {
		t.Parallel()
		h := newProxyHarness(t, svc("web", "10.96.0.20", nil), epSlice("web", corev1.ProtocolTCP, "10.244.2.5@node-2"))
		h.cfg.Resync = time.Minute
		h.setNode(publishedNode()) // no Node event: only the retries bring the proxy back
		h.probe.setFail(errors.New("nft: operation not permitted (test)"))
		h.start()
		h.ready()
		// The start wakes the proxy up twice at most (the informers' first
		// notifications); the transactions that follow are the retries.
		eventually(t, "the network synced, the proxy failing and retried: unhealthy, proxy only", func() (bool, string) {
			runs, _ := h.probe.stats()
			ok, s := healthy(h, true, false)
			return ok && runs >= 8, fmt.Sprintf("%s (%d transactions)", s, runs)
		})
		h.probe.setFail(nil)
		eventually(t, "retried until programmed, and healthy", func() (bool, string) {
			ok, s := healthy(h, true, true)
			tb := h.table()
			return ok && slices.Equal(tb.ServiceIPs, []string{"10.96.0.20 . tcp . 80"}), s + " " + tb.String()
		})
	})
}

// The node facts the proxy reads from this node's Node: NodePorts
// answer on its InternalIP and ExternalIP inside NodePortAddresses (and
// on nothing while there is no Node: ClusterIPs work meanwhile); its pod
// subnet and the cluster's pod networks from the Config; every change of
// the Node reaches the table by its event.
func TestServicesNodeFacts(t *testing.T) {
	t.Parallel()
	np := svc("np", "10.96.0.40", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort },
		corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, NodePort: 30080})
	h := newProxyHarness(t, np, epSlice("np", corev1.ProtocolTCP, "10.244.2.5@node-2"))
	h.setNode(nil) // not registered yet
	h.cfg.Resync = time.Minute
	h.cfg.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.168.56.0/24"), netip.MustParsePrefix("198.51.100.0/24")}
	h.start()
	eventually(t, "np's ClusterIP and NodePort, on no node address yet", func() (bool, string) {
		tb := h.table()
		return slices.Equal(tb.ServiceIPs, []string{"10.96.0.40 . tcp . 80"}) && slices.Equal(tb.NodePorts, []string{"tcp . 30080"}) &&
			len(tb.NodePortIPs) == 0, tb.String()
	})
	if got := h.pnft.keys("set", "cluster-cidrs"); !slices.Equal(got, []string{"10.244.0.0/16"}) {
		t.Errorf("cluster-cidrs %v, want the Config's [10.244.0.0/16]", got)
	}

	h.waitWatches()
	h.settle()
	self := node(selfName, "10.244.1.0/24", "192.168.56.11")
	self.Status.Addresses = append(self.Status.Addresses,
		corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "198.51.100.11"},
		corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.11"}) // outside NodePortAddresses
	h.put(self)
	eventually(t, "NodePorts on the Node's addresses inside NodePortAddresses, and its pod subnet", func() (bool, string) {
		tb, pods := h.table(), h.pnft.keys("set", "pod-cidrs")
		return slices.Equal(tb.NodePortIPs, []string{"192.168.56.11", "198.51.100.11"}) && slices.Equal(pods, []string{"10.244.1.0/24"}),
			fmt.Sprint(tb, " pod-cidrs ", pods)
	})

	h.update(selfName, func(n *corev1.Node) { n.Status.Addresses[1].Address = "192.168.56.21" }) // the InternalIP
	eventually(t, "the NodePorts on the new InternalIP", func() (bool, string) {
		tb := h.table()
		return slices.Equal(tb.NodePortIPs, []string{"192.168.56.21", "198.51.100.11"}) && slices.Equal(tb.NodePorts, []string{"tcp . 30080"}), tb.String()
	})
}

// UDP endpoints removed: the flows DNATed to them are cleared, on the
// ClusterIP and on the NodePort; a UDP Service that gets its first
// endpoint: the flows never DNATed to it are cleared. Nothing for an
// endpoint still in use, nothing for TCP.
func TestServicesUDPConntrack(t *testing.T) {
	t.Parallel()
	dns := svc("dns", "10.96.0.10", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort },
		corev1.ServicePort{Name: "http", Port: 53, Protocol: corev1.ProtocolUDP, NodePort: 30053})
	late := svc("late", "10.96.0.11", nil, corev1.ServicePort{Name: "http", Port: 53, Protocol: corev1.ProtocolUDP})
	h := newProxyHarness(t,
		dns, epSlice("dns", corev1.ProtocolUDP, "10.244.1.5@node-1", "10.244.2.5@node-2"),
		late, // no endpoint yet
		svc("web", "10.96.0.20", nil), epSlice("web", corev1.ProtocolTCP, "10.244.2.6@node-2", "10.244.2.7@node-2"))
	h.cfg.Resync = time.Minute
	h.setNode(publishedNode())
	h.start()
	eventually(t, "everything programmed", func() (bool, string) {
		tb := h.table()
		return len(tb.ServiceIPs) == 2 && slices.Equal(tb.Rejected, []string{"10.96.0.11 . udp . 53"}), tb.String()
	})
	h.waitWatches()
	before := len(h.ct.Filters())

	h.put(epSlice("dns", corev1.ProtocolUDP, "10.244.1.5@node-1"))
	h.put(epSlice("web", corev1.ProtocolTCP, "10.244.2.6@node-2"))
	h.put(epSlice("late", corev1.ProtocolUDP, "10.244.1.9@node-1"))
	gone := netip.MustParseAddrPort("10.244.2.5:8080")
	want := []proxy.FlowFilter{
		{Dst: netip.MustParseAddr("10.96.0.10"), DstPort: 53, Endpoint: gone},
		{DstPort: 30053, Endpoint: gone}, // the NodePort, on any address
		{Dst: netip.MustParseAddr("10.96.0.11"), DstPort: 53},
	}
	eventually(t, "the stale UDP flows cleared", func() (bool, string) {
		got := h.ct.Filters()[before:]
		for _, f := range want {
			if !slices.Contains(got, f) {
				return false, fmt.Sprint(got)
			}
		}
		return len(h.table().Rejected) == 0, fmt.Sprint(got)
	})
	for _, f := range h.ct.Filters()[before:] {
		if slices.Contains([]string{"10.244.1.5", "10.244.2.6", "10.244.2.7"}, f.Endpoint.Addr().String()) {
			t.Errorf("flows cleared for an endpoint in use or a TCP one: %s", f)
		}
	}
}

// The health-check node port of an externalTrafficPolicy: Local
// LoadBalancer gets its distinct local ready endpoints; a Cluster one has
// none; the count follows the endpoints (0 included), and the port goes
// with its Service.
func TestServicesHealthCheckNodePorts(t *testing.T) {
	t.Parallel()
	lbSvc := func(name, ip string, policy corev1.ServiceExternalTrafficPolicy, hc int32) *corev1.Service {
		return svc(name, ip, func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy, s.Spec.HealthCheckNodePort = policy, hc
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.50"}}
		}, corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, NodePort: 30081})
	}
	lbSlice := epSlice("lb", corev1.ProtocolTCP, "10.244.1.8@node-1", "10.244.1.9@node-1", "10.244.1.10@node-1", "10.244.2.8@node-2")
	lbSlice.Endpoints[2].Conditions.Ready = ptr.To(false) // 10.244.1.10: local, not ready
	h := newProxyHarness(t,
		lbSvc("lb", "10.96.0.30", corev1.ServiceExternalTrafficPolicyLocal, 32000), lbSlice,
		lbSvc("clb", "10.96.0.31", corev1.ServiceExternalTrafficPolicyCluster, 0), epSlice("clb", corev1.ProtocolTCP, "10.244.1.11@node-1"))
	h.cfg.Resync = time.Minute
	h.setNode(publishedNode())
	h.start()
	want := func(n int) map[uint16]proxy.HealthService {
		return map[uint16]proxy.HealthService{32000: {Namespace: "default", Name: "lb", LocalEndpoints: n}}
	}
	eventually(t, "lb's health check: 2 local ready endpoints; clb none", func() (bool, string) {
		_, got := h.hc.state()
		return maps.Equal(got, want(2)), fmt.Sprint(got)
	})

	h.waitWatches()
	h.put(epSlice("lb", corev1.ProtocolTCP, "10.244.2.8@node-2", "10.244.2.9@node-2"))
	eventually(t, "lb's health check: no local endpoint left", func() (bool, string) {
		_, got := h.hc.state()
		return maps.Equal(got, want(0)), fmt.Sprint(got)
	})
	h.deleteService("lb")
	eventually(t, "no health check once lb is gone", func() (bool, string) {
		calls, got := h.hc.state()
		return calls > 0 && got != nil && len(got) == 0, fmt.Sprint(got)
	})
}

// blockingBackend is a backend whose Sync hangs until released: a slow
// kernel or a stuck netlink call.
type blockingBackend struct {
	*backend.Fake
	release chan struct{}
	blocked chan struct{}
	once    sync.Once
}

func (b *blockingBackend) Sync(remotes []backend.Remote) (backend.Result, error) {
	b.once.Do(func() { close(b.blocked) })
	<-b.release
	return b.Fake.Sync(remotes)
}

// The two loops: a network pass that hangs delays no Service.
func TestServicesNotDelayedByTheNetwork(t *testing.T) {
	t.Parallel()
	h := newProxyHarness(t, svc("web", "10.96.0.20", nil), epSlice("web", corev1.ProtocolTCP, "10.244.2.5@node-2"))
	h.cfg.Resync = time.Minute
	h.setNode(publishedNode())
	be := &blockingBackend{Fake: h.be, release: make(chan struct{}), blocked: make(chan struct{})}
	h.opts = append(h.opts, podnetd.WithBackend(be))
	h.start()
	t.Cleanup(func() { close(be.release) }) // before the agent's cleanup (LIFO)
	select {
	case <-be.blocked:
	case <-time.After(timeout):
		t.Fatal("the network never synced the backend")
	}
	eventually(t, "web programmed while the backend hangs", func() (bool, string) {
		tb := h.table()
		return slices.Equal(tb.Endpoints, []string{"10.244.2.5 . 8080"}), tb.String()
	})
	h.waitWatches()
	h.put(epSlice("web", corev1.ProtocolTCP, "10.244.2.7@node-2"))
	eventually(t, "web's change programmed while the backend hangs", func() (bool, string) {
		tb := h.table()
		return slices.Equal(tb.Endpoints, []string{"10.244.2.7 . 8080"}), tb.String()
	})
}

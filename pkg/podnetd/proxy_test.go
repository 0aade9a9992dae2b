package podnetd_test

// The Service proxy inside the agent, on the same fakes as the network
// loop: what reaches the proxy's table (a knftables Fake bound to it) from
// Services and EndpointSlices in the fake API, and when.

import (
	"context"
	"fmt"
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
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/knftables"

	"github.com/podnet/podnet/pkg/podnetd"
	"github.com/podnet/podnet/pkg/proxy"
)

// lockedNFT is the proxy's knftables Fake, safe to read while the agent
// writes it.
type lockedNFT struct {
	mu sync.Mutex
	*knftables.Fake
}

func (l *lockedNFT) Run(ctx context.Context, tx *knftables.Transaction) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.Fake.Run(ctx, tx)
}

func (l *lockedNFT) ListAll(ctx context.Context) (map[string][]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.Fake.ListAll(ctx)
}

// keys are the keys of a map's or set's elements, each "a . b . c", sorted
// (none when the table or the object does not exist).
func (l *lockedNFT) keys(kind, name string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	els, _ := l.Fake.ListElements(context.Background(), kind, name)
	var out []string
	for _, e := range els {
		out = append(out, strings.Join(e.Key, " . "))
	}
	slices.Sort(out)
	return out
}

// fakeHealth records what the proxy tells the health-check node ports.
type fakeHealth struct {
	mu   sync.Mutex
	last map[uint16]proxy.HealthService
}

func (f *fakeHealth) SyncServices(m map[uint16]proxy.HealthService) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = m
	return nil
}

func (f *fakeHealth) get(port uint16) (proxy.HealthService, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	hs, ok := f.last[port]
	return hs, ok
}

type proxyHarness struct {
	*harness
	pnft   *lockedNFT
	ct     *proxy.FakeConntrack
	health *fakeHealth
	// sliceWatch closes when the EndpointSlice informer watches: from then
	// on a write reaches the agent (the fake tracker replays nothing).
	sliceWatch chan struct{}
}

// newProxyHarness is the agent with its Service proxy on, on node-1
// (10.244.1.0/24, 192.168.56.11), with objs in the API before it starts.
func newProxyHarness(t *testing.T, objs ...runtime.Object) *proxyHarness {
	t.Helper()
	h := &proxyHarness{harness: newHarness(t, node(selfName, "10.244.1.0/24", "192.168.56.11")),
		pnft: &lockedNFT{Fake: knftables.NewFake(proxy.IPv4.NFT, proxy.TableName)}, ct: &proxy.FakeConntrack{},
		health: &fakeHealth{}, sliceWatch: make(chan struct{})}
	for _, o := range objs {
		if err := h.client.Tracker().Add(o); err != nil {
			t.Fatal(err)
		}
	}
	var once sync.Once
	h.client.PrependWatchReactor("endpointslices", func(action clienttesting.Action) (bool, watch.Interface, error) {
		var opts metav1.ListOptions
		if w, ok := action.(clienttesting.WatchActionImpl); ok {
			opts = w.ListOptions
		}
		w, err := h.client.Tracker().Watch(action.GetResource(), action.GetNamespace(), opts)
		once.Do(func() { close(h.sliceWatch) })
		return true, w, err
	})
	h.cfg.ServiceProxy = true
	h.cfg.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.168.56.0/24")}
	h.opts = []podnetd.Option{podnetd.WithProxyNFTables(h.pnft), podnetd.WithConntrack(h.ct), podnetd.WithHealthChecks(h.health)}
	return h
}

func (h *proxyHarness) waitSliceWatch() {
	h.t.Helper()
	select {
	case <-h.sliceWatch:
	case <-time.After(timeout):
		h.t.Fatal("the agent's EndpointSlice informer never watched")
	}
}

// serviceIPs are the keys of the map service-ips.
func (h *proxyHarness) serviceIPs() []string { return h.pnft.keys("map", "service-ips") }

func svc(name, ip string, edit func(*corev1.Service), ports ...corev1.ServicePort) *corev1.Service {
	if len(ports) == 0 {
		ports = []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}
	}
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip}, Ports: ports}}
	if edit != nil {
		edit(s)
	}
	return s
}

// epSlice is the slice of Service name with one port (name "http", TCP
// 8080 unless proto says UDP) and ready endpoints: "ip" or "ip@node".
func epSlice(name string, proto corev1.Protocol, eps ...string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: name + "-1", Namespace: "default",
		Labels: map[string]string{discoveryv1.LabelServiceName: name}}, AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080)), Protocol: ptr.To(proto)}}}
	for _, e := range eps {
		ip, nodeName, _ := strings.Cut(e, "@")
		ep := discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}
		if nodeName != "" {
			ep.NodeName = ptr.To(nodeName)
		}
		s.Endpoints = append(s.Endpoints, ep)
	}
	return s
}

func TestServiceProxyProgramsServices(t *testing.T) {
	t.Parallel()
	web := svc("web", "10.96.0.20", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort },
		corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, NodePort: 30080})
	other := svc("other", "10.96.0.21", func(s *corev1.Service) { s.Labels = map[string]string{podnetd.LabelServiceProxyName: "another-proxy"} })
	headless := svc("hl", corev1.ClusterIPNone, func(s *corev1.Service) { s.Spec.ClusterIPs = nil })
	h := newProxyHarness(t, web, epSlice("web", corev1.ProtocolTCP, "10.244.2.5@node-2", "10.244.1.7@node-1"),
		other, epSlice("other", corev1.ProtocolTCP, "10.244.2.6"), headless)
	h.start()
	eventually(t, "web's ClusterIP and NodePort programmed, and nothing of the others", func() (bool, string) {
		ips, nps := h.serviceIPs(), h.pnft.keys("map", "service-nodeports")
		return slices.Equal(ips, []string{"10.96.0.20 . tcp . 80"}) && slices.Equal(nps, []string{"tcp . 30080"}),
			fmt.Sprintf("service-ips %v, service-nodeports %v", ips, nps)
	})
	// NodePorts on the node's InternalIP (from its Node) inside
	// --nodeport-addresses.
	if got := h.pnft.keys("set", "nodeport-ips"); !slices.Equal(got, []string{"192.168.56.11"}) {
		t.Errorf("nodeport-ips %v, want [192.168.56.11]", got)
	}
	eventually(t, "healthy, network and proxy", func() (bool, string) {
		err := h.agent.Healthy()
		return err == nil, errString(err)
	})

	// Changes after the informers watch: web loses its endpoints (now
	// rejected), other loses the label (now programmed).
	h.waitSliceWatch()
	ctx := context.Background()
	if err := h.client.DiscoveryV1().EndpointSlices("default").Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "web without endpoints in no-endpoint-services", func() (bool, string) {
		noEP := h.pnft.keys("map", "no-endpoint-services")
		return slices.Contains(noEP, "10.96.0.20 . tcp . 80"), fmt.Sprint(noEP)
	})
	other.Labels = nil
	if _, err := h.client.CoreV1().Services("default").Update(ctx, other, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "other programmed once it is podnet's", func() (bool, string) {
		ips := h.serviceIPs()
		return slices.Contains(ips, "10.96.0.21 . tcp . 80"), fmt.Sprint(ips)
	})
	if err := h.client.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "web gone", func() (bool, string) {
		ips, noEP := h.serviceIPs(), h.pnft.keys("map", "no-endpoint-services")
		return slices.Equal(ips, []string{"10.96.0.21 . tcp . 80"}) && len(noEP) == 0, fmt.Sprint(ips, noEP)
	})
}

// Nothing is written to the proxy's table before every informer it reads
// has synced: a sync from Services without their endpoints would reject
// every Service.
func TestServiceProxyWaitsForEveryInformer(t *testing.T) {
	t.Parallel()
	h := newProxyHarness(t, svc("web", "10.96.0.20", nil), epSlice("web", corev1.ProtocolTCP, "10.244.2.5"))
	// Refused, not blocked: a reactor that blocks holds the fake
	// clientset's lock, and every other call with it.
	var mu sync.Mutex
	refuse := true
	h.client.PrependReactor("list", "endpointslices", func(clienttesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		if refuse {
			return true, nil, apierrors.NewServiceUnavailable("not yet (test)")
		}
		return false, nil, nil // the tracker answers
	})
	h.start()
	consistently(t, 500*time.Millisecond, "no table and no backend sync while the EndpointSlices are not listed", func() (bool, string) {
		tables, _ := h.pnft.ListAll(context.Background())
		return len(tables) == 0 && len(h.be.Syncs()) == 0, fmt.Sprint(tables, h.be.Syncs())
	})
	err := h.agent.Healthy()
	if err == nil || !strings.Contains(err.Error(), "network:") || !strings.Contains(err.Error(), "service proxy:") {
		t.Errorf("Healthy before any sync: %v, want both parts unhealthy", err)
	}
	mu.Lock()
	refuse = false
	mu.Unlock()
	// The informer lists again after its backoff (about a second).
	eventuallyWithin(t, 10*time.Second, "web programmed with its endpoint, never rejected", func() (bool, string) {
		ips, noEP := h.serviceIPs(), h.pnft.keys("map", "no-endpoint-services")
		return slices.Equal(ips, []string{"10.96.0.20 . tcp . 80"}) && len(noEP) == 0, fmt.Sprint(ips, noEP)
	})
}

// --run-network=false: the proxy alone; the node's network is someone
// else's.
func TestServiceProxyOnly(t *testing.T) {
	t.Parallel()
	h := newProxyHarness(t, svc("web", "10.96.0.20", nil), epSlice("web", corev1.ProtocolTCP, "10.244.2.5"))
	h.cfg.ProxyOnly = true
	h.start()
	eventually(t, "web programmed and the agent healthy", func() (bool, string) {
		err := h.agent.Healthy()
		return slices.Equal(h.serviceIPs(), []string{"10.96.0.20 . tcp . 80"}) && err == nil, fmt.Sprint(h.serviceIPs(), err)
	})
	consistently(t, 300*time.Millisecond, "no backend, conflist, masquerade or Node facts", func() (bool, string) {
		subnet, _ := readConflist(t, h.cfg.CNIConfDir)
		n := h.node(selfName)
		tables, _ := h.nft.ListAll(context.Background())
		return len(h.be.Setups()) == 0 && len(h.be.Syncs()) == 0 && subnet == "" && !hasFacts(n) && !networkAvailable(n) && len(tables) == 0,
			fmt.Sprint(h.be.Setups(), subnet, describe(n), tables)
	})
	if _, err := podnetd.New(podnetd.Config{NodeName: selfName, ProxyOnly: true}, h.client); err == nil {
		t.Error("New with ProxyOnly and no ServiceProxy: no error")
	}
}

// The proxy off (the default): its table is never written.
func TestServiceProxyOff(t *testing.T) {
	t.Parallel()
	h := newProxyHarness(t, svc("web", "10.96.0.20", nil), epSlice("web", corev1.ProtocolTCP, "10.244.2.5"))
	h.cfg.ServiceProxy = false
	h.start()
	h.ready()
	consistently(t, 300*time.Millisecond, "no proxy table", func() (bool, string) {
		tables, _ := h.pnft.ListAll(context.Background())
		return len(tables) == 0, fmt.Sprint(tables)
	})
	if err := h.agent.Healthy(); err != nil {
		t.Errorf("Healthy with the network synced and no proxy: %v", err)
	}
}

// A UDP endpoint removed: its flows are cleared; an externalTrafficPolicy
// Local LoadBalancer: its health-check node port learns the local count.
func TestServiceProxyConntrackAndHealthChecks(t *testing.T) {
	t.Parallel()
	dns := svc("dns", "10.96.0.10", nil, corev1.ServicePort{Name: "http", Port: 53, Protocol: corev1.ProtocolUDP})
	lb := svc("lb", "10.96.0.30", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = 32000
	}, corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, NodePort: 30081})
	h := newProxyHarness(t, dns, epSlice("dns", corev1.ProtocolUDP, "10.244.1.5@node-1", "10.244.2.5@node-2"),
		lb, epSlice("lb", corev1.ProtocolTCP, "10.244.1.8@node-1", "10.244.1.9@node-1", "10.244.2.8@node-2"))
	h.start()
	eventually(t, "the health check of lb: 2 local endpoints", func() (bool, string) {
		hs, ok := h.health.get(32000)
		return ok && hs.LocalEndpoints == 2 && hs.Name == "lb", fmt.Sprint(hs, ok)
	})
	h.waitSliceWatch()
	ctx := context.Background()
	if _, err := h.client.DiscoveryV1().EndpointSlices("default").Update(ctx, epSlice("dns", corev1.ProtocolUDP, "10.244.1.5@node-1"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.DiscoveryV1().EndpointSlices("default").Update(ctx, epSlice("lb", corev1.ProtocolTCP, "10.244.1.8@node-1", "10.244.2.8@node-2"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the flows to the removed DNS endpoint cleared", func() (bool, string) {
		var all []string
		for _, call := range h.ct.Filters() {
			all = append(all, call.String())
		}
		return slices.ContainsFunc(all, func(s string) bool { return strings.Contains(s, "10.96.0.10:53 to 10.244.2.5:8080") }), fmt.Sprint(all)
	})
	eventually(t, "the health check of lb: 1 local endpoint", func() (bool, string) {
		hs, ok := h.health.get(32000)
		return ok && hs.LocalEndpoints == 1, fmt.Sprint(hs, ok)
	})
}

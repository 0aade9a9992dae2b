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

// proxyHarness is the agent with its Service proxy on, seen through a
// probe of its table (every transaction counted, failures on demand), its
// health checks recorded call by call, its conntrack calls recorded, and
// knowing when the informers of Services and EndpointSlices watch.
type proxyHarness struct {
	*harness
	pnft    *lockedNFT
	probe   *probeNFT
	ct      *proxy.FakeConntrack
	hc      *healthRecorder
	watched map[string]chan struct{} // by resource: closed at its first watch
}

// newProxyHarness is that agent on node-1 (10.244.1.0/24, 192.168.56.11),
// with objs in the API before it starts.
func newProxyHarness(t *testing.T, objs ...runtime.Object) *proxyHarness {
	t.Helper()
	pnft := &lockedNFT{Fake: knftables.NewFake(proxy.IPv4.NFT, proxy.TableName)}
	h := &proxyHarness{harness: newHarness(t, node(selfName, "10.244.1.0/24", "192.168.56.11")),
		pnft: pnft, probe: &probeNFT{lockedNFT: pnft}, ct: &proxy.FakeConntrack{}, hc: &healthRecorder{},
		watched: map[string]chan struct{}{}}
	for _, o := range objs {
		if err := h.client.Tracker().Add(o); err != nil {
			t.Fatal(err)
		}
	}
	// The fake tracker replays nothing between an informer's list and its
	// watch: a test writes only once the informer watches.
	for _, res := range []string{"services", "endpointslices"} {
		ch := make(chan struct{})
		h.watched[res] = ch
		var once sync.Once
		h.client.PrependWatchReactor(res, func(action clienttesting.Action) (bool, watch.Interface, error) {
			var opts metav1.ListOptions
			if w, ok := action.(clienttesting.WatchActionImpl); ok {
				opts = w.ListOptions
			}
			w, err := h.client.Tracker().Watch(action.GetResource(), action.GetNamespace(), opts)
			if err == nil {
				once.Do(func() { close(ch) })
			}
			return true, w, err
		})
	}
	h.cfg.ServiceProxy = true
	h.cfg.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.168.56.0/24")}
	h.opts = []podnetd.Option{podnetd.WithProxyNFTables(h.probe), podnetd.WithConntrack(h.ct), podnetd.WithHealthChecks(h.hc)}
	return h
}

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

// Services the agent cannot list yet (a missing RBAC rule, say) hold back
// the Service proxy only: the pod network is set up and synced meanwhile.
// (services_test.go checks what the proxy does before and after.)
func TestServiceProxyDoesNotHoldBackTheNetwork(t *testing.T) {
	t.Parallel()
	h := newProxyHarness(t, svc("web", "10.96.0.20", nil), epSlice("web", corev1.ProtocolTCP, "10.244.2.5"))
	h.client.PrependReactor("list", "endpointslices", func(clienttesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(discoveryv1.Resource("endpointslices"), "", fmt.Errorf("no RBAC rule (test)"))
	})
	h.start()
	h.ready()
	eventually(t, "the backend synced and the network healthy, the proxy not", func() (bool, string) {
		err := h.agent.Healthy()
		return len(h.be.Syncs()) > 0 && err != nil && !strings.Contains(err.Error(), "network:") && strings.Contains(err.Error(), "service proxy:"),
			fmt.Sprint(len(h.be.Syncs()), err)
	})
	if tables, _ := h.pnft.ListAll(context.Background()); len(tables) != 0 {
		t.Errorf("the proxy wrote %v before it could list EndpointSlices", tables)
	}
}

func (l *lockedNFT) ListElements(ctx context.Context, kind, name string) ([]*knftables.Element, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.Fake.ListElements(ctx, kind, name)
}

func (l *lockedNFT) ListCounters(ctx context.Context) ([]*knftables.Counter, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.Fake.ListCounters(ctx)
}

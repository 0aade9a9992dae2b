package podnetd

import (
	"context"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/informers"
	listersv1 "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/knftables"

	"github.com/podnet/podnet/pkg/proxy"
)

// Labels that take a Service (and its EndpointSlices) away from the
// proxy, as kube-proxy reads them: another proxy implements the Service
// (service.kubernetes.io/service-proxy-name), or it is headless and its
// slices need no proxy (service.kubernetes.io/headless).
const (
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	LabelHeadless         = "service.kubernetes.io/headless"
)

// WithProxyNFTables makes the Service proxy work through nft, which must
// be bound to (proxy.IPv4.NFT, proxy.TableName) — knftables.NewFake with
// the same in tests — instead of the nft binary.
func WithProxyNFTables(nft knftables.Interface) Option {
	return func(a *Agent) { a.proxyNFT = nft }
}

// WithConntrack makes the Service proxy clear stale UDP flows through c
// instead of netlink (proxy.FakeConntrack in tests).
func WithConntrack(c proxy.Conntrack) Option { return func(a *Agent) { a.conntrack = c } }

// WithHealthChecks makes the Service proxy report the local endpoint
// counts of externalTrafficPolicy: Local Services to h instead of serving
// them on their health-check node ports.
func WithHealthChecks(h proxy.HealthChecks) Option { return func(a *Agent) { a.healthChecks = h } }

// proxyWatch is what the Service proxy reads: Services and EndpointSlices
// from informers of their own (with kube-proxy's label filter), and this
// node's Node from the agent's node informer.
type proxyWatch struct {
	services listersv1.ServiceLister
	slices   discoverylisters.EndpointSliceLister
	synced   []cache.InformerSynced
}

// watchServices starts the informers of the Service proxy on f; every
// change pokes.
func watchServices(f informers.SharedInformerFactory, poke func()) *proxyWatch {
	h := cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { poke() }, UpdateFunc: func(any, any) { poke() }, DeleteFunc: func(any) { poke() }}
	svc := f.Core().V1().Services()
	eps := f.Discovery().V1().EndpointSlices()
	_, _ = svc.Informer().AddEventHandler(h)
	_, _ = eps.Informer().AddEventHandler(h)
	return &proxyWatch{services: svc.Lister(), slices: eps.Lister(),
		synced: []cache.InformerSynced{svc.Informer().HasSynced, eps.Informer().HasSynced}}
}

// proxyListFilter is kube-proxy's: neither Services that another proxy
// implements nor headless ones.
func proxyListFilter(o *metav1.ListOptions) {
	noProxyName, _ := labels.NewRequirement(LabelServiceProxyName, selection.DoesNotExist, nil)
	noHeadless, _ := labels.NewRequirement(LabelHeadless, selection.DoesNotExist, nil)
	o.LabelSelector = labels.NewSelector().Add(*noProxyName, *noHeadless).String()
}

// newProxier builds the Service proxy: the Proxier on its nft table, the
// conntrack cleaner and the health-check node ports.
func (a *Agent) newProxier() error {
	nft := a.proxyNFT
	if nft == nil {
		var err error
		if nft, err = knftables.New(proxy.IPv4.NFT, proxy.TableName); err != nil {
			return fmt.Errorf("nftables for the Service proxy: %w", err)
		}
	}
	if a.conntrack == nil {
		a.conntrack = proxy.NewConntrack(proxy.IPv4)
	}
	if a.healthChecks == nil {
		hs := proxy.NewHealthServer(proxy.HealthServerConfig{Log: a.log,
			ProxyHealthy: func() bool { return a.ProxyHealth.Healthy() == nil }})
		a.healthChecks, a.closeHealth = hs, hs.Close
	}
	a.proxier = proxy.New(nft, proxy.Config{Family: proxy.IPv4, Conntrack: a.conntrack, Health: a.healthChecks,
		Log: a.log.With("part", "service-proxy"), Metrics: a.cfg.Metrics})
	return nil
}

// proxyPass is one sync of the Service proxy: the whole desired state from
// the informers' caches, written as a partial or a full sync (the Proxier
// decides; see proxy.Proxier.Sync).
func (a *Agent) proxyPass(ctx context.Context) (bool, error) {
	svcs, err := a.pw.services.List(labels.Everything())
	if err != nil {
		return true, fmt.Errorf("list services: %w", err)
	}
	slices, err := a.pw.slices.List(labels.Everything())
	if err != nil {
		return true, fmt.Errorf("list endpointslices: %w", err)
	}
	st := proxy.Build(proxy.IPv4, a.proxyNode(), svcs, slices)
	err = a.proxier.Sync(ctx, st)
	a.ProxyHealth.Record(err)
	if err != nil {
		return true, fmt.Errorf("service proxy: %w", err)
	}
	return true, nil
}

// proxyNode is what the Service proxy knows of this node: its addresses
// and pod subnets from its Node (none while the Node is not registered:
// ClusterIPs work meanwhile, and NodePorts on every local address unless
// NodePortAddresses restrict them), the cluster's pod networks and the
// NodePort addresses from the configuration.
func (a *Agent) proxyNode() proxy.Node {
	n := proxy.Node{Name: a.cfg.NodeName, ClusterCIDRs: a.cfg.ClusterCIDRs, NodePortAddresses: a.cfg.NodePortAddresses}
	self, err := a.nodes.Get(a.cfg.NodeName)
	if err != nil {
		return n
	}
	for _, ad := range self.Status.Addresses {
		if ad.Type != corev1.NodeInternalIP && ad.Type != corev1.NodeExternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(ad.Address); err == nil {
			n.IPs = append(n.IPs, ip)
		}
	}
	cidrs := self.Spec.PodCIDRs
	if len(cidrs) == 0 && self.Spec.PodCIDR != "" {
		cidrs = []string{self.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil {
			n.PodCIDRs = append(n.PodCIDRs, p)
		}
	}
	return n
}

// CleanupServiceProxy deletes the Service proxy's table, if there is one:
// what podnetd does when it starts with the proxy turned off, so that a
// cluster moving (back) to kube-proxy keeps no rules of podnet's.
// Connections already translated keep their translation (conntrack).
func CleanupServiceProxy(ctx context.Context) error {
	nft, err := knftables.New(proxy.IPv4.NFT, proxy.TableName)
	if err != nil {
		return fmt.Errorf("nftables for the Service proxy: %w", err)
	}
	return proxy.New(nft, proxy.Config{}).Cleanup(ctx)
}

// Package podnetd is the node agent's control loop: it learns this node's
// pod subnet from Node.spec.podCIDRs, publishes the node's facts as Node
// annotations, writes the node's CNI conflist, and keeps the cross-node
// dataplane (a backend) equal to what the Node objects say — level
// triggered: informer events only mark the state dirty; one runner computes
// the whole desired state and applies it, at most every minInterval and at
// least every resync period (which repairs drift). Nothing is written to the
// kernel before the informer has synced.
package podnetd

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"sigs.k8s.io/knftables"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podnet/podnet/pkg/agentapi"
	"github.com/podnet/podnet/pkg/backend"
	"github.com/podnet/podnet/pkg/masq"
	"github.com/podnet/podnet/pkg/netconf"
)

// Config configures the agent.
type Config struct {
	NodeName string
	Backend  string
	// MTU overrides the pod MTU the backend derives (0: derived).
	MTU           int
	CNIConfDir    string
	PodnetDataDir string
	// ClusterCIDRs are the pod networks: traffic from them to anywhere else
	// but the node network is masqueraded.
	ClusterCIDRs []netip.Prefix
	// Resync is the period of full resyncs that repair drift.
	Resync time.Duration
	// Metrics is where the agent registers its metrics (none when nil).
	Metrics prometheus.Registerer
	Log     *slog.Logger
}

const minInterval = 100 * time.Millisecond

// Agent is podnetd on one node.
type Agent struct {
	// Health is healthy while the last sync succeeded recently (/healthz).
	Health      *agentapi.SyncHealth
	metrics     *metrics
	cfg         Config
	client      kubernetes.Interface
	log         *slog.Logger
	be          backend.Backend
	nodes       listersv1.NodeLister
	local       backend.Local
	masq        *masq.Masq
	noMasq      netip.Prefix      // the node network (underlay segment), never masqueraded
	facts       map[string]string // the annotations this node publishes
	lastRefused string
}

// New returns an agent.
func New(cfg Config, client kubernetes.Interface) (*Agent, error) {
	be, err := backend.New(cfg.Backend)
	if err != nil {
		return nil, err
	}
	if cfg.Resync == 0 {
		cfg.Resync = 10 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Agent{Health: &agentapi.SyncHealth{MaxAge: 3 * cfg.Resync}, metrics: newMetrics(cfg.Metrics), cfg: cfg, client: client, be: be, log: cfg.Log.With("node", cfg.NodeName)}, nil
}

// Run runs until ctx ends. The dataplane is left in place when it returns:
// a restarted agent adopts it and fixes only what differs.
func (a *Agent) Run(ctx context.Context) error {
	f := informers.NewSharedInformerFactory(a.client, 0)
	inf := f.Core().V1().Nodes()
	dirty := make(chan struct{}, 1)
	poke := func() {
		select {
		case dirty <- struct{}{}:
		default:
		}
	}
	_, _ = inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { poke() }, UpdateFunc: func(any, any) { poke() }, DeleteFunc: func(any) { poke() }})
	a.nodes = inf.Lister()
	f.Start(ctx.Done())
	a.log.Info("waiting for the node informer to sync")
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		return ctx.Err()
	}
	if err := a.setup(ctx); err != nil {
		return err
	}
	resync := time.NewTicker(a.cfg.Resync)
	defer resync.Stop()
	last := time.Time{}
	for {
		if wait := minInterval - time.Since(last); wait > 0 {
			time.Sleep(wait)
		}
		last = time.Now()
		start := time.Now()
		err := a.sync(ctx)
		a.metrics.syncDuration.Observe(time.Since(start).Seconds())
		a.Health.Record(err)
		if err != nil {
			a.metrics.syncErrors.Inc()
			a.log.Error("sync", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-dirty:
		case <-resync.C:
		}
	}
}

// setup waits for this node's pod subnet and address, prepares the
// backend, publishes the node's facts and writes the CNI config.
func (a *Agent) setup(ctx context.Context) error {
	var self *corev1.Node
	said := false
	for {
		n, err := a.nodes.Get(a.cfg.NodeName)
		if err == nil && settled(n) {
			self = n
			break
		}
		if !said {
			a.log.Info("waiting for this node's pod subnet (Node.spec.podCIDRs, allocated by kube-controller-manager) and address (reported by kubelet)")
			said = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	return a.setupFor(ctx, self)
}

// setupFor prepares the backend for the pod subnet and address that self
// (this node's Node) gives, publishes the node's facts and writes the CNI
// config. It runs at start and again when the Node's pod subnet changes
// (the Node was deleted and registered anew, and node IPAM gave it another
// one), so that pods get addresses the other nodes route here.
func (a *Agent) setupFor(ctx context.Context, self *corev1.Node) error {
	cidr, err := netip.ParsePrefix(self.Spec.PodCIDR)
	if err != nil {
		return fmt.Errorf("node %s: podCIDR %q: %w", a.cfg.NodeName, self.Spec.PodCIDR, err)
	}
	ip, ok := internalIP(self)
	if !ok {
		return fmt.Errorf("node %s has no InternalIP address", a.cfg.NodeName)
	}
	link, segment, err := underlay(ip)
	if err != nil {
		return err
	}
	a.local = backend.Local{Node: a.cfg.NodeName, PodCIDR: cidr, NodeIP: ip, Link: link}
	a.noMasq = segment
	if a.masq == nil {
		nft, err := knftables.New(masq.Family, masq.TableName)
		if err != nil {
			return fmt.Errorf("nftables for egress masquerade: %w", err)
		}
		a.masq = masq.New(nft, masq.WithLogger(a.log))
	}
	facts, err := a.be.Setup(a.local)
	if err != nil {
		return fmt.Errorf("set up the %s backend: %w", a.cfg.Backend, err)
	}
	a.log.Info("backend ready", "backend", a.cfg.Backend, "cidr", cidr, "ip", ip, "link", link, "mtu", facts.MTU)
	a.facts = facts.Annotations
	if err := a.annotate(ctx, facts.Annotations); err != nil {
		return err
	}
	mtu := facts.MTU
	if a.cfg.MTU > 0 {
		mtu = a.cfg.MTU
	}
	if wrote, err := netconf.WriteConflist(a.cfg.CNIConfDir, netconf.Conflist(cidr.String(), mtu, a.cfg.PodnetDataDir)); err != nil {
		return err
	} else if wrote {
		a.log.Info("wrote CNI config", "dir", a.cfg.CNIConfDir, "cidr", cidr, "mtu", mtu)
	}
	return nil
}

// settled says whether a Node has what setup needs: a pod subnet (node
// IPAM) and an InternalIP (kubelet's status). A Node just registered has
// neither for a moment.
func settled(n *corev1.Node) bool {
	_, ok := internalIP(n)
	return ok && n.Spec.PodCIDR != ""
}

func internalIP(n *corev1.Node) (netip.Addr, bool) {
	for _, ad := range n.Status.Addresses {
		if ad.Type == corev1.NodeInternalIP {
			if ip, err := netip.ParseAddr(ad.Address); err == nil && ip.Is4() {
				return ip, true
			}
		}
	}
	return netip.Addr{}, false
}

// underlay finds the interface that holds ip and the network of that
// address there (the node network), in one address dump.
func underlay(ip netip.Addr) (string, netip.Prefix, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return "", netip.Prefix{}, fmt.Errorf("list addresses: %w", err)
	}
	for _, ad := range addrs {
		if a, ok := netip.AddrFromSlice(ad.IP); ok && a.Unmap() == ip {
			l, err := netlink.LinkByIndex(ad.LinkIndex)
			if err != nil {
				return "", netip.Prefix{}, fmt.Errorf("look up the interface holding %s: %w", ip, err)
			}
			ones, _ := ad.Mask.Size()
			return l.Attrs().Name, netip.PrefixFrom(ip, ones).Masked(), nil
		}
	}
	return "", netip.Prefix{}, fmt.Errorf("no interface holds the node address %s", ip)
}

// annotate publishes the node's facts.
func (a *Agent) annotate(ctx context.Context, ann map[string]string) error {
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if _, err := a.client.CoreV1().Nodes().Patch(ctx, a.cfg.NodeName, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("annotate node %s: %w", a.cfg.NodeName, err)
	}
	return nil
}

// remotes reads every other node with a pod subnet and an address.
func (a *Agent) remotes() ([]backend.Remote, error) {
	nodes, err := a.nodes.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	var out []backend.Remote
	for _, n := range nodes {
		if n.Name == a.cfg.NodeName || n.Spec.PodCIDR == "" {
			continue
		}
		cidr, err := netip.ParsePrefix(n.Spec.PodCIDR)
		if err != nil {
			continue
		}
		ip, ok := internalIP(n)
		if !ok {
			continue
		}
		r := backend.Remote{Node: n.Name, PodCIDR: cidr, NodeIP: ip}
		if mac, err := net.ParseMAC(n.Annotations[backend.AnnotationVTEPMAC]); err == nil {
			r.VTEPMAC = mac
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out, nil
}

// sync applies the whole desired state.
func (a *Agent) sync(ctx context.Context) error {
	self, err := a.nodes.Get(a.cfg.NodeName)
	if err != nil {
		self = nil // deleted: nothing to publish until it is registered again
	}
	if self != nil && settled(self) && self.Spec.PodCIDR != a.local.PodCIDR.String() {
		a.log.Info("this node's pod subnet changed: setting up again", "old", a.local.PodCIDR, "cidr", self.Spec.PodCIDR)
		if err := a.setupFor(ctx, self); err != nil {
			return err
		}
	}
	remotes, err := a.remotes()
	if err != nil {
		return err
	}
	start := time.Now()
	res, err := a.be.Sync(remotes)
	if err != nil {
		return err
	}
	a.metrics.changes.WithLabelValues("add").Add(float64(res.Added))
	a.metrics.changes.WithLabelValues("remove").Add(float64(res.Removed))
	a.metrics.remotes.Set(float64(len(remotes) - len(res.Refused)))
	a.metrics.refused.Set(float64(len(res.Refused)))
	if res.Added+res.Removed > 0 {
		a.log.Info("dataplane synced", "remotes", len(remotes), "added", res.Added, "removed", res.Removed, "took", time.Since(start))
	}
	if refused := describeRefused(res.Refused); refused != a.lastRefused {
		a.lastRefused = refused
		if refused != "" {
			a.log.Warn("nodes not reachable by this backend", "refused", refused)
		}
	}
	if err := a.masq.Sync(ctx, masq.Config{ClusterCIDRs: a.cfg.ClusterCIDRs, NoMasquerade: []netip.Prefix{a.noMasq}}); err != nil {
		return fmt.Errorf("egress masquerade: %w", err)
	}
	return a.publish(ctx, self)
}

// publish makes this node's Node carry the node's facts and
// NetworkUnavailable=False, compared with what the Node holds now (not what
// was written before): a Node deleted and registered again, or whose
// annotations were removed, gets them back — without them the other nodes
// refuse it.
func (a *Agent) publish(ctx context.Context, self *corev1.Node) error {
	if self == nil || self.Spec.PodCIDR != a.local.PodCIDR.String() {
		return nil // gone, or registered anew and waiting for its pod subnet
	}
	for k, v := range a.facts {
		if self.Annotations[k] != v {
			if err := a.annotate(ctx, a.facts); err != nil {
				return err
			}
			break
		}
	}
	for _, c := range self.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable && c.Status == corev1.ConditionFalse {
			return nil
		}
	}
	return a.setNetworkAvailable(ctx)
}

func describeRefused(m map[string]string) string {
	var parts []string
	for n, why := range m {
		parts = append(parts, n+": "+why)
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

// setNetworkAvailable sets the Node's NetworkUnavailable condition to False
// once the routes are in place, as cloud route controllers and CNI agents do.
func (a *Agent) setNetworkAvailable(ctx context.Context) error {
	now := metav1.Now()
	patch, _ := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{{
		Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse, Reason: "PodnetIsUp",
		Message: "podnet programmed the routes to every other node", LastTransitionTime: now, LastHeartbeatTime: now}}}})
	_, err := a.client.CoreV1().Nodes().Patch(ctx, a.cfg.NodeName, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil {
		return fmt.Errorf("set NetworkUnavailable=False on %s: %w", a.cfg.NodeName, err)
	}
	return nil
}

// Package podnetd is the node agent's control loop: it learns this node's
// pod subnet from Node.spec.podCIDRs, publishes the node's facts as Node
// annotations, writes the node's CNI conflist, and keeps the cross-node
// dataplane (a backend) equal to what the Node objects say — level
// triggered: informer events only mark the state dirty; one runner computes
// the whole desired state and applies it, at most every minInterval and at
// least every resync period (which repairs drift). Nothing is written to the
// kernel before the informer has synced.
//
// A pass that fails — the API server does not answer, the backend or nft
// fails — is retried with exponential backoff, sooner than the next resync.
// Nothing is torn down meanwhile: the informer's cache keeps the last known
// Nodes, and every pass syncs the dataplane from it, so an unreachable API
// server freezes the dataplane as it is instead of emptying it, and the
// agent reconverges once the server answers again.
package podnetd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/record"

	"sigs.k8s.io/knftables"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podnet/podnet/pkg/agentapi"
	"github.com/podnet/podnet/pkg/antispoof"
	"github.com/podnet/podnet/pkg/backend"
	"github.com/podnet/podnet/pkg/masq"
	"github.com/podnet/podnet/pkg/netconf"
	"github.com/podnet/podnet/pkg/policy"
	"github.com/podnet/podnet/pkg/proxy"
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
	// Resync is the period of full resyncs that repair drift (default 10s).
	// It is also the longest delay between the retries of a failed pass.
	Resync time.Duration
	// ServiceProxy runs podnet's Service proxy (package proxy) in the
	// agent: ClusterIPs, NodePorts, external and load-balancer IPs of the
	// Services, in the table "ip podnet-proxy", in place of kube-proxy.
	ServiceProxy bool
	// NodePortAddresses restrict NodePorts to this node's addresses
	// (InternalIP and ExternalIP of its Node) inside these prefixes, as
	// kube-proxy's --nodeport-addresses (empty: every local address but
	// loopback).
	NodePortAddresses []netip.Prefix
	// NetworkPolicy runs the NetworkPolicy engine (package policy): the
	// policies of this node's pods, in the table "inet podnet-policy".
	NetworkPolicy bool
	// AntiSpoofing makes every pod send only from its own addresses and
	// the node accept VXLAN only from Nodes (package antispoof: the tables
	// "bridge podnet-antispoof" and "inet podnet-antispoof"). It needs the
	// pod network (not ProxyOnly) and AgentSocket.
	AntiSpoofing bool
	// AgentSocket is where the CNI plugin announces new pods, so that
	// their anti-spoofing entry and policy hold from the first packet
	// (package announce; written into the conflist). Empty: no
	// announcements; pods are policed once the Pod informer shows their IP.
	AgentSocket string
	// ProxyOnly runs the Service proxy alone: no backend, CNI config,
	// egress masquerade or Node facts (another network provides them).
	ProxyOnly bool
	// Metrics is where the agent registers its metrics (none when nil).
	Metrics prometheus.Registerer
	Log     *slog.Logger
}

const (
	// minInterval is the shortest time between two passes, however many
	// events arrive.
	minInterval = 100 * time.Millisecond
	// DefaultRetryDelay is the delay before the first retry of a failed
	// pass; it doubles with each failure that follows, up to Config.Resync.
	DefaultRetryDelay = 200 * time.Millisecond
)

// UnderlayFunc finds the interface that holds the node address ip and the
// network of that address there (the node network, never masqueraded).
type UnderlayFunc func(ip netip.Addr) (link string, segment netip.Prefix, err error)

// Option changes how New builds an Agent. The options are the agent's
// seams to the kernel: tests replace each with a fake.
type Option func(*Agent)

// WithBackend makes the agent program be instead of the backend that
// Config.Backend names (which then only names it in logs).
func WithBackend(be backend.Backend) Option { return func(a *Agent) { a.be = be } }

// WithNFTables makes the egress masquerade work through nft, which must be
// bound to (masq.Family, masq.TableName) — knftables.NewFake(masq.Family,
// masq.TableName) in tests — instead of the nft binary.
func WithNFTables(nft knftables.Interface) Option { return func(a *Agent) { a.nft = nft } }

// WithUnderlay replaces the lookup of the underlay interface and network
// in the kernel's addresses.
func WithUnderlay(f UnderlayFunc) Option { return func(a *Agent) { a.underlay = f } }

// WithEventRecorder makes the agent record its Events (a remote node
// refused) through r instead of a broadcaster to the API server.
func WithEventRecorder(r record.EventRecorder) Option { return func(a *Agent) { a.events = r } }

// WithRetryDelay sets the delay before the first retry of a failed pass
// (default DefaultRetryDelay).
func WithRetryDelay(d time.Duration) Option { return func(a *Agent) { a.retryDelay = d } }

// Agent is podnetd on one node.
type Agent struct {
	// Health is healthy while the last sync of the network (backend,
	// masquerade, Node facts) succeeded recently; ProxyHealth the same for
	// the Service proxy. The agent's Healthy combines those that run.
	Health      *agentapi.SyncHealth
	ProxyHealth *agentapi.SyncHealth
	// PolicyHealth is the same for the NetworkPolicy engine, SpoofHealth
	// for anti-spoofing.
	PolicyHealth *agentapi.SyncHealth
	SpoofHealth  *agentapi.SyncHealth
	metrics      *metrics
	cfg          Config
	client       kubernetes.Interface
	log          *slog.Logger
	be           backend.Backend
	nft          knftables.Interface // nil: the nft binary, opened at the first setup
	underlay     UnderlayFunc
	retryDelay   time.Duration
	nodes        listersv1.NodeLister

	// This node, as the last successful setup left it.
	ready  bool // the backend is set up for local
	local  backend.Local
	masq   *masq.Masq
	noMasq netip.Prefix      // the node network (underlay segment), never masqueraded
	facts  map[string]string // the annotations this node publishes
	mtu    int               // of pod interfaces, in the CNI config

	saidWaiting bool
	lastRefused string
	// events records a Warning on this Node for every newly refused
	// remote; refusedSeen holds the reasons already reported.
	events      record.EventRecorder
	refusedSeen map[string]string

	// The Service proxy (nil unless Config.ServiceProxy).
	proxier      *proxy.Proxier
	proxyNFT     knftables.Interface // nil: the nft binary
	conntrack    proxy.Conntrack
	healthChecks proxy.HealthChecks
	closeHealth  func() error
	pw           *proxyWatch

	// The NetworkPolicy engine (nil unless Config.NetworkPolicy).
	enforcer   *policy.Enforcer
	policyNFT  knftables.Interface // nil: the nft binary
	policyCT   policy.Conntrack    // nil: netlink (none with a fake nft)
	polw       *policyWatch
	pokePolicy func()
	polSync    syncCounter // policy passes started and done
	pendingMu  sync.Mutex
	pending    map[types.NamespacedName]pendingPod // announced by the plugin, IP not yet in the API
	podIPs     map[netip.Addr]string               // every pod's address, for the deny log
	cnpState                                       // ClusterNetworkPolicy (cnp.go)
	warnedMu   sync.Mutex
	warned     map[string]map[string]bool // policy problems told, by kind

	// Anti-spoofing (nil unless Config.AntiSpoofing).
	guard     *antispoof.Guard
	spoofNFT  [2]knftables.Interface // bridge, inet; nil: the nft binary
	podPorts  func() ([]antispoof.Port, error)
	pokeSpoof func()
	spoofSync syncCounter // anti-spoofing passes started and done
	// the ports of the last successful pass, for the drop log
	spoofPortsMu sync.Mutex
	spoofPorts   []antispoof.Port
}

// New returns an agent.
func New(cfg Config, client kubernetes.Interface, opts ...Option) (*Agent, error) {
	if cfg.Resync <= 0 {
		cfg.Resync = 10 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.ProxyOnly && !cfg.ServiceProxy && !cfg.NetworkPolicy {
		return nil, errors.New("no pod network, no Service proxy and no NetworkPolicy: nothing to run")
	}
	a := &Agent{Health: &agentapi.SyncHealth{MaxAge: 3 * cfg.Resync}, ProxyHealth: &agentapi.SyncHealth{MaxAge: 3 * cfg.Resync},
		PolicyHealth: &agentapi.SyncHealth{MaxAge: 3 * cfg.Resync}, SpoofHealth: &agentapi.SyncHealth{MaxAge: 3 * cfg.Resync}, metrics: newMetrics(cfg.Metrics), cfg: cfg,
		client: client, log: cfg.Log.With("node", cfg.NodeName), underlay: underlay, retryDelay: DefaultRetryDelay}
	for _, o := range opts {
		o(a)
	}
	if a.retryDelay <= 0 {
		a.retryDelay = DefaultRetryDelay
	}
	if a.be == nil && !cfg.ProxyOnly {
		be, err := backend.New(cfg.Backend)
		if err != nil {
			return nil, err
		}
		a.be = be
	}
	return a, nil
}

// Healthy is the agent's health (/healthz): every part that runs (the
// network, the Service proxy) synced successfully and recently.
func (a *Agent) Healthy() error {
	var errs []error
	if !a.cfg.ProxyOnly {
		if err := a.Health.Healthy(); err != nil {
			errs = append(errs, fmt.Errorf("network: %w", err))
		}
	}
	if a.cfg.ServiceProxy {
		if err := a.ProxyHealth.Healthy(); err != nil {
			errs = append(errs, fmt.Errorf("service proxy: %w", err))
		}
	}
	if a.cfg.NetworkPolicy {
		if err := a.PolicyHealth.Healthy(); err != nil {
			errs = append(errs, fmt.Errorf("network policy: %w", err))
		}
	}
	if a.guard != nil {
		if err := a.SpoofHealth.Healthy(); err != nil {
			errs = append(errs, fmt.Errorf("anti-spoofing: %w", err))
		}
	}
	return errors.Join(errs...)
}

// sync is one pass: it applies the whole desired state. It sets this node
// up when its Node first has a pod subnet and an address, and again when
// the subnet changes; until the first setup it does nothing and reports
// false. Then it publishes this node's facts, syncs the dataplane, and
// marks the network available. Publishing and the dataplane do not wait
// for each other: while the API server refuses a patch, the dataplane
// still follows the Nodes in the informer's cache.
func (a *Agent) sync(ctx context.Context) (bool, error) {
	self, err := a.nodes.Get(a.cfg.NodeName)
	if err != nil {
		self = nil // deleted: nothing to publish until it is registered again
	}
	if self != nil && settled(self) && (!a.ready || self.Spec.PodCIDR != a.local.PodCIDR.String()) {
		if a.ready {
			a.log.Info("this node's pod subnet changed: setting up again", "old", a.local.PodCIDR, "cidr", self.Spec.PodCIDR)
		}
		if err := a.setup(self); err != nil {
			return true, err
		}
	}
	if !a.ready {
		if !a.saidWaiting {
			a.log.Info("waiting for this node's pod subnet (Node.spec.podCIDRs, allocated by kube-controller-manager) and address (reported by kubelet)")
			a.saidWaiting = true
		}
		return false, nil
	}
	pubErr := a.publishFacts(ctx, self)
	dpErr := a.syncDataplane(ctx)
	if err := errors.Join(pubErr, dpErr); err != nil {
		return true, err
	}
	return true, a.markAvailable(ctx, self)
}

// setup prepares the backend for the pod subnet and address that self
// (this node's Node) gives. It runs at start and again when the Node's pod
// subnet changes (the Node was deleted and registered anew, and node IPAM
// gave it another one), so that pods get addresses the other nodes route
// here. Until it succeeds again, the dataplane is left as it is.
func (a *Agent) setup(self *corev1.Node) error {
	a.ready = false
	cidr, err := netip.ParsePrefix(self.Spec.PodCIDR)
	if err != nil {
		return fmt.Errorf("node %s: podCIDR %q: %w", a.cfg.NodeName, self.Spec.PodCIDR, err)
	}
	ip, ok := internalIP(self)
	if !ok {
		return fmt.Errorf("node %s has no InternalIP address", a.cfg.NodeName)
	}
	link, segment, err := a.underlay(ip)
	if err != nil {
		return fmt.Errorf("find the underlay interface of node %s: %w", a.cfg.NodeName, err)
	}
	if a.masq == nil {
		nft := a.nft
		if nft == nil {
			if nft, err = knftables.New(masq.Family, masq.TableName); err != nil {
				return fmt.Errorf("nftables for egress masquerade: %w", err)
			}
		}
		a.masq = masq.New(nft, masq.WithLogger(a.log))
	}
	local := backend.Local{Node: a.cfg.NodeName, PodCIDR: cidr, NodeIP: ip, Link: link}
	facts, err := a.be.Setup(local)
	if err != nil {
		return fmt.Errorf("set up the %s backend for %s: %w", a.cfg.Backend, cidr, err)
	}
	a.local, a.noMasq, a.facts, a.mtu = local, segment, facts.Annotations, facts.MTU
	if a.cfg.MTU > 0 {
		a.mtu = a.cfg.MTU
	}
	a.ready, a.saidWaiting = true, false
	a.log.Info("backend ready", "backend", a.cfg.Backend, "cidr", cidr, "ip", ip, "link", link, "mtu", a.mtu)
	return nil
}

// current says whether self is this node as set up: not deleted, and not
// registered anew and waiting for (another) pod subnet.
func (a *Agent) current(self *corev1.Node) bool {
	return self != nil && self.Spec.PodCIDR == a.local.PodCIDR.String()
}

// publishFacts makes this node's Node carry the node's facts, compared
// with what the Node holds now (not what was written before): a Node
// deleted and registered again, or whose annotations were removed, gets
// them back — without them the other nodes refuse it. Only then does it
// write the CNI config (again if someone removed it), so that no pod starts
// here before the other nodes can learn how to reach it.
func (a *Agent) publishFacts(ctx context.Context, self *corev1.Node) error {
	if !a.current(self) {
		return nil
	}
	for k, v := range a.facts {
		if self.Annotations[k] != v {
			if err := a.annotate(ctx, a.facts); err != nil {
				return err
			}
			break
		}
	}
	conf := netconf.Conflist(a.local.PodCIDR.String(), a.mtu, a.cfg.PodnetDataDir, a.cfg.AgentSocket)
	if wrote, err := netconf.WriteConflist(a.cfg.CNIConfDir, conf); err != nil {
		return fmt.Errorf("write the CNI config: %w", err)
	} else if wrote {
		a.log.Info("wrote CNI config", "dir", a.cfg.CNIConfDir, "cidr", a.local.PodCIDR, "mtu", a.mtu)
	}
	return nil
}

// syncDataplane makes the backend and the masquerade table follow the
// Nodes in the informer's cache.
func (a *Agent) syncDataplane(ctx context.Context) error {
	remotes, err := a.remotes()
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	start := time.Now()
	res, err := a.be.Sync(remotes)
	if err != nil {
		return fmt.Errorf("sync the %s backend with %d nodes: %w", a.cfg.Backend, len(remotes), err)
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
	a.reportRefused(res.Refused)
	if err := a.syncVXLANFilter(ctx, remotes); err != nil {
		return err
	}
	if err := a.masq.Sync(ctx, masq.Config{ClusterCIDRs: a.cfg.ClusterCIDRs, NoMasquerade: []netip.Prefix{a.noMasq}}); err != nil {
		return fmt.Errorf("egress masquerade: %w", err)
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

// reportRefused records a Warning Event on this Node for each remote that
// is refused now and was not (or for another reason) at the last report:
// `kubectl describe node` shows why a node gets no route, never a silent
// black hole.
func (a *Agent) reportRefused(refused map[string]string) {
	if a.events == nil {
		return
	}
	ref := &corev1.ObjectReference{Kind: "Node", Name: a.cfg.NodeName, UID: types.UID(a.cfg.NodeName)}
	names := make([]string, 0, len(refused))
	for n := range refused {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if a.refusedSeen[n] != refused[n] {
			a.events.Eventf(ref, corev1.EventTypeWarning, "RemoteNodeRefused", "the %s backend gives node %s no route: %s", a.cfg.Backend, n, refused[n])
		}
	}
	a.refusedSeen = refused
}

func describeRefused(m map[string]string) string {
	var parts []string
	for n, why := range m {
		parts = append(parts, n+": "+why)
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

// markAvailable makes this node's Node say NetworkUnavailable=False once
// its facts are published and the routes are in place, as cloud route
// controllers and CNI agents do — again if someone changed it.
func (a *Agent) markAvailable(ctx context.Context, self *corev1.Node) error {
	if !a.current(self) {
		return nil
	}
	for _, c := range self.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable && c.Status == corev1.ConditionFalse {
			return nil
		}
	}
	return a.setNetworkAvailable(ctx)
}

// setNetworkAvailable sets the Node's NetworkUnavailable condition to False.
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

package podnetd

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	listersv1 "k8s.io/client-go/listers/core/v1"
	networkinglisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/knftables"

	"github.com/podnet/podnet/pkg/policy"
)

// WithPolicyNFTables makes the NetworkPolicy engine work through nft,
// which must be bound to (knftables.InetFamily, policy.TableName) —
// knftables.NewFake with the same in tests — instead of the nft binary.
func WithPolicyNFTables(nft knftables.Interface) Option {
	return func(a *Agent) { a.policyNFT = nft }
}

// WithPolicyConntrack makes the NetworkPolicy engine cut forbidden flows
// through c (policy.FakeConntrack in tests) instead of netlink.
func WithPolicyConntrack(c policy.Conntrack) Option { return func(a *Agent) { a.policyCT = c } }

// policyWatch is what the NetworkPolicy engine reads: NetworkPolicies,
// Pods and Namespaces, from informers of their own. Every pod of the
// cluster is read (a policy's peers may be anywhere); only this node's
// pods get chains.
type policyWatch struct {
	policies   networkinglisters.NetworkPolicyLister
	pods       listersv1.PodLister
	namespaces listersv1.NamespaceLister
	synced     []cache.InformerSynced
}

func watchPolicies(f informers.SharedInformerFactory, poke func()) *policyWatch {
	h := cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { poke() }, UpdateFunc: func(any, any) { poke() }, DeleteFunc: func(any) { poke() }}
	np := f.Networking().V1().NetworkPolicies()
	pods := f.Core().V1().Pods()
	nss := f.Core().V1().Namespaces()
	for _, inf := range []cache.SharedIndexInformer{np.Informer(), pods.Informer(), nss.Informer()} {
		_, _ = inf.AddEventHandler(h)
	}
	return &policyWatch{policies: np.Lister(), pods: pods.Lister(), namespaces: nss.Lister(),
		synced: []cache.InformerSynced{np.Informer().HasSynced, pods.Informer().HasSynced, nss.Informer().HasSynced}}
}

// newEnforcer builds the NetworkPolicy engine on its nft table, and says
// so when bridged pod-to-pod traffic would not pass the hooks it sits in.
func (a *Agent) newEnforcer() error {
	nft := a.policyNFT
	if nft == nil {
		var err error
		if nft, err = knftables.New(knftables.InetFamily, policy.TableName); err != nil {
			return fmt.Errorf("nftables for NetworkPolicy: %w", err)
		}
		// Pods of one node talk over the cni0 bridge: without
		// br_netfilter's bridge-nf-call-iptables (the plugin sets it when
		// it sets up the bridge) a bridged packet never reaches the
		// forward hook, and same-node traffic passes unpoliced.
		if b, err := os.ReadFile(bridgeNFCall); err != nil || strings.TrimSpace(string(b)) != "1" {
			a.log.Error("NetworkPolicy cannot police traffic between pods of this node: bridged packets skip netfilter; load br_netfilter (modprobe br_netfilter) and set net.bridge.bridge-nf-call-iptables=1",
				"part", "network-policy", "sysctl", bridgeNFCall)
		}
	}
	ct := a.policyCT
	if ct == nil && a.policyNFT == nil {
		ct = policy.NewConntrack()
	}
	a.enforcer = policy.NewEnforcer(nft, policy.Config{Log: a.log.With("part", "network-policy"), Metrics: a.cfg.Metrics, Conntrack: ct})
	if a.cfg.Metrics != nil {
		a.cfg.Metrics.MustRegister(newDropsCollector(a))
	}
	return nil
}

const bridgeNFCall = "/proc/sys/net/bridge/bridge-nf-call-iptables"

// policyPass is one sync of the NetworkPolicy engine: every policy, pod
// and namespace from the caches, resolved for the pods of this node.
func (a *Agent) policyPass(ctx context.Context) (bool, error) {
	gen := a.polSync.start()
	err := a.syncPolicy(ctx)
	a.PolicyHealth.Record(err)
	if err != nil {
		return true, fmt.Errorf("network policy: %w", err)
	}
	a.polSync.finish(gen)
	if a.enforcer.Pending() {
		a.pokePolicyLater(policyStaleRetry)
	}
	return true, nil
}

func (a *Agent) syncPolicy(ctx context.Context) error {
	nps, err := a.polw.policies.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("list networkpolicies: %w", err)
	}
	pods, err := a.polw.pods.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("list pods: %w", err)
	}
	nss, err := a.polw.namespaces.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("list namespaces: %w", err)
	}
	ips := map[netip.Addr]string{}
	for _, p := range pods {
		for _, ip := range p.Status.PodIPs {
			if ad, err := netip.ParseAddr(ip.IP); err == nil && !p.Spec.HostNetwork {
				ips[ad] = p.Namespace + "/" + p.Name
			}
		}
	}
	a.pendingMu.Lock()
	a.podIPs = ips
	a.pendingMu.Unlock()
	local := func(p *corev1.Pod) bool { return p.Spec.NodeName == a.cfg.NodeName }
	pods = a.withPending(pods)
	resolved, problems := policy.ResolveFor(nps, pods, nss, local)
	var warn []policyProblem
	for _, p := range problems {
		ref := &corev1.ObjectReference{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy", Namespace: p.Policy.Namespace, Name: p.Policy.Name}
		if np, err := a.polw.policies.NetworkPolicies(p.Policy.Namespace).Get(p.Policy.Name); err == nil {
			ref.UID, ref.ResourceVersion = np.UID, np.ResourceVersion
		}
		warn = append(warn, policyProblem{ref, p.Error() + "; the pods it selects allow nothing it names"})
	}
	a.warnPolicies("np", warn)
	if err := a.resolveCluster(pods, nss, resolved); err != nil {
		return err
	}
	return a.enforcer.Sync(ctx, resolved)
}

// CleanupNetworkPolicy deletes the policy table, if there is one: what
// podnetd does when it starts with NetworkPolicy turned off. Every pod of
// the node is open afterwards.
func CleanupNetworkPolicy(ctx context.Context) error {
	nft, err := knftables.New(knftables.InetFamily, policy.TableName)
	if err != nil {
		return fmt.Errorf("nftables for NetworkPolicy: %w", err)
	}
	return policy.NewEnforcer(nft, policy.Config{}).Cleanup(ctx)
}

// logDrops writes one line per logged drop (policy.ReadDrops), naming both
// ends and the policies that isolate the pod that refused it, until ctx
// ends.
func (a *Agent) logDrops(ctx context.Context) {
	log := a.log.With("part", "network-policy")
	err := policy.ReadDrops(ctx, policy.LogGroup, func(d policy.Drop) {
		info, ok := a.enforcer.Chain(d.Chain)
		if !ok {
			log.Info("policy drop", "chain", d.Chain, "src", d.Src, "dst", d.Dst, "proto", protoName(d.Proto), "port", d.Port)
			return
		}
		if info.Cluster != nil {
			log.Info("policy drop", "direction", info.Direction.String(), "policy", info.Cluster.String(),
				"src", d.Src, "src_pod", a.podAt(d.Src), "dst", d.Dst, "dst_pod", a.podAt(d.Dst),
				"proto", protoName(d.Proto), "port", d.Port)
			return
		}
		by := "default deny of " + info.Pod.String() + " (" + info.Direction.String() + ") by " + strings.Join(info.By, ",")
		log.Info("policy drop", "direction", info.Direction.String(), "pod", info.Pod.String(), "policy", by,
			"src", d.Src, "src_pod", a.podAt(d.Src), "dst", d.Dst, "dst_pod", a.podAt(d.Dst),
			"proto", protoName(d.Proto), "port", d.Port)
	})
	if err != nil {
		log.Warn("no deny log: NFLOG cannot be read (drops are still counted)", "err", err)
	}
}

func protoName(p uint8) string {
	switch p {
	case 1:
		return "icmp"
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 132:
		return "sctp"
	}
	return fmt.Sprint(p)
}

// podAt names the pod with address ip ("" if none is known).
func (a *Agent) podAt(ip netip.Addr) string {
	a.pendingMu.Lock()
	defer a.pendingMu.Unlock()
	return a.podIPs[ip]
}

// dropsCollector is podnet_policy_drops_total, read from the pod chains'
// counters at each scrape: the packets dropped, by the namespace of the
// pod that refused them, the policies that isolate it, and the direction.
type dropsCollector struct {
	a    *Agent
	desc *prometheus.Desc
}

func newDropsCollector(a *Agent) *dropsCollector {
	return &dropsCollector{a: a, desc: prometheus.NewDesc("podnet_policy_drops_total",
		"Packets dropped by NetworkPolicy on this node, by the namespace of the pod that refused them (ingress) or sent them (egress), the policies isolating it (comma-separated), and the direction; a ClusterNetworkPolicy Deny rule counts with no namespace and policy clusternetworkpolicy/<name>.",
		[]string{"namespace", "policy", "direction"}, nil)}
}

func (c *dropsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *dropsCollector) Collect(ch chan<- prometheus.Metric) {
	if c.a.enforcer == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	counts, err := c.a.enforcer.Drops(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	sum := map[[3]string]uint64{}
	for chain, n := range counts {
		info, ok := c.a.enforcer.Chain(chain)
		if !ok {
			continue
		}
		if info.Cluster != nil { // cluster-scoped: no namespace
			sum[[3]string{"", "clusternetworkpolicy/" + info.Cluster.Policy, info.Direction.String()}] += n
			continue
		}
		var names []string
		for _, b := range info.By {
			names = append(names, b[strings.Index(b, "/")+1:])
		}
		sum[[3]string{info.Pod.Namespace, strings.Join(names, ","), info.Direction.String()}] += n
	}
	for k, n := range sum {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n), k[0], k[1], k[2])
	}
}

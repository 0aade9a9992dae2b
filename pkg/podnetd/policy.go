package podnetd

import (
	"context"
	"fmt"
	"os"
	"strings"

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
	local := func(p *corev1.Pod) bool { return p.Spec.NodeName == a.cfg.NodeName }
	resolved, problems := policy.ResolveFor(nps, a.withPending(pods), nss, local)
	for _, p := range problems {
		a.log.Warn("networkpolicy cannot be read; the pods it selects allow nothing it names", "policy", p.Policy.String(), "err", p.Err)
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

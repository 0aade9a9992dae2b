package podnetd

import (
	"context"
	"fmt"
	"sort"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	cnpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"
	cnpinformers "sigs.k8s.io/network-policy-api/pkg/client/informers/externalversions"
	cnplisters "sigs.k8s.io/network-policy-api/pkg/client/listers/apis/v1beta1"

	"github.com/podnet/podnet/pkg/policy"
)

// ClusterNetworkPolicy (policy.networking.k8s.io/v1beta1) is a CRD: a
// cluster may not have it. podnetd asks the API server's discovery at
// start and then every cnpDiscoveryPeriod; once the resource is served
// it starts an informer, and the NetworkPolicy loop resolves both. Until
// then there is no ClusterNetworkPolicy to enforce: none can exist.

// WithClusterPolicyClient gives the NetworkPolicy engine a client for
// ClusterNetworkPolicies (nil, the default: NetworkPolicy only).
func WithClusterPolicyClient(c cnpclient.Interface) Option {
	return func(a *Agent) { a.cnpClient = c }
}

const cnpDiscoveryPeriod = 30 * time.Second

// cnpWatch is the ClusterNetworkPolicy informer, once the resource exists.
type cnpWatch struct {
	lister cnplisters.ClusterNetworkPolicyLister
	synced cache.InformerSynced
}

// servesCNP says whether the API server serves clusternetworkpolicies in
// policy.networking.k8s.io/v1beta1.
func (a *Agent) servesCNP() (bool, error) {
	rl, err := a.cnpClient.Discovery().ServerResourcesForGroupVersion(cnpv1.GroupVersion.String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, r := range rl.APIResources {
		if r.Name == "clusternetworkpolicies" {
			return true, nil
		}
	}
	return false, nil
}

// watchClusterPolicies starts the informer if the resource is served now;
// it says whether it did.
func (a *Agent) watchClusterPolicies(ctx context.Context) bool {
	ok, err := a.servesCNP()
	if err != nil {
		a.log.Warn("cannot tell whether the API server serves ClusterNetworkPolicy; asking again later", "part", "network-policy", "err", err)
		return false
	}
	if !ok {
		return false
	}
	f := cnpinformers.NewSharedInformerFactory(a.cnpClient, 0)
	inf := f.Policy().V1beta1().ClusterNetworkPolicies()
	_, _ = inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { a.pokePolicy() }, UpdateFunc: func(any, any) { a.pokePolicy() }, DeleteFunc: func(any) { a.pokePolicy() }})
	w := &cnpWatch{lister: inf.Lister(), synced: inf.Informer().HasSynced}
	f.Start(ctx.Done())
	go func() { <-ctx.Done(); f.Shutdown() }()
	a.cnpw.Store(w)
	a.log.Info("ClusterNetworkPolicy served by the API server: enforcing it", "part", "network-policy", "version", cnpv1.GroupVersion.String())
	a.pokePolicy()
	return true
}

// discoverClusterPolicies asks again every cnpDiscoveryPeriod until the
// resource is served.
func (a *Agent) discoverClusterPolicies(ctx context.Context) {
	t := time.NewTicker(cnpDiscoveryPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if a.watchClusterPolicies(ctx) {
				return
			}
		}
	}
}

// clusterPolicies lists the ClusterNetworkPolicies; none while the
// resource is not served. An informer not synced yet is an error: a sync
// from a partial view would open pods a policy closes.
func (a *Agent) clusterPolicies() ([]*cnpv1.ClusterNetworkPolicy, error) {
	w := a.cnpw.Load()
	if w == nil {
		return nil, nil
	}
	if !w.synced() {
		return nil, fmt.Errorf("the ClusterNetworkPolicy informer has not synced yet")
	}
	return w.lister.List(labels.Everything())
}

// hasClusterPolicies says whether any ClusterNetworkPolicy exists (or
// cannot be told): a new pod then waits for its policy pass.
func (a *Agent) hasClusterPolicies() bool {
	cnps, err := a.clusterPolicies()
	return err != nil || len(cnps) > 0
}

// resolveCluster adds the ClusterNetworkPolicy verdicts to resolved.
func (a *Agent) resolveCluster(pods []*corev1.Pod, nss []*corev1.Namespace, resolved map[types.NamespacedName]*policy.PodPolicy) error {
	cnps, err := a.clusterPolicies()
	if err != nil || len(cnps) == 0 {
		return err
	}
	nodes, err := a.nodes.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	byName := map[string]*cnpv1.ClusterNetworkPolicy{}
	for _, c := range cnps {
		byName[c.Name] = c
	}
	var problems []policyProblem
	for _, p := range policy.ResolveCluster(cnps, pods, nss, nodes, resolved) {
		c := byName[p.Policy]
		if c == nil {
			continue
		}
		problems = append(problems, policyProblem{
			ref: &corev1.ObjectReference{APIVersion: cnpv1.GroupVersion.String(), Kind: "ClusterNetworkPolicy", Name: c.Name, UID: c.UID, ResourceVersion: c.ResourceVersion},
			msg: p.Error()})
	}
	a.warnPolicies("cnp", problems)
	return nil
}

// policyProblem is a policy that cannot be read as written, with the
// object to put the Warning event on.
type policyProblem struct {
	ref *corev1.ObjectReference
	msg string
}

// warnPolicies logs each problem and records a Warning event
// (PolicyNotEnforceable) on its policy — once, while it stays the same:
// problems of the kind (NetworkPolicy or ClusterNetworkPolicy) seen in the
// last pass are not told again.
func (a *Agent) warnPolicies(kind string, problems []policyProblem) {
	a.warnedMu.Lock()
	defer a.warnedMu.Unlock()
	if a.warned == nil {
		a.warned = map[string]map[string]bool{}
	}
	now := map[string]bool{}
	sort.Slice(problems, func(i, j int) bool { return problems[i].msg < problems[j].msg })
	for _, p := range problems {
		now[p.msg] = true
		if a.warned[kind][p.msg] {
			continue
		}
		a.log.Warn("policy cannot be enforced as written; it fails closed", "part", "network-policy", "problem", p.msg)
		if a.events != nil {
			a.events.Event(p.ref, corev1.EventTypeWarning, "PolicyNotEnforceable", p.msg+" (podnet fails closed: see docs/policy.md)")
		}
	}
	a.warned[kind] = now
}

// cnpState is the Agent's ClusterNetworkPolicy state.
type cnpState struct {
	cnpClient cnpclient.Interface
	cnpw      atomic.Pointer[cnpWatch]
}

package podnetd

import (
	"context"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/podnet/podnet/pkg/announce"
)

// Run runs until ctx ends, and returns nil then (an error only at once, if
// the Service proxy cannot be built); every failure meanwhile is retried
// (see loop). The dataplane is left in place when it returns: a restarted
// agent adopts it and fixes only what differs.
//
// The network (backend, masquerade, Node facts), the Service proxy and
// the NetworkPolicy engine run as loops of their own, each on its own
// events, so that a burst of Service changes never delays a route or a
// policy, and a slow backend never delays a Service. Neither writes anything before every informer it reads has
// synced (a sync from a partial view would remove what is not seen yet),
// and neither waits for the other's informers.
func (a *Agent) Run(ctx context.Context) error {
	f := informers.NewSharedInformerFactory(a.client, 0)
	inf := f.Core().V1().Nodes()
	dirty, poke := dirtyChan()
	proxyDirty, pokeProxy := dirtyChan()
	_, _ = inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { poke(); pokeProxy() }, UpdateFunc: func(any, any) { poke(); pokeProxy() }, DeleteFunc: func(any) { poke(); pokeProxy() }})
	a.nodes = inf.Lister()
	var proxySynced []cache.InformerSynced
	if a.cfg.ServiceProxy {
		if err := a.newProxier(); err != nil {
			return err
		}
		if a.closeHealth != nil {
			defer func() { _ = a.closeHealth() }()
		}
		pf := informers.NewSharedInformerFactoryWithOptions(a.client, 0, informers.WithTweakListOptions(proxyListFilter))
		a.pw = watchServices(pf, pokeProxy)
		proxySynced = append(a.pw.synced, inf.Informer().HasSynced)
		pf.Start(ctx.Done())
		defer pf.Shutdown()
	}
	var policySynced []cache.InformerSynced
	policyDirty, pokePolicy := dirtyChan()
	a.pokePolicy = pokePolicy
	if a.cfg.NetworkPolicy {
		if err := a.newEnforcer(); err != nil {
			return err
		}
		nf := informers.NewSharedInformerFactory(a.client, 0)
		a.polw = watchPolicies(nf, pokePolicy)
		// Nodes are peers of ClusterNetworkPolicy egress rules.
		_, _ = inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(any) { pokePolicy() }, UpdateFunc: func(any, any) { pokePolicy() }, DeleteFunc: func(any) { pokePolicy() }})
		policySynced = append(slices.Clone(a.polw.synced), inf.Informer().HasSynced)
		nf.Start(ctx.Done())
		defer nf.Shutdown()
		if a.policyNFT == nil {
			go a.logDrops(ctx)
		}
	}
	spoofDirty, pokeSpoof := dirtyChan()
	a.pokeSpoof = pokeSpoof
	if a.cfg.AntiSpoofing && !a.cfg.ProxyOnly {
		if err := a.newGuard(); err != nil {
			return err
		}
		if a.spoofNFT[0] == nil {
			go a.logSpoofDrops(ctx)
		}
	}
	if a.cfg.AgentSocket != "" {
		go func() {
			if err := announce.Listen(ctx, a.cfg.AgentSocket, announce.Handler(a.programPod)); err != nil {
				a.log.Error("the CNI plugin cannot announce new pods: they cannot start until this is fixed", "err", err)
			}
		}()
	}
	if a.events == nil && !a.cfg.ProxyOnly {
		b := record.NewBroadcaster(record.WithContext(ctx))
		b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: a.client.CoreV1().Events("")})
		defer b.Shutdown()
		a.events = b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "podnetd", Host: a.cfg.NodeName})
	}
	f.Start(ctx.Done())
	defer f.Shutdown()
	var wg sync.WaitGroup
	if a.cfg.ServiceProxy {
		// The proxy waits for its own informers only: Services it cannot
		// list (a missing RBAC rule, say) must not hold back the pod
		// network.
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.log.Info("service proxy: waiting for the Service, EndpointSlice and Node informers to sync")
			if cache.WaitForCacheSync(ctx.Done(), proxySynced...) {
				a.loop(ctx, "service proxy", proxyDirty, a.proxyPass)
			}
		}()
	}
	if a.cfg.NetworkPolicy {
		// Nothing is written before every policy, pod and namespace is
		// known: a sync from a partial view would open isolated pods.
		// Until then the table a previous podnetd left stays as it was.
		wg.Add(1)
		go func() {
			defer wg.Done()
			synced := policySynced
			if a.cnpClient != nil {
				if a.watchClusterPolicies(ctx) {
					synced = append(synced, a.cnpw.Load().synced)
				} else {
					go a.discoverClusterPolicies(ctx)
				}
			}
			a.log.Info("network policy: waiting for the NetworkPolicy, ClusterNetworkPolicy, Pod, Namespace and Node informers to sync")
			if cache.WaitForCacheSync(ctx.Done(), synced...) {
				a.loop(ctx, "network policy", policyDirty, a.policyPass)
			}
		}()
	}
	if a.guard != nil {
		// The node's own state is the truth here: no informer to wait for.
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.loop(ctx, "anti-spoofing", spoofDirty, a.spoofPass)
		}()
	}
	if !a.cfg.ProxyOnly {
		a.log.Info("waiting for the node informer to sync")
		if cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
			a.loop(ctx, "network", dirty, a.pass)
		}
	}
	wg.Wait()
	return nil
}

// dirtyChan is a level trigger: poke marks it, however often, and one
// receive clears it.
func dirtyChan() (<-chan struct{}, func()) {
	dirty := make(chan struct{}, 1)
	return dirty, func() {
		select {
		case dirty <- struct{}{}:
		default:
		}
	}
}

// loop runs pass on every event, at most every minInterval, and at least
// every resync period. A failed pass is retried after a backoff delay,
// whether or not an event comes; an event or a resync tick still runs a
// pass sooner (it may bring what the failed pass lacked). The informers
// keep their caches while the API server is unreachable, so every pass,
// retries included, keeps the dataplane equal to the last known objects.
func (a *Agent) loop(ctx context.Context, what string, dirty <-chan struct{}, pass func(context.Context) (bool, error)) {
	resync := time.NewTicker(a.cfg.Resync)
	defer resync.Stop()
	retry := backoff{first: a.retryDelay, max: a.cfg.Resync}
	var last time.Time
	for {
		if !sleep(ctx, minInterval-time.Since(last)) {
			return
		}
		last = time.Now()
		var again <-chan time.Time
		ran, err := pass(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			return // the error is most likely the cancellation
		case err != nil:
			d := retry.next()
			a.log.Error("sync failed; retrying", "part", what, "err", err, "retry_in", d, "failures", retry.failures)
			again = time.After(d)
		case ran && retry.failures > 0:
			a.log.Info("sync succeeded again", "part", what, "failures", retry.failures)
			retry.reset()
		}
		select {
		case <-ctx.Done():
			return
		case <-dirty:
		case <-resync.C:
		case <-again:
		}
	}
}

// pass runs one sync and records its outcome in the metrics and the
// health. A pass that had nothing to do (this node is not set up yet)
// records nothing and reports false.
func (a *Agent) pass(ctx context.Context) (bool, error) {
	start := time.Now()
	ran, err := a.sync(ctx)
	if !ran {
		return false, nil
	}
	a.metrics.syncDuration.Observe(time.Since(start).Seconds())
	a.Health.Record(err)
	if err != nil {
		a.metrics.syncErrors.Inc()
	}
	return true, err
}

// backoff is the delay before retrying a failed pass: first, doubled with
// each consecutive failure, at most max; reset by a success.
type backoff struct {
	first, max time.Duration
	delay      time.Duration // the last delay given
	failures   int           // consecutive failures so far
}

// next counts a failure and returns the delay before the retry.
func (b *backoff) next() time.Duration {
	b.failures++
	if b.delay == 0 {
		b.delay = b.first
	} else {
		b.delay *= 2
	}
	b.delay = min(b.delay, b.max)
	return b.delay
}

func (b *backoff) reset() { b.delay, b.failures = 0, 0 }

// sleep waits d, or less if ctx ends first; it reports whether ctx is
// still live.
func sleep(ctx context.Context, d time.Duration) bool {
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
	return ctx.Err() == nil
}

// policyStaleRetry is when the NetworkPolicy engine syncs again to delete
// the chains a sync left stale, if no event comes first.
const policyStaleRetry = 1100 * time.Millisecond

// pokePolicyLater pokes the NetworkPolicy loop after d.
func (a *Agent) pokePolicyLater(d time.Duration) { time.AfterFunc(d, a.pokePolicy) }

package podnetd

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

// Run runs until ctx ends. The dataplane is left in place when it returns:
// a restarted agent adopts it and fixes only what differs. Run returns an
// error only if ctx ends before the informer has synced; every failure
// after that is retried (see loop).
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
	if a.events == nil {
		b := record.NewBroadcaster(record.WithContext(ctx))
		b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: a.client.CoreV1().Events("")})
		defer b.Shutdown()
		a.events = b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "podnetd", Host: a.cfg.NodeName})
	}
	f.Start(ctx.Done())
	defer f.Shutdown()
	a.log.Info("waiting for the node informer to sync")
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		return ctx.Err()
	}
	a.loop(ctx, dirty)
	return nil
}

// loop runs a pass on every event, at most every minInterval, and at least
// every resync period. A failed pass is retried after a backoff delay,
// whether or not an event comes; an event or a resync tick still runs a
// pass sooner (it may bring what the failed pass lacked). The informer
// keeps its cache while the API server is unreachable, so every pass,
// retries included, keeps the dataplane equal to the last known Nodes.
func (a *Agent) loop(ctx context.Context, dirty <-chan struct{}) {
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
		ran, err := a.pass(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			return // the error is most likely the cancellation
		case err != nil:
			d := retry.next()
			a.log.Error("sync failed; retrying", "err", err, "retry_in", d, "failures", retry.failures)
			again = time.After(d)
		case ran && retry.failures > 0:
			a.log.Info("sync succeeded again", "failures", retry.failures)
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

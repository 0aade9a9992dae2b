package policy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/knftables"
)

// DefaultFullSyncPeriod is how often Sync rewrites the whole table even
// when nothing changed, repairing drift that partial syncs do not see.
const DefaultFullSyncPeriod = time.Minute

// staleChainDelay is how long an unused pod chain stays (flushed: it
// drops nothing) before it is deleted. Before Linux 6.2 a chain that a
// map element referred to cannot be deleted in the transaction that
// removes the element (kube-proxy's nftables proxier waits the same way).
const staleChainDelay = time.Second

// Config configures an Enforcer.
type Config struct {
	// FullSyncPeriod is the longest time between full syncs (default
	// DefaultFullSyncPeriod).
	FullSyncPeriod time.Duration
	// Log is the logger (default: discard).
	Log *slog.Logger
	// Metrics is where the metrics are registered (nil: not registered).
	Metrics prometheus.Registerer
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Conntrack cuts the flows a tightened policy forbids (nil: none).
	Conntrack Conntrack
}

// Enforcer keeps the policy table equal to the PodPolicies of this node's
// pods. It is safe for concurrent use; syncs are serialized.
type Enforcer struct {
	nft     knftables.Interface
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	mu       sync.Mutex
	written  map[string]*podChain // the pod chains the last successful sync left
	maps     [2]map[string]string // the dispatch maps it left
	stale    map[string]time.Time // pod chains flushed, to delete once old enough
	lastFull time.Time
	needFull bool
}

// NewEnforcer returns an Enforcer working through nft, which must be
// bound to (knftables.InetFamily, TableName): knftables.New, or
// knftables.NewFake with the same in tests.
func NewEnforcer(nft knftables.Interface, cfg Config) *Enforcer {
	if cfg.FullSyncPeriod <= 0 {
		cfg.FullSyncPeriod = DefaultFullSyncPeriod
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Enforcer{nft: nft, cfg: cfg, log: cfg.Log, metrics: newMetrics(cfg.Metrics),
		stale: map[string]time.Time{}, needFull: true}
}

// Sync makes the table enforce pods: the PodPolicies of the pods of this
// node (pods elsewhere are policed by their own node). The first Sync, one
// after a failure and one every FullSyncPeriod rewrite the whole table in
// one transaction, reconciled against what the kernel holds; the others
// write only the pod chains and map elements that differ from what was
// last written. Every change is one transaction: no packet sees a half-
// written policy.
//
// pods must come from caches that have synced: a Sync from a partial view
// would open the pods not seen yet.
func (e *Enforcer) Sync(ctx context.Context, pods map[types.NamespacedName]*PodPolicy) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	start := e.cfg.Now()
	want := buildDesired(pods)
	mode := "partial"
	full := e.needFull || start.Sub(e.lastFull) >= e.cfg.FullSyncPeriod
	var err error
	if !full {
		if err = e.partial(ctx, want, start); err != nil {
			e.metrics.syncs.WithLabelValues("partial", "error").Inc()
			e.log.Warn("partial policy sync failed; syncing the whole table", "err", err)
		}
	}
	if full || err != nil {
		mode = "full"
		err = e.full(ctx, want, start)
	}
	e.metrics.observe(mode, err, e.cfg.Now().Sub(start))
	if err != nil {
		e.needFull = true
		return err
	}
	old := e.written
	e.written, e.maps, e.needFull = want.chains, want.maps, false
	e.cut(old, want)
	if mode == "full" {
		e.lastFull = start
	}
	e.metrics.size(want)
	return nil
}

// full rewrites the whole table in one transaction, against what the
// kernel holds: every pod chain of ours that is not wanted is flushed (and
// deleted once it has been unused long enough). If nft refuses because an
// object of ours has another definition, the table is deleted and
// re-created in the same transaction, so no packet ever sees it missing.
func (e *Enforcer) full(ctx context.Context, want *desired, now time.Time) error {
	have, err := e.nft.ListAll(ctx)
	if err != nil && !knftables.IsNotFound(err) {
		return fmt.Errorf("list table inet %s: %w", TableName, err)
	}
	tx := e.nft.NewTransaction()
	stale := e.writeFull(tx, want, have, now)
	err = e.nft.Run(ctx, tx)
	if err != nil && ctx.Err() == nil {
		e.log.Warn("policy table differs from podnet's definition; re-creating it", "table", TableName, "err", err)
		tx = e.nft.NewTransaction()
		tx.Add(&knftables.Table{})
		tx.Delete(&knftables.Table{})
		stale = e.writeFull(tx, want, nil, now)
		if err2 := e.nft.Run(ctx, tx); err2 != nil {
			return fmt.Errorf("sync table inet %s: %w (and re-creating it: %v)", TableName, err, err2)
		}
		err = nil
	}
	if err != nil {
		return fmt.Errorf("sync table inet %s: %w", TableName, err)
	}
	e.stale = stale
	return nil
}

// writeFull adds to tx the whole table: the skeleton, every wanted pod
// chain, the maps refilled; of the pod chains in have that are not wanted,
// those stale long enough are deleted with their sets, the others flushed.
// It returns the stale chains left.
func (e *Enforcer) writeFull(tx *knftables.Transaction, want *desired, have map[string][]string, now time.Time) map[string]time.Time {
	writeSkeleton(tx)
	for _, c := range sortedChains(want.chains) {
		writePodChain(tx, c)
	}
	for d := range want.maps {
		tx.Flush(&knftables.Map{Name: mapName(Direction(d))})
		for ip, chain := range want.maps[d] {
			tx.Add(mapElement(Direction(d), ip, chain))
		}
	}
	stale := map[string]time.Time{}
	sets, maps := map[string][]string{}, map[string][]string{}
	for _, s := range have["set"] {
		if isPodObject(s) {
			sets[podChainOf(s)] = append(sets[podChainOf(s)], s)
		}
	}
	for _, m := range have["map"] {
		if isPodObject(m) {
			maps[podChainOf(m)] = append(maps[podChainOf(m)], m)
		}
	}
	// A stale pod chain's maps are flushed with it, so that the deny
	// chains they go to are free to go.
	for _, ch := range have["chain"] {
		if !isPodObject(ch) || want.chains[ch] != nil {
			continue
		}
		since, known := e.stale[ch]
		if known && now.Sub(since) >= staleChainDelay {
			tx.Delete(&knftables.Chain{Name: ch})
			for _, s := range sets[ch] {
				tx.Delete(&knftables.Set{Name: s})
			}
			for _, m := range maps[ch] {
				tx.Delete(&knftables.Map{Name: m})
			}
			if slices.Contains(have["counter"], ch) {
				tx.Delete(&knftables.Counter{Name: ch})
			}
			continue
		}
		if !known {
			since = now
		}
		tx.Flush(&knftables.Chain{Name: ch})
		for _, m := range maps[ch] {
			tx.Flush(&knftables.Map{Name: m})
		}
		stale[ch] = since
	}
	// Sets, maps and counters whose chain is gone already.
	for ch, ss := range sets {
		if want.chains[ch] != nil || slices.Contains(have["chain"], ch) {
			continue
		}
		for _, s := range ss {
			tx.Delete(&knftables.Set{Name: s})
		}
	}
	for ch, ms := range maps {
		if want.chains[ch] != nil || slices.Contains(have["chain"], ch) {
			continue
		}
		for _, m := range ms {
			tx.Delete(&knftables.Map{Name: m})
		}
	}
	for _, ctr := range have["counter"] {
		if isPodObject(ctr) && want.chains[ctr] == nil && !slices.Contains(have["chain"], ctr) {
			tx.Delete(&knftables.Counter{Name: ctr})
		}
	}
	return stale
}

// partial writes what differs from the last successful sync: changed pod
// chains, map elements added, changed or removed, chains no longer used
// flushed, and chains stale long enough deleted.
func (e *Enforcer) partial(ctx context.Context, want *desired, now time.Time) error {
	tx := e.nft.NewTransaction()
	for _, c := range sortedChains(want.chains) {
		if old := e.written[c.name]; old == nil || old.fingerprint != c.fingerprint {
			writePodChain(tx, c)
		}
		delete(e.stale, c.name)
	}
	for d := range want.maps {
		dir := Direction(d)
		for ip, chain := range e.maps[d] {
			if want.maps[d][ip] != chain {
				tx.Delete(mapElement(dir, ip, chain))
			}
		}
		for ip, chain := range want.maps[d] {
			if e.maps[d][ip] != chain {
				tx.Add(mapElement(dir, ip, chain))
			}
		}
	}
	stale := map[string]time.Time{}
	for name := range e.written {
		if want.chains[name] == nil {
			tx.Flush(&knftables.Chain{Name: name})
			_, maps := objects(name)
			for _, m := range maps {
				tx.Flush(&knftables.Map{Name: m})
			}
			stale[name] = now
		}
	}
	for name, since := range e.stale {
		if want.chains[name] != nil {
			continue
		}
		if now.Sub(since) >= staleChainDelay {
			tx.Delete(&knftables.Chain{Name: name})
			sets, maps := objects(name)
			for _, s := range sets {
				tx.Delete(&knftables.Set{Name: s})
			}
			for _, m := range maps {
				tx.Delete(&knftables.Map{Name: m})
			}
			tx.Delete(&knftables.Counter{Name: name})
			continue
		}
		stale[name] = since
	}
	if tx.NumOperations() > 0 {
		if err := e.nft.Run(ctx, tx); err != nil {
			return fmt.Errorf("partial sync table inet %s: %w", TableName, err)
		}
	}
	e.stale = stale
	return nil
}

// cut deletes the conntrack entries of the pods whose chains changed (or
// appeared) that their new policy forbids. Pods whose chains are the same
// keep every flow: it was allowed before and still is. Errors are logged:
// the table itself is right.
func (e *Enforcer) cut(old map[string]*podChain, want *desired) {
	if e.cfg.Conntrack == nil {
		return
	}
	var changed [2]map[netip.Addr]*podChain
	n := 0
	for name, c := range want.chains {
		if o := old[name]; c.pp == nil || o != nil && o.fingerprint == c.fingerprint {
			continue
		}
		if changed[c.dir] == nil {
			changed[c.dir] = map[netip.Addr]*podChain{}
		}
		for _, ip := range c.ips {
			changed[c.dir][ip] = c
			n++
		}
	}
	if n == 0 {
		return
	}
	forbid := func(f Flow) bool {
		if c := changed[Egress][f.Src]; c != nil && !c.pp.allowsAll(Egress, f.Dst, f.Proto, f.Port) {
			return true
		}
		c := changed[Ingress][f.Dst]
		return c != nil && !c.pp.allowsAll(Ingress, f.Src, f.Proto, f.Port)
	}
	cut, err := e.cfg.Conntrack.Cut(forbid)
	e.metrics.cut.Add(float64(cut))
	if err != nil {
		e.log.Warn("cutting the connections a changed policy forbids", "err", err)
	} else if cut > 0 {
		e.log.Info("cut connections the changed policies forbid", "flows", cut)
	}
}

// ChainInfo is what a pod chain, or a ClusterNetworkPolicy rule's deny
// chain, stands for.
type ChainInfo struct {
	Pod       types.NamespacedName // zero for a deny chain
	Direction Direction
	By        []string // the policies that isolate the pod (namespace/name)
	Cluster   *RuleRef // for a deny chain: its rule
}

// Chain says what the pod chain name (a deny log's prefix) stands for, as
// the last successful sync wrote it.
func (e *Enforcer) Chain(name string) (ChainInfo, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.written[name]
	if c == nil {
		return ChainInfo{}, false
	}
	return ChainInfo{Pod: c.pod, Direction: c.dir, By: c.by, Cluster: c.deny}, true
}

// Drops reads the pod chains' drop counters: packets dropped per chain.
func (e *Enforcer) Drops(ctx context.Context) (map[string]uint64, error) {
	cs, err := e.nft.ListCounters(ctx)
	if err != nil {
		return nil, fmt.Errorf("list counters of table inet %s: %w", TableName, err)
	}
	out := map[string]uint64{}
	for _, c := range cs {
		if isPodObject(c.Name) && c.Packets != nil {
			out[c.Name] = *c.Packets
		}
	}
	return out, nil
}

// Pending says whether stale chains wait to be deleted: the caller should
// sync again after staleChainDelay even if nothing changes.
func (e *Enforcer) Pending() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.stale) > 0
}

// Cleanup deletes the table (a no-op if there is none): what podnetd does
// when it starts with policy turned off. Every pod is open afterwards.
func (e *Enforcer) Cleanup(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	tx := e.nft.NewTransaction()
	tx.Add(&knftables.Table{})
	tx.Delete(&knftables.Table{})
	if err := e.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("delete table inet %s: %w", TableName, err)
	}
	e.written, e.maps, e.stale, e.needFull = nil, [2]map[string]string{}, map[string]time.Time{}, true
	return nil
}

func mapElement(d Direction, ip, chain string) *knftables.Element {
	return &knftables.Element{Map: mapName(d), Key: []string{ip}, Value: []string{"jump " + chain}}
}

func sortedChains(m map[string]*podChain) []*podChain {
	out := make([]*podChain, 0, len(m))
	for _, c := range m {
		out = append(out, c)
	}
	// by name: the same state gives the same transaction
	slices.SortFunc(out, func(a, b *podChain) int { return strings.Compare(a.name, b.name) })
	return out
}

// metrics are the policy engine's Prometheus metrics.
type metrics struct {
	duration *prometheus.HistogramVec
	syncs    *prometheus.CounterVec
	isolated *prometheus.GaugeVec
	cut      prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "podnet_policy_sync_duration_seconds",
			Help:    "Time of a NetworkPolicy sync, by mode (full: the whole table; partial: changed pods only).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"mode"}),
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podnet_policy_syncs_total",
			Help: "NetworkPolicy syncs by mode and result (a failed partial sync is followed by a full one)."}, []string{"mode", "result"}),
		isolated: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "podnet_policy_isolated_pods",
			Help: "Local pods isolated by some policy after the last successful sync, by direction."}, []string{"direction"}),
		cut: prometheus.NewCounter(prometheus.CounterOpts{Name: "podnet_policy_conntrack_cut_total",
			Help: "Connections cut (conntrack entries deleted) because a changed policy forbids them."}),
	}
	if reg != nil {
		reg.MustRegister(m.duration, m.syncs, m.isolated, m.cut)
	}
	return m
}

func (m *metrics) observe(mode string, err error, d time.Duration) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.duration.WithLabelValues(mode).Observe(d.Seconds())
	m.syncs.WithLabelValues(mode, result).Inc()
}

func (m *metrics) size(want *desired) {
	var n [2]int
	for _, c := range want.chains {
		if c.pp != nil && c.pp.Isolated[c.dir] {
			n[c.dir]++
		}
	}
	m.isolated.WithLabelValues("ingress").Set(float64(n[Ingress]))
	m.isolated.WithLabelValues("egress").Set(float64(n[Egress]))
}

package proxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/knftables"
)

// DefaultFullSyncPeriod is how often Sync rewrites the whole table even
// when nothing changed, repairing drift that partial syncs do not look at.
const DefaultFullSyncPeriod = time.Minute

// DefaultMasqueradeMark is the packet-mark bit that tells postrouting to
// masquerade (kube-proxy's default bit 14, so that tools that know it
// still read podnet's rules right).
const DefaultMasqueradeMark uint32 = 0x4000

// Config configures a Proxier.
type Config struct {
	// Family is the address family (default IPv4).
	Family Family
	// MasqueradeMark is the one-bit packet mark for "masquerade this"
	// (default DefaultMasqueradeMark).
	MasqueradeMark uint32
	// FullSyncPeriod is the longest time between full syncs (default
	// DefaultFullSyncPeriod).
	FullSyncPeriod time.Duration
	// Conntrack clears UDP flows to removed endpoints (nil: none).
	Conntrack Conntrack
	// Health is told each ETP=Local Service's local endpoint count after
	// each successful sync (nil: none).
	Health HealthChecks
	// Log is the logger (default: discard).
	Log *slog.Logger
	// Metrics is where the metrics are registered (nil: not registered).
	Metrics prometheus.Registerer
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Proxier keeps the table equal to a State. It is safe for concurrent
// use; syncs are serialized.
type Proxier struct {
	nft     knftables.Interface
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	mu sync.Mutex
	// What the last successful sync wrote. Partial syncs diff against it.
	written  map[ServicePortName]*portState
	claims   elemClaims         // of the written ports, on map keys
	elems    map[string]elemObj // the map elements written, by id
	node     Node
	lastFull time.Time
	needFull bool
	failed   bool       // the last sync failed: render everything anew
	alloc    *pickAlloc // the pick-map key ranges of the written ports
}

// portState is one Service port as written: the port it was rendered
// from, and the objects.
type portState struct {
	sp   *ServicePort
	objs *portObjects
}

// New returns a Proxier working through nft, which must be bound to
// (cfg.Family.NFT, TableName): knftables.New(proxy.IPv4.NFT,
// proxy.TableName), or knftables.NewFake with the same in tests. Every
// object names its table explicitly, so an Interface bound to another
// table makes Sync fail instead of writing there.
func New(nft knftables.Interface, cfg Config) *Proxier {
	if cfg.Family.NFT == "" {
		cfg.Family = IPv4
	}
	if cfg.MasqueradeMark == 0 {
		cfg.MasqueradeMark = DefaultMasqueradeMark
	}
	if cfg.FullSyncPeriod <= 0 {
		cfg.FullSyncPeriod = DefaultFullSyncPeriod
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Proxier{nft: nft, cfg: cfg, log: cfg.Log, metrics: newMetrics(cfg.Metrics), needFull: true}
}

// RequestFullSync makes the next Sync a full one.
func (p *Proxier) RequestFullSync() {
	p.mu.Lock()
	p.needFull = true
	p.mu.Unlock()
}

// Sync makes the table follow st. The first Sync, one after a failure,
// one after the node facts changed and one every FullSyncPeriod rewrite
// the whole table in one transaction, reconciled against what the kernel
// holds (stale objects removed); the others change only the objects of the
// ports whose desired state differs from what was last written. A partial
// sync that fails is followed at once by a full one.
//
// st must come from caches that have synced: a Sync from a partial view
// would remove the Services not seen yet. Sync keeps references to st's
// ports; do not modify them afterwards.
func (p *Proxier) Sync(ctx context.Context, st *State) error {
	if st == nil || st.Family.NFT != p.cfg.Family.NFT {
		return fmt.Errorf("sync table %s %s: state is not for this family", p.cfg.Family.NFT, TableName)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	start := p.cfg.Now()
	sameNode := p.node.equal(st.Node)
	full := p.needFull || !sameNode || start.Sub(p.lastFull) >= p.cfg.FullSyncPeriod
	ports, changed, err := p.renderAll(st, sameNode && !p.failed)
	if err != nil {
		p.needFull, p.failed = true, true
		return fmt.Errorf("sync table %s %s: %w", p.cfg.Family.NFT, TableName, err)
	}
	mode := "partial"
	if !full {
		if err = p.partial(ctx, ports, changed); err != nil {
			p.metrics.syncs.WithLabelValues("partial", "error").Inc()
			p.log.Warn("partial sync failed; syncing the whole table", "err", err)
		}
	}
	if full || err != nil {
		mode = "full"
		err = p.full(ctx, st, ports)
	}
	p.metrics.observe(mode, err, p.cfg.Now().Sub(start))
	if err != nil {
		p.needFull, p.failed = true, true
		return err
	}
	old := p.written
	p.written, p.node, p.needFull, p.failed = ports, st.Node, false, false
	if mode == "full" {
		p.lastFull = start
	}
	p.metrics.size(p.cfg.Family, st.Node, ports)
	p.afterSync(old, changed, st)
	return nil
}

// renderAll renders every port of st, reusing the objects last written
// for a port whose desired state is unchanged, when reuse is allowed: the
// node facts that shape rules are the same, and the last sync did not
// fail (its allocations may have moved ranges that written ports own;
// without reuse the ranges are allocated anew). changed lists, sorted,
// the ports whose objects are not the ones last written, and those gone;
// they are rendered in that order, so that the same history gives the
// same ranges.
func (p *Proxier) renderAll(st *State, reuse bool) (map[ServicePortName]*portState, []ServicePortName, error) {
	if !reuse || p.alloc == nil {
		p.alloc = newPickAlloc()
	}
	rc := newRenderCtx(p.cfg.Family, st.Node, p.alloc)
	out := make(map[ServicePortName]*portState, len(st.Ports))
	var changed []ServicePortName
	for name, sp := range st.Ports {
		if old := p.written[name]; reuse && old != nil && old.sp.Equal(sp) {
			out[name] = old // the same desired state: the same objects
			continue
		}
		changed = append(changed, name)
	}
	for name := range p.written {
		if st.Ports[name] == nil {
			changed = append(changed, name) // gone
		}
	}
	for _, name := range sortNames(changed) {
		var objs *portObjects
		if sp := st.Ports[name]; sp != nil {
			o, err := render(rc, sp)
			if err != nil {
				return nil, nil, err
			}
			objs, out[name] = o, &portState{sp: sp, objs: o}
		}
		if old := p.written[name]; old != nil && reuse {
			for _, c := range old.objs.picks {
				if objs == nil || !slices.Contains(objs.picks, c) {
					p.alloc.release(c)
				}
			}
		}
	}
	return out, changed, nil
}

// full rewrites the whole table in one transaction. If nft refuses it
// because an object of ours exists with another definition (a base chain
// with another priority, a set of another type), the table is replaced:
// deleted and re-created in the same transaction, so no packet ever sees
// it missing. Affinity sets then start empty; established connections
// keep their NAT, which lives in conntrack.
func (p *Proxier) full(ctx context.Context, st *State, ports map[ServicePortName]*portState) error {
	claims, elems, conflicts := claimAll(ports)
	for _, c := range conflicts {
		p.log.Warn("two Service ports claim the same address and port; the first name keeps it", "conflict", c)
	}
	have, err := p.nft.ListAll(ctx)
	if err != nil && !knftables.IsNotFound(err) {
		return fmt.Errorf("list table %s %s: %w", p.cfg.Family.NFT, TableName, err)
	}
	w := p.writer()
	tx := p.nft.NewTransaction()
	w.full(tx, st.Node, ports, elems, have)
	err = p.nft.Run(ctx, tx)
	if err == nil {
		p.claims, p.elems = claims, elems
		return nil
	}
	if ctx.Err() != nil {
		return p.wrap("sync", err)
	}
	p.log.Warn("proxy table differs from podnet's definition; re-creating it", "table", TableName, "err", err)
	tx = p.nft.NewTransaction()
	tx.Add(w.table())
	tx.Delete(w.table())
	w.full(tx, st.Node, ports, elems, nil)
	if err2 := p.nft.Run(ctx, tx); err2 != nil {
		return fmt.Errorf("sync table %s %s: %w (and re-creating it: %v)", p.cfg.Family.NFT, TableName, err, err2)
	}
	p.claims, p.elems = claims, elems
	return nil
}

// partial writes only what differs from the last successful sync: the
// objects of the changed ports, and the map elements they claim.
func (p *Proxier) partial(ctx context.Context, ports map[ServicePortName]*portState, changed []ServicePortName) error {
	if len(changed) == 0 {
		return nil
	}
	ops, conflicts := p.claims.claimChanges(changed, p.written, ports, p.elems)
	for _, c := range conflicts {
		p.log.Warn("two Service ports claim the same address and port; the first name keeps it", "conflict", c)
	}
	tx := p.nft.NewTransaction()
	p.writer().partial(tx, p.written, ports, changed, ops)
	if tx.NumOperations() > 0 {
		if err := p.nft.Run(ctx, tx); err != nil {
			return p.wrap("partial sync", err)
		}
	}
	for _, e := range ops.del {
		delete(p.elems, e.id)
	}
	for _, e := range ops.add {
		p.elems[e.id] = e
	}
	return nil
}

// Cleanup deletes the table (a no-op if there is none). Connections
// already NATed keep their translation: it lives in conntrack.
func (p *Proxier) Cleanup(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	w := p.writer()
	tx := p.nft.NewTransaction()
	tx.Add(w.table()) // so that the delete is valid if the table is gone
	tx.Delete(w.table())
	if err := p.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("delete table %s %s: %w", p.cfg.Family.NFT, TableName, err)
	}
	p.written, p.claims, p.elems, p.alloc, p.node, p.needFull = nil, nil, nil, nil, Node{}, true
	return nil
}

func (p *Proxier) writer() *writer {
	return &writer{fam: p.cfg.Family, mark: p.cfg.MasqueradeMark}
}

func (p *Proxier) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s table %s %s: %w", op, p.cfg.Family.NFT, TableName, err)
}

// afterSync does what follows a successful sync: conntrack hygiene and
// the health-check counts. Neither fails the sync: the table is right.
func (p *Proxier) afterSync(old map[ServicePortName]*portState, changed []ServicePortName, st *State) {
	if p.cfg.Conntrack != nil {
		if filters := staleFlows(changed, old, p.written, st.Node); len(filters) > 0 {
			n, err := p.cfg.Conntrack.DeleteFlows(filters)
			p.metrics.conntrackDeleted.Add(float64(n))
			if err != nil {
				p.metrics.conntrackErrors.Inc()
				p.log.Warn("clearing stale UDP conntrack entries", "filters", len(filters), "err", err)
			}
		}
	}
	if p.cfg.Health != nil {
		if err := p.cfg.Health.SyncServices(healthServices(st)); err != nil {
			p.log.Warn("health-check node ports", "err", err)
		}
	}
}

// Package masq owns podnet's egress masquerade: the nftables table
// "inet podnet-masq" and nothing else. Traffic from a pod to an address
// outside the cluster CIDRs and the no-masquerade networks (the node
// underlay, say) leaves with the node's address; pod-to-pod and node-to-pod
// traffic is never NATed, so a pod always sees the true source pod IP.
//
// The package is level-triggered: Sync computes the whole desired table
// from a Config and applies it in one nftables transaction, whatever the
// kernel holds now, so it is also how drift is repaired.
//
// The table, as `nft list table inet podnet-masq` shows it:
//
//	table inet podnet-masq {
//		set cluster-v4 { type ipv4_addr; flags interval; elements = { 10.244.0.0/16 } }
//		set cluster-v6 { type ipv6_addr; flags interval; }
//		set no-masq-v4 { type ipv4_addr; flags interval; elements = { 192.168.56.0/24 } }
//		set no-masq-v6 { type ipv6_addr; flags interval; }
//		chain postrouting {
//			type nat hook postrouting priority srcnat; policy accept;
//			ip daddr @cluster-v4 return
//			ip6 daddr @cluster-v6 return
//			ip daddr @no-masq-v4 return
//			ip6 daddr @no-masq-v6 return
//			ip saddr @cluster-v4 masquerade fully-random
//			ip6 saddr @cluster-v6 masquerade fully-random
//		}
//	}
//
// The rules are static; only set elements follow the Config, so the rule
// count does not grow with the number of CIDRs.
package masq

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"

	"sigs.k8s.io/knftables"
)

// The table podnet's masquerade lives in. Its own table, not one shared
// with the Service proxy or NetworkPolicy: each concern flushes and
// rewrites only what it owns, and Cleanup is one `delete table`. The inet
// family holds IPv4 and IPv6 in one chain (a set, though, has one address
// family, hence a v4 and a v6 set of each kind).
const (
	Family    = knftables.InetFamily
	TableName = "podnet-masq"
)

// Object names inside the table.
const (
	chainName   = "postrouting"
	clusterV4   = "cluster-v4"
	clusterV6   = "cluster-v6"
	noMasqV4    = "no-masq-v4"
	noMasqV6    = "no-masq-v6"
	tableRemark = "podnet: egress masquerade (managed by podnetd; edits are overwritten)"
)

// Config is the whole desired masquerade state.
type Config struct {
	// ClusterCIDRs are the pod networks (10.244.0.0/16): traffic from them
	// to anywhere not listed here or in NoMasquerade is masqueraded, and
	// traffic to them is never NATed. Empty means masquerade nothing.
	ClusterCIDRs []netip.Prefix
	// NoMasquerade are further destinations pods reach with their own
	// address, e.g. the node underlay 192.168.56.0/24.
	NoMasquerade []netip.Prefix
}

// Masq programs the masquerade table through a knftables.Interface.
type Masq struct {
	nft knftables.Interface
	log *slog.Logger
	mu  sync.Mutex // one transaction at a time
}

// Option configures a Masq.
type Option func(*Masq)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(m *Masq) { m.log = l } }

// New returns a Masq that works through nft, which must be bound to
// (Family, TableName): knftables.New(masq.Family, masq.TableName), or
// knftables.NewFake with the same arguments in tests. Every object Masq
// writes names that table explicitly, so an Interface bound to any other
// table makes Sync fail instead of touching it.
func New(nft knftables.Interface, opts ...Option) *Masq {
	m := &Masq{nft: nft, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, o := range opts {
		o(m)
	}
	return m
}

// Sync makes the table exactly what cfg asks for. It is idempotent, and it
// repairs drift: a deleted table, a flushed chain or set, a removed rule, a
// stray object in the table. Bad input is an error and changes nothing.
func (m *Masq) Sync(ctx context.Context, cfg Config) error {
	want, err := desired(cfg)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()

	// Reconcile against what the kernel holds now: anything in our table
	// that we would not write is stale and goes (last, see below).
	have, err := m.nft.ListAll(ctx)
	if err != nil && !knftables.IsNotFound(err) {
		return fmt.Errorf("list table %s %s: %w", Family, TableName, err)
	}
	tx := m.nft.NewTransaction()
	writeTable(tx, want, staleObjects(have))
	err = m.nft.Run(ctx, tx)
	if err == nil || ctx.Err() != nil {
		return wrap(err)
	}

	// `add` leaves an existing object's definition alone, and nft refuses
	// one that differs from ours (a set of another type, a chain with
	// another hook or priority: "File exists", "Operation not supported").
	// Such a table is replaced whole: delete and re-create in the same
	// transaction, so no packet ever sees the table missing. (`add` first
	// makes the `delete` valid whether or not the table exists; nft
	// `destroy` would need nft >= 1.0.8.)
	m.log.Warn("masquerade table differs from podnet's definition; re-creating it", "table", TableName, "err", err)
	tx = m.nft.NewTransaction()
	tx.Add(table())
	tx.Delete(table())
	writeTable(tx, want, nil)
	if err2 := m.nft.Run(ctx, tx); err2 != nil {
		return fmt.Errorf("sync table %s %s: %w (and re-creating it: %v)", Family, TableName, err, err2)
	}
	return nil
}

// Cleanup deletes the table (a no-op if there is none). Connections
// already masqueraded keep their translation: it lives in conntrack.
func (m *Masq) Cleanup(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	tx := m.nft.NewTransaction()
	tx.Add(table()) // so that the delete is valid if the table is already gone
	tx.Delete(table())
	if err := m.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("delete table %s %s: %w", Family, TableName, err)
	}
	return nil
}

func wrap(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("sync table %s %s: %w", Family, TableName, err)
}

// state is the desired content of the sets: normalized prefixes as nft
// elements, keyed by set name.
type state map[string][]string

// desired validates cfg and computes the set contents.
func desired(cfg Config) (state, error) {
	c4, c6, err := splitFamilies("cluster CIDR", cfg.ClusterCIDRs)
	if err != nil {
		return nil, err
	}
	n4, n6, err := splitFamilies("no-masquerade CIDR", cfg.NoMasquerade)
	if err != nil {
		return nil, err
	}
	return state{clusterV4: c4, clusterV6: c6, noMasqV4: n4, noMasqV6: n6}, nil
}

// The objects of the table. Each names family and table explicitly (see New).
func table() *knftables.Table {
	return &knftables.Table{Family: Family, Name: TableName, Comment: knftables.PtrTo(tableRemark)}
}

func chain() *knftables.Chain {
	return &knftables.Chain{
		Family: Family, Table: TableName, Name: chainName,
		Type:     knftables.PtrTo(knftables.NATType),
		Hook:     knftables.PtrTo(knftables.PostroutingHook),
		Priority: knftables.PtrTo(knftables.SNATPriority),
	}
}

func set(name string) *knftables.Set {
	typ := "ipv4_addr"
	if name == clusterV6 || name == noMasqV6 {
		typ = "ipv6_addr"
	}
	return &knftables.Set{
		Family: Family, Table: TableName, Name: name, Type: typ,
		Flags: []knftables.SetFlag{knftables.IntervalFlag},
	}
}

var setNames = []string{clusterV4, clusterV6, noMasqV4, noMasqV6}

// rules are the chain's rules, in order: first every destination that is
// never NATed, then masquerade what is left if it comes from a pod.
// fully-random picks the source port at random, as kube-proxy does, so
// many pods behind one node address do not collide on ports.
var rules = []struct{ rule, comment string }{
	{"ip daddr @" + clusterV4 + " return", "to a pod: keep the source"},
	{"ip6 daddr @" + clusterV6 + " return", "to a pod: keep the source"},
	{"ip daddr @" + noMasqV4 + " return", "to a no-masquerade network: keep the source"},
	{"ip6 daddr @" + noMasqV6 + " return", "to a no-masquerade network: keep the source"},
	{"ip saddr @" + clusterV4 + " masquerade fully-random", "pod to the outside: the node's address"},
	{"ip6 saddr @" + clusterV6 + " masquerade fully-random", "pod to the outside: the node's address"},
}

// writeTable queues the whole desired table, then the removal of stale
// objects. The shape of the transaction:
//
//  1. add table, chain and sets: creates what is missing (someone deleted
//     the table) and leaves what exists alone;
//  2. flush the chain and the sets, then add every rule and element: the
//     content becomes exactly the desired one, whatever drift there was,
//     without comparing rule text (knftables cannot list it back);
//  3. last, delete stale objects. The kernel refuses to delete a set that
//     a rule uses or a chain that a rule jumps to ("Device or resource
//     busy"), so the references must be gone first: step 2's flush drops
//     those from our chain, and every stale chain is flushed before any is
//     deleted, since one may jump to another.
//
// nft applies the transaction as one netlink batch: the kernel swaps in the
// result atomically, so no packet ever meets the chain half-written (an
// empty chain would let a new egress flow out un-masqueraded). Flows that
// already exist are untouched either way: their NAT lives in conntrack.
func writeTable(tx *knftables.Transaction, want state, stale []knftables.Object) {
	tx.Add(table())
	tx.Add(chain())
	for _, name := range setNames {
		tx.Add(set(name))
	}

	tx.Flush(chain())
	for _, name := range setNames {
		tx.Flush(set(name))
	}
	for _, name := range setNames {
		for _, key := range want[name] {
			tx.Add(&knftables.Element{Family: Family, Table: TableName, Set: name, Key: []string{key}})
		}
	}
	for _, r := range rules {
		tx.Add(&knftables.Rule{Family: Family, Table: TableName, Chain: chainName, Rule: r.rule, Comment: knftables.PtrTo(r.comment)})
	}

	for _, o := range stale {
		if c, ok := o.(*knftables.Chain); ok {
			tx.Flush(c)
		}
	}
	for _, o := range stale {
		tx.Delete(o)
	}
}

// staleObjects lists the objects of a ListAll result that the desired
// table does not have, in a stable order.
func staleObjects(have map[string][]string) []knftables.Object {
	var out []knftables.Object
	for _, typ := range []string{"chain", "flowtable", "map", "set", "counter"} {
		names := slices.Clone(have[typ])
		slices.Sort(names)
		for _, name := range names {
			switch {
			case typ == "chain" && name == chainName:
			case typ == "set" && slices.Contains(setNames, name):
			case typ == "chain":
				out = append(out, &knftables.Chain{Family: Family, Table: TableName, Name: name})
			case typ == "flowtable":
				out = append(out, &knftables.Flowtable{Family: Family, Table: TableName, Name: name})
			case typ == "map":
				out = append(out, &knftables.Map{Family: Family, Table: TableName, Name: name})
			case typ == "set":
				out = append(out, &knftables.Set{Family: Family, Table: TableName, Name: name})
			case typ == "counter":
				out = append(out, &knftables.Counter{Family: Family, Table: TableName, Name: name})
			}
		}
	}
	return out
}

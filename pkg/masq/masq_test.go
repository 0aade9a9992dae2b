package masq

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"
)

var (
	ctx = context.Background()
	// The lab's addresses (ARCHITECTURE.md), plus an IPv6 cluster.
	labConfig = Config{
		ClusterCIDRs: prefixes("10.244.0.0/16", "fd00:10:244::/48"),
		NoMasquerade: prefixes("192.168.56.0/24", "fd00:192:168:56::/64"),
	}
)

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func newFake() *knftables.Fake { return knftables.NewFake(Family, TableName) }

func mustSync(t *testing.T, m *Masq, cfg Config) {
	t.Helper()
	if err := m.Sync(ctx, cfg); err != nil {
		t.Fatalf("Sync: %v", err)
	}
}

// verdict walks the fake's postrouting chain for the first packet of a
// connection src→dst, as the kernel does, and says what happens to its
// source address: "masquerade", or "keep" (a return, or the end of the
// chain with policy accept). It understands exactly the rule forms podnet
// writes and fails the test on any other, so a new rule shape must come
// with a new case here.
func verdict(t *testing.T, f *knftables.Fake, src, dst string) string {
	t.Helper()
	s, d := netip.MustParseAddr(src), netip.MustParseAddr(dst)
	if f.Table == nil {
		return "keep"
	}
	ch := f.Table.Chains[chainName]
	if ch == nil {
		return "keep"
	}
	for _, r := range ch.Rules {
		w := strings.Fields(r.Rule)
		if len(w) < 4 || (w[0] != "ip" && w[0] != "ip6") || (w[1] != "saddr" && w[1] != "daddr") || !strings.HasPrefix(w[2], "@") {
			t.Fatalf("verdict: unknown rule shape %q", r.Rule)
		}
		if (w[0] == "ip") != s.Is4() { // in the inet family, "ip" matches IPv4 packets only
			continue
		}
		a := s
		if w[1] == "daddr" {
			a = d
		}
		if !inSet(t, f, w[2][1:], w[0], a) {
			continue
		}
		switch action := strings.Join(w[3:], " "); action {
		case "return":
			return "keep" // a return from a base chain ends it with its policy (accept)
		case "masquerade", "masquerade fully-random":
			return "masquerade"
		default:
			t.Fatalf("verdict: unknown action %q in %q", action, r.Rule)
		}
	}
	return "keep"
}

func inSet(t *testing.T, f *knftables.Fake, name, proto string, a netip.Addr) bool {
	t.Helper()
	set := f.Table.Sets[name]
	if set == nil {
		t.Fatalf("verdict: rule references missing set %q", name)
	}
	if want := map[string]string{"ip": "ipv4_addr", "ip6": "ipv6_addr"}[proto]; set.Type != want {
		t.Fatalf("verdict: %s rule on set %s of type %s", proto, name, set.Type)
	}
	for _, e := range set.Elements {
		p, err := netip.ParsePrefix(e.Key[0])
		if err != nil {
			t.Fatalf("verdict: element %q of %s: %v", e.Key[0], name, err)
		}
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// assertLabBehaviour checks, packet by packet, what the issue asks for
// with labConfig in force.
func assertLabBehaviour(t *testing.T, f *knftables.Fake) {
	t.Helper()
	for _, c := range []struct{ what, src, dst, want string }{
		{"pod to the internet", "10.244.1.2", "203.0.113.10", "masquerade"},
		{"pod to a pod on another node", "10.244.1.2", "10.244.2.5", "keep"},
		{"pod to a pod on the same node", "10.244.1.2", "10.244.1.3", "keep"},
		{"pod to the node network", "10.244.1.2", "192.168.56.12", "keep"},
		{"node to a pod", "192.168.56.11", "10.244.1.2", "keep"},
		{"node (cni0 address) to a pod", "10.244.1.1", "10.244.1.2", "keep"},
		{"node to the internet (not podnet's business)", "192.168.56.11", "203.0.113.10", "keep"},
		{"pod to the internet, v6", "fd00:10:244:1::2", "2001:db8::10", "masquerade"},
		{"pod to a pod, v6", "fd00:10:244:1::2", "fd00:10:244:2::5", "keep"},
		{"pod to the node network, v6", "fd00:10:244:1::2", "fd00:192:168:56::12", "keep"},
		{"node to a pod, v6", "fd00:192:168:56::11", "fd00:10:244:1::2", "keep"},
	} {
		if got := verdict(t, f, c.src, c.dst); got != c.want {
			t.Errorf("%s (%s → %s): %s, want %s", c.what, c.src, c.dst, got, c.want)
		}
	}
}

func elementsOf(f *knftables.Fake, set string) []string {
	var out []string
	for _, e := range f.Table.Sets[set].Elements {
		out = append(out, strings.Join(e.Key, " . "))
	}
	return out
}

func TestSyncCreatesTable(t *testing.T) {
	f := newFake()
	mustSync(t, New(f), labConfig)

	if f.Table == nil {
		t.Fatal("no table inet podnet-masq after Sync")
	}
	ch := f.Table.Chains[chainName]
	if ch == nil || ch.Type == nil || *ch.Type != knftables.NATType || *ch.Hook != knftables.PostroutingHook || *ch.Priority != knftables.SNATPriority {
		t.Fatalf("chain %s is not a nat postrouting srcnat base chain: %+v", chainName, ch)
	}
	for set, want := range map[string][]string{
		clusterV4: {"10.244.0.0/16"},
		clusterV6: {"fd00:10:244::/48"},
		noMasqV4:  {"192.168.56.0/24"},
		noMasqV6:  {"fd00:192:168:56::/64"},
	} {
		if got := elementsOf(f, set); !slices.Equal(got, want) {
			t.Errorf("set %s = %v, want %v", set, got, want)
		}
	}
	if n := len(ch.Rules); n != len(rules) {
		t.Errorf("chain has %d rules, want %d", n, len(rules))
	}
	assertLabBehaviour(t, f)
}

// A supplement to the semantic checks: the whole table, as nft would load it.
func TestSyncGoldenDump(t *testing.T) {
	f := newFake()
	mustSync(t, New(f), labConfig)
	const golden = `add table inet podnet-masq { comment "podnet: egress masquerade (managed by podnetd; edits are overwritten)" ; }
add chain inet podnet-masq postrouting { type nat hook postrouting priority 100 ; }
add set inet podnet-masq cluster-v4 { type ipv4_addr ; flags interval ; }
add set inet podnet-masq cluster-v6 { type ipv6_addr ; flags interval ; }
add set inet podnet-masq no-masq-v4 { type ipv4_addr ; flags interval ; }
add set inet podnet-masq no-masq-v6 { type ipv6_addr ; flags interval ; }
add rule inet podnet-masq postrouting ip daddr @cluster-v4 return comment "to a pod: keep the source"
add rule inet podnet-masq postrouting ip6 daddr @cluster-v6 return comment "to a pod: keep the source"
add rule inet podnet-masq postrouting ip daddr @no-masq-v4 return comment "to a no-masquerade network: keep the source"
add rule inet podnet-masq postrouting ip6 daddr @no-masq-v6 return comment "to a no-masquerade network: keep the source"
add rule inet podnet-masq postrouting ip saddr @cluster-v4 masquerade fully-random comment "pod to the outside: the node's address"
add rule inet podnet-masq postrouting ip6 saddr @cluster-v6 masquerade fully-random comment "pod to the outside: the node's address"
add element inet podnet-masq cluster-v4 { 10.244.0.0/16 }
add element inet podnet-masq cluster-v6 { fd00:10:244::/48 }
add element inet podnet-masq no-masq-v4 { 192.168.56.0/24 }
add element inet podnet-masq no-masq-v6 { fd00:192:168:56::/64 }
`
	if got := f.Dump(); got != golden {
		t.Errorf("dump:\n%s\nwant:\n%s", got, golden)
	}
}

func TestSyncTwiceIsNoOp(t *testing.T) {
	f := newFake()
	m := New(f)
	mustSync(t, m, labConfig)
	first, firstTx := f.Dump(), f.LastTransaction.String()
	mustSync(t, m, labConfig)
	if got := f.Dump(); got != first {
		t.Errorf("second Sync changed the table:\n%s\nwas:\n%s", got, first)
	}
	// Same transaction too: nothing accumulates from one Sync to the next.
	if got := f.LastTransaction.String(); got != firstTx {
		t.Errorf("second transaction differs:\n%s\nfirst:\n%s", got, firstTx)
	}
	if got := elementsOf(f, clusterV4); len(got) != 1 {
		t.Errorf("cluster-v4 after two Syncs: %v", got)
	}
}

func TestSyncFollowsConfig(t *testing.T) {
	f := newFake()
	m := New(f)
	mustSync(t, m, labConfig)
	// The no-masquerade network goes away: the underlay is masqueraded now.
	mustSync(t, m, Config{ClusterCIDRs: prefixes("10.244.0.0/16")})
	if got := verdict(t, f, "10.244.1.2", "192.168.56.12"); got != "masquerade" {
		t.Errorf("pod to 192.168.56.12 after it left NoMasquerade: %s, want masquerade", got)
	}
	for _, set := range []string{clusterV6, noMasqV4, noMasqV6} {
		if got := elementsOf(f, set); len(got) != 0 {
			t.Errorf("set %s keeps stale elements %v", set, got)
		}
	}
	// No cluster CIDR at all: nothing is masqueraded.
	mustSync(t, m, Config{})
	if got := verdict(t, f, "10.244.1.2", "203.0.113.10"); got != "keep" {
		t.Errorf("with an empty config: %s, want keep", got)
	}
}

func TestSyncNormalizesPrefixes(t *testing.T) {
	f := newFake()
	mustSync(t, New(f), Config{
		// Host bits, duplicates, nesting, adjacency, both families mixed.
		ClusterCIDRs: prefixes("10.244.7.9/16", "10.244.0.0/16", "10.244.3.0/24", "fd00:10:244:1::/64", "fd00:10:244::/48"),
		NoMasquerade: prefixes("192.168.56.0/25", "192.168.56.128/25", "172.16.0.0/12", "172.16.5.0/24", "198.51.100.7/32"),
	})
	for set, want := range map[string][]string{
		clusterV4: {"10.244.0.0/16"},
		clusterV6: {"fd00:10:244::/48"},
		noMasqV4:  {"172.16.0.0/12", "192.168.56.0/25", "192.168.56.128/25", "198.51.100.7/32"},
	} {
		if got := elementsOf(f, set); !slices.Equal(got, want) {
			t.Errorf("set %s = %v, want %v", set, got, want)
		}
	}
}

func TestSyncRejectsBadInput(t *testing.T) {
	for name, cfg := range map[string]Config{
		"zero prefix":   {ClusterCIDRs: []netip.Prefix{{}}},
		"invalid bits":  {NoMasquerade: []netip.Prefix{netip.PrefixFrom(netip.MustParseAddr("10.0.0.0"), 33)}},
		"4-in-6 prefix": {ClusterCIDRs: prefixes("::ffff:10.244.0.0/112")},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFake()
			err := New(f).Sync(ctx, cfg)
			if err == nil {
				t.Fatal("Sync accepted it")
			}
			t.Logf("error: %v", err)
			if f.LastTransaction != nil || len(f.Tables) != 0 {
				t.Errorf("a rejected config reached nftables:\n%s", f.Dump())
			}
		})
	}
}

// drift makes one change behind podnet's back, as another program or a
// person with nft would.
func drift(t *testing.T, f *knftables.Fake, change func(tx *knftables.Transaction)) {
	t.Helper()
	tx := f.NewTransaction()
	change(tx)
	if err := f.Run(ctx, tx); err != nil {
		t.Fatalf("making drift: %v", err)
	}
}

func TestSyncRepairsDrift(t *testing.T) {
	f := newFake()
	mustSync(t, New(f), labConfig)
	want := f.Dump()

	ruleHandle := func(f *knftables.Fake, i int) *int { return f.Table.Chains[chainName].Rules[i].Handle }
	for name, change := range map[string]func(tx *knftables.Transaction){
		"rule deleted": func(tx *knftables.Transaction) {
			tx.Delete(&knftables.Rule{Chain: chainName, Handle: ruleHandle(f, 4)}) // the v4 masquerade
		},
		"chain flushed": func(tx *knftables.Transaction) { tx.Flush(&knftables.Chain{Name: chainName}) },
		"set flushed":   func(tx *knftables.Transaction) { tx.Flush(&knftables.Set{Name: clusterV4}) },
		"table deleted": func(tx *knftables.Transaction) { tx.Delete(&knftables.Table{}) },
		"element added": func(tx *knftables.Transaction) { tx.Add(&knftables.Element{Set: noMasqV4, Key: []string{"0.0.0.0/0"}}) },
		"rule inserted": func(tx *knftables.Transaction) {
			tx.Insert(&knftables.Rule{Chain: chainName, Rule: "ip saddr 10.244.0.0/16 masquerade"})
		},
		"chain deleted": func(tx *knftables.Transaction) { tx.Delete(&knftables.Chain{Name: chainName}) },
		"set deleted": func(tx *knftables.Transaction) {
			tx.Flush(&knftables.Chain{Name: chainName})
			tx.Delete(&knftables.Set{Name: noMasqV4})
		},
		"stray objects": func(tx *knftables.Transaction) {
			// An older layout: a set and a chain it no longer has, the chain
			// jumped to from podnet's own chain and using the set.
			tx.Add(&knftables.Set{Name: "old-nets", Type: "ipv4_addr", Flags: []knftables.SetFlag{knftables.IntervalFlag}})
			tx.Add(&knftables.Map{Name: "old-map", Type: "ipv4_addr : verdict"})
			tx.Add(&knftables.Chain{Name: "old-chain"})
			tx.Add(&knftables.Chain{Name: "older-chain"})
			tx.Add(&knftables.Rule{Chain: "old-chain", Rule: "ip daddr @old-nets jump older-chain"})
			tx.Add(&knftables.Rule{Chain: chainName, Rule: "jump old-chain"})
		},
	} {
		t.Run(name, func(t *testing.T) {
			drift(t, f, change)
			if f.Dump() == want {
				t.Fatal("the change made no drift")
			}
			mustSync(t, New(f), labConfig)
			if got := f.Dump(); got != want {
				t.Errorf("after Sync:\n%s\nwant:\n%s", got, want)
			}
			assertLabBehaviour(t, f)
		})
	}
}

// failFirstRun fails the first transaction as nft does when an object of
// ours exists with another definition (which the fake cannot model).
type failFirstRun struct {
	*knftables.Fake
	failed []string
}

func (f *failFirstRun) Run(ctx context.Context, tx *knftables.Transaction) error {
	if len(f.failed) == 0 {
		f.failed = append(f.failed, tx.String())
		return errors.New("Error: Could not process rule: File exists")
	}
	return f.Fake.Run(ctx, tx)
}

func TestSyncRecreatesTableItCannotAmend(t *testing.T) {
	f := &failFirstRun{Fake: newFake()}
	mustSync(t, New(f), labConfig)
	tx := f.LastTransaction.String()
	if !strings.HasPrefix(tx, "add table inet podnet-masq") || !strings.Contains(tx, "\ndelete table inet podnet-masq\nadd table inet podnet-masq") {
		t.Errorf("the retry is not add, delete, re-create in one transaction:\n%s", tx)
	}
	assertLabBehaviour(t, f.Fake)

	want := newFake()
	mustSync(t, New(want), labConfig)
	if f.Dump() != want.Dump() {
		t.Errorf("re-created table:\n%s\nwant:\n%s", f.Dump(), want.Dump())
	}
}

func TestSyncReportsFailure(t *testing.T) {
	f := &alwaysFail{Fake: newFake()}
	err := New(f).Sync(ctx, labConfig)
	if err == nil || !strings.Contains(err.Error(), "sync table inet podnet-masq") || !strings.Contains(err.Error(), "re-creating") {
		t.Fatalf("Sync error = %v", err)
	}
}

type alwaysFail struct{ *knftables.Fake }

func (alwaysFail) Run(context.Context, *knftables.Transaction) error {
	return errors.New("nft: Operation not permitted")
}

func TestCleanup(t *testing.T) {
	f := newFake()
	m := New(f)
	mustSync(t, m, labConfig)
	if err := m.Cleanup(ctx); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if f.Table != nil || len(f.Tables[Family]) != 0 {
		t.Fatalf("table left after Cleanup:\n%s", f.Dump())
	}
	if got := verdict(t, f, "10.244.1.2", "203.0.113.10"); got != "keep" {
		t.Errorf("after Cleanup: %s", got)
	}
	if err := m.Cleanup(ctx); err != nil {
		t.Errorf("Cleanup with no table: %v", err)
	}
	mustSync(t, m, labConfig) // and back
	assertLabBehaviour(t, f)
}

// otherTables fills a fake with tables that are not podnet's: one of the
// same name in another family, and one of another name in the same family.
func otherTables(t *testing.T, f *knftables.Fake) string {
	t.Helper()
	o := knftables.NewFake("", "") // an unbound fake may write any table
	tx := o.NewTransaction()
	for _, tb := range []struct {
		fam  knftables.Family
		name string
	}{{knftables.IPv4Family, TableName}, {knftables.InetFamily, "other"}} {
		tx.Add(&knftables.Table{Family: tb.fam, Name: tb.name})
		tx.Add(&knftables.Chain{Family: tb.fam, Table: tb.name, Name: chainName,
			Type: knftables.PtrTo(knftables.NATType), Hook: knftables.PtrTo(knftables.PostroutingHook), Priority: knftables.PtrTo(knftables.SNATPriority)})
		tx.Add(&knftables.Set{Family: tb.fam, Table: tb.name, Name: clusterV4, Type: "ipv4_addr", Flags: []knftables.SetFlag{knftables.IntervalFlag}})
		tx.Add(&knftables.Element{Family: tb.fam, Table: tb.name, Set: clusterV4, Key: []string{"10.0.0.0/8"}})
		tx.Add(&knftables.Rule{Family: tb.fam, Table: tb.name, Chain: chainName, Rule: "ip saddr @cluster-v4 masquerade"})
	}
	if err := o.Run(ctx, tx); err != nil {
		t.Fatal(err)
	}
	f.Tables = o.Tables
	return o.Dump()
}

// othersDump dumps every table of f except podnet's.
func othersDump(f *knftables.Fake) string {
	o := knftables.NewFake("", "")
	o.Tables = map[knftables.Family]map[string]*knftables.FakeTable{}
	for fam, tables := range f.Tables {
		for name, tb := range tables {
			if fam == Family && name == TableName {
				continue
			}
			if o.Tables[fam] == nil {
				o.Tables[fam] = map[string]*knftables.FakeTable{}
			}
			o.Tables[fam][name] = tb
		}
	}
	return o.Dump()
}

func TestOtherTablesUntouched(t *testing.T) {
	f := newFake()
	before := otherTables(t, f)
	m := New(f)
	mustSync(t, m, labConfig)
	mustSync(t, m, Config{ClusterCIDRs: prefixes("10.96.0.0/12")})
	if err := m.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if got := othersDump(f); got != before {
		t.Errorf("other tables changed:\n%s\nwere:\n%s", got, before)
	}
	if f.Tables[knftables.IPv4Family][TableName] == nil {
		t.Error("Cleanup deleted table ip podnet-masq (another family's)")
	}
}

func TestInterfaceForAnotherTable(t *testing.T) {
	f := knftables.NewFake(Family, "somebody-else")
	m := New(f)
	if err := m.Sync(ctx, labConfig); err == nil {
		t.Error("Sync through an Interface bound to another table succeeded")
	}
	if err := m.Cleanup(ctx); err == nil {
		t.Error("Cleanup through an Interface bound to another table succeeded")
	}
	if len(f.Tables) != 0 {
		t.Errorf("wrote to another table:\n%s", f.Dump())
	}
}

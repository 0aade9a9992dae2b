package proxy

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/knftables"
)

func TestFullSyncRepairsDrift(t *testing.T) {
	c := newCluster(5)
	st := c.state()
	want := fullDump(t, st)
	svcChain := namesFor(ServicePortName{"default", "svc-00002", "http", TCP}).svc
	for name, change := range map[string]func(tx *knftables.Transaction){
		"table deleted": func(tx *knftables.Transaction) { tx.Delete(&knftables.Table{}) },
		"Service chain deleted": func(tx *knftables.Transaction) {
			tx.Delete(&knftables.Element{Map: mapServiceIPs, Key: []string{"10.96.0.3", "tcp", "80"}})
			tx.Delete(&knftables.Chain{Name: svcChain})
		},
		"Service chain flushed": func(tx *knftables.Transaction) { tx.Flush(&knftables.Chain{Name: svcChain}) },
		"map flushed":           func(tx *knftables.Transaction) { tx.Flush(&knftables.Map{Name: mapServiceIPs}) },
		"base chain flushed":    func(tx *knftables.Transaction) { tx.Flush(&knftables.Chain{Name: "nat-prerouting"}) },
		"set flushed":           func(tx *knftables.Transaction) { tx.Flush(&knftables.Set{Name: setClusterCIDRs}) },
		"element hijacked": func(tx *knftables.Transaction) {
			tx.Add(&knftables.Element{Map: mapServiceIPs, Key: []string{"10.96.9.9", "tcp", "80"}, Value: []string{"goto " + svcChain}})
		},
		"stray objects": func(tx *knftables.Transaction) {
			tx.Add(&knftables.Set{Name: "old-set", Type: "ipv4_addr"})
			tx.Add(&knftables.Map{Name: "old-map", Type: "ipv4_addr : verdict"})
			tx.Add(&knftables.Chain{Name: "old-a"})
			tx.Add(&knftables.Chain{Name: "old-b"})
			tx.Add(&knftables.Rule{Chain: "old-b", Rule: "ip daddr @old-set jump old-a"})
			tx.Add(&knftables.Rule{Chain: "services", Rule: "jump old-b"})
		},
	} {
		t.Run(name, func(t *testing.T) {
			r := newRecorder()
			p := New(r, Config{})
			if err := p.Sync(ctx, st); err != nil {
				t.Fatal(err)
			}
			drift(t, r.Fake, change)
			if normDump(r.Fake) == want {
				t.Fatal("the change made no drift")
			}
			p.RequestFullSync() // or wait for the period
			if err := p.Sync(ctx, st); err != nil {
				t.Fatal(err)
			}
			if got := normDump(r.Fake); got != want {
				t.Errorf("after a full sync:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// The pick maps, where policy chains find their endpoints, are repaired
// too: flushed behind the Proxier's back, the Services would lead nowhere.
func TestFullSyncRepairsPickMaps(t *testing.T) {
	st := newCluster(5).state()
	want := fullDump(t, st)
	r := newRecorder()
	p := New(r, Config{})
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	drift(t, r.Fake, func(tx *knftables.Transaction) {
		for name := range r.Fake.Table.Maps {
			if isPickMap(name) {
				tx.Flush(&knftables.Map{Name: name})
			}
		}
	})
	p.RequestFullSync()
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	if got := normDump(r.Fake); got != want {
		t.Errorf("after a full sync:\n%s\nwant:\n%s", got, want)
	}
	tr := newTracer(t, r.Fake, addrStrings(labNode.IPs)...)
	tr.expect("to svc-00002", packet{src: podHere, dst: "10.96.0.3", proto: TCP, dport: 80},
		expect{endpoints: []string{"10.244.1.4:8080", "10.244.2.4:8080"}, verdict: "accept", masq: "none"})
}

// A partial sync that meets drift fails in nft; the Proxier then syncs the
// whole table at once, within the same Sync.
func TestPartialSyncFailureFallsBackToFullSync(t *testing.T) {
	c := newCluster(5)
	reg := prometheus.NewRegistry()
	r := newRecorder()
	p := New(r, Config{Metrics: reg})
	if err := p.Sync(ctx, c.state()); err != nil {
		t.Fatal(err)
	}
	svcChain := namesFor(ServicePortName{"default", "svc-00002", "http", TCP}).svc
	drift(t, r.Fake, func(tx *knftables.Transaction) {
		tx.Delete(&knftables.Element{Map: mapServiceIPs, Key: []string{"10.96.0.3", "tcp", "80"}})
		tx.Delete(&knftables.Chain{Name: svcChain})
	})
	c.slices[2].Endpoints = c.slices[2].Endpoints[:1] // a change to that very Service
	st := c.state()
	runs := len(r.runs)
	if err := p.Sync(ctx, st); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if len(r.runs) != runs+2 || isFull(r.runs[runs].String()) || !isFull(r.last()) {
		t.Errorf("want a partial transaction then a full one, got %d transactions", len(r.runs)-runs)
	}
	if got, want := normDump(r.Fake), fullDump(t, st); got != want {
		t.Errorf("after the fallback:\n%s\nwant:\n%s", got, want)
	}
	for _, m := range []struct {
		mode, result string
		want         float64
	}{{"full", "ok", 2}, {"partial", "error", 1}} {
		if got := metricValue(t, reg, "podnet_proxy_syncs_total", "mode", m.mode, "result", m.result); got != m.want {
			t.Errorf("syncs{%s,%s} = %v, want %v", m.mode, m.result, got, m.want)
		}
	}
}

// After any failed sync the next one is full: what was last written
// successfully is no longer known to be in the kernel.
func TestFailedSyncIsReportedAndFollowedByFullSync(t *testing.T) {
	c := newCluster(3)
	r := newRecorder()
	p := New(r, Config{})
	if err := p.Sync(ctx, c.state()); err != nil {
		t.Fatal(err)
	}
	r.fail = func(*knftables.Transaction) error { return errors.New("nft: Operation not permitted") }
	c.slices[1].Endpoints = c.slices[1].Endpoints[:1]
	err := p.Sync(ctx, c.state())
	if err == nil || !strings.HasPrefix(err.Error(), "sync table ip podnet-proxy: nft: Operation not permitted") {
		t.Fatalf("Sync error = %v", err)
	}
	r.fail = nil
	if err := p.Sync(ctx, c.state()); err != nil {
		t.Fatal(err)
	}
	if !isFull(r.last()) {
		t.Error("the sync after a failure was not a full one")
	}
}

// nft refuses to amend an object defined differently (a base chain with
// another priority): the table is then replaced in one transaction.
func TestFullSyncRecreatesTableItCannotAmend(t *testing.T) {
	r := newRecorder()
	failed := false
	r.fail = func(tx *knftables.Transaction) error {
		if !failed {
			failed = true
			return errors.New("Error: Could not process rule: File exists")
		}
		return nil
	}
	st := newCluster(2).state()
	if err := New(r, Config{}).Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	tx := r.last()
	if !strings.HasPrefix(tx, "add table ip podnet-proxy") || !strings.Contains(tx, "\ndelete table ip podnet-proxy\nadd table ip podnet-proxy") {
		t.Errorf("the retry is not add, delete, re-create in one transaction:\n%s", tx)
	}
	if got, want := normDump(r.Fake), fullDump(t, st); got != want {
		t.Errorf("re-created table:\n%s\nwant:\n%s", got, want)
	}
}

func TestOtherTablesUntouchedAndCleanup(t *testing.T) {
	f := newFake()
	o := knftables.NewFake("", "") // an unbound fake may write any table
	tx := o.NewTransaction()
	for _, tb := range []struct {
		fam  knftables.Family
		name string
	}{{knftables.InetFamily, TableName}, {knftables.IPv4Family, "kube-proxy"}} {
		tx.Add(&knftables.Table{Family: tb.fam, Name: tb.name})
		tx.Add(&knftables.Chain{Family: tb.fam, Table: tb.name, Name: "services"})
		tx.Add(&knftables.Rule{Family: tb.fam, Table: tb.name, Chain: "services", Rule: "ip daddr 10.96.0.1 drop"})
	}
	if err := o.Run(ctx, tx); err != nil {
		t.Fatal(err)
	}
	before := o.Dump()
	f.Tables = o.Tables
	p := New(f, Config{})
	c := newCluster(3)
	if err := p.Sync(ctx, c.state()); err != nil {
		t.Fatal(err)
	}
	c.slices[0].Endpoints = nil
	if err := p.Sync(ctx, c.state()); err != nil {
		t.Fatal(err)
	}
	if err := p.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if f.Table != nil {
		t.Errorf("table left after Cleanup:\n%s", f.Dump())
	}
	unbound := knftables.NewFake("", "") // dumps every table with its family and name
	unbound.Tables = f.Tables
	if got := unbound.Dump(); got != before {
		t.Errorf("other tables changed:\n%s\nwere:\n%s", got, before)
	}
	if err := p.Cleanup(ctx); err != nil {
		t.Errorf("Cleanup with no table: %v", err)
	}
	if err := p.Sync(ctx, c.state()); err != nil || !strings.Contains(f.Dump(), "add table ip podnet-proxy") {
		t.Errorf("Sync after Cleanup: %v", err)
	}
}

func TestInterfaceForAnotherTable(t *testing.T) {
	f := knftables.NewFake(IPv4.NFT, "somebody-else")
	p := New(f, Config{})
	if err := p.Sync(ctx, newCluster(1).state()); err == nil {
		t.Error("Sync through an Interface bound to another table succeeded")
	}
	if err := p.Cleanup(ctx); err == nil {
		t.Error("Cleanup through an Interface bound to another table succeeded")
	}
	if len(f.Tables) != 0 {
		t.Errorf("wrote to another table:\n%s", f.Dump())
	}
	if err := p.Sync(ctx, Build(IPv6, labNode, nil, nil)); err == nil {
		t.Error("Sync accepted a state of the other family")
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := New(newFake(), Config{Metrics: reg})
	svcs, sl := webFixture()
	syncState(t, p, labNode, svcs, sl)
	// 2 ports × 1 policy chain, plus the skeleton.
	static := len(baseChains) + len(staticChains(IPv4, labNode, 0))
	if got := metricValue(t, reg, "podnet_proxy_chains"); got != float64(static+2) {
		t.Errorf("chains gauge %v, want %d", got, static+2)
	}
	// Per port: masquerade and DNAT.
	if got, want := metricValue(t, reg, "podnet_proxy_rules"), float64(staticRuleCount(IPv4, labNode)+2*2); got != want {
		t.Errorf("rules gauge %v, want %v", got, want)
	}
	if got := metricValue(t, reg, "podnet_proxy_service_ports"); got != 2 {
		t.Errorf("service ports gauge %v, want 2", got)
	}
	if got := metricValue(t, reg, "podnet_proxy_syncs_total", "mode", "full", "result", "ok"); got != 1 {
		t.Errorf("full syncs %v, want 1", got)
	}
	if got := metricValue(t, reg, "podnet_proxy_sync_duration_seconds", "mode", "full"); got != 1 {
		t.Errorf("sync duration samples %v, want 1", got)
	}
}

// metricValue reads one series from reg: a counter's or gauge's value, or
// a histogram's sample count. labels are name, value pairs.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					found = found || l.GetName() == labels[i] && l.GetValue() == labels[i+1]
				}
				if !found {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return 0
}

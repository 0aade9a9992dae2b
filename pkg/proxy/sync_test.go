package proxy

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"sigs.k8s.io/knftables"
)

// recorder wraps the Fake to see every transaction, and to fail some.
type recorder struct {
	*knftables.Fake
	runs    []*knftables.Transaction
	fail    func(tx *knftables.Transaction) error // nil: none fails
	inFake  time.Duration                         // time spent in the Fake's Run
	listing time.Duration                         // time spent in the Fake's ListAll
}

func newRecorder() *recorder { return &recorder{Fake: newFake()} }

func (r *recorder) Run(ctx context.Context, tx *knftables.Transaction) error {
	r.runs = append(r.runs, tx)
	if r.fail != nil {
		if err := r.fail(tx); err != nil {
			return err
		}
	}
	start := time.Now()
	defer func() { r.inFake += time.Since(start) }()
	return r.Fake.Run(ctx, tx)
}

func (r *recorder) ListAll(ctx context.Context) (map[string][]string, error) {
	start := time.Now()
	defer func() { r.listing += time.Since(start) }()
	return r.Fake.ListAll(ctx)
}

func (r *recorder) last() string { return r.runs[len(r.runs)-1].String() }

// isFull says whether a transaction rewrote the whole table.
func isFull(tx string) bool { return strings.HasPrefix(tx, "add table ") }

// normDump is the Fake's dump made independent of history: the elements
// of each map sorted (a partial sync appends elements where a full one
// adds them in order), and each policy chain's numgen rule written with
// the endpoints its pick-map range leads to, instead of the range (which
// depends on the order ranges were allocated in), without pick maps (an
// empty one stays until the next full sync) and their elements.
func normDump(f *knftables.Fake) string {
	var other, elems []string
	for _, l := range strings.Split(f.Dump(), "\n") {
		switch {
		case strings.Contains(l, " podnet-proxy pick-"): // add map, add element
		case strings.HasPrefix(l, "add element "):
			elems = append(elems, l)
		default:
			other = append(other, canonicalPick(f, l))
		}
	}
	slices.Sort(elems)
	return strings.Join(other, "\n") + strings.Join(elems, "\n")
}

var pickRule = regexp.MustCompile(`numgen random mod (\d+) offset (\d+) map @(pick-\w+-\d+)$`)

func canonicalPick(f *knftables.Fake, line string) string {
	m := pickRule.FindStringSubmatch(line)
	if m == nil {
		return line
	}
	n, _ := strconv.Atoi(m[1])
	base, _ := strconv.Atoi(m[2])
	var targets []string
	for i := range n {
		e := f.Table.Maps[m[3]].FindElement(strconv.Itoa(base + i))
		if e == nil {
			return line + " # key " + strconv.Itoa(base+i) + " missing"
		}
		targets = append(targets, fmt.Sprintf("%d : %s", i, e.Value[0]))
	}
	return strings.TrimSuffix(line, m[0]) + fmt.Sprintf("numgen random mod %d map { %s }", n, strings.Join(targets, " , "))
}

// inRanges says whether line is an operation on a pick-map element with a
// key in one of the ranges.
func inRanges(line string, ranges []block) bool {
	for _, b := range ranges {
		if strings.HasPrefix(line, "add map ip podnet-proxy "+b.m+" ") {
			return true
		}
	}
	var verb, m string
	var key uint32
	if _, err := fmt.Sscanf(line, "%s element ip podnet-proxy %s { %d", &verb, &m, &key); err != nil {
		return false
	}
	for _, b := range ranges {
		if m == b.m && key >= b.base && key < b.base+b.size {
			return true
		}
	}
	return false
}

// fullDump is what a fresh Proxier writes for st in one full sync.
func fullDump(t *testing.T, st *State) string {
	t.Helper()
	f := newFake()
	if err := New(f, Config{}).Sync(ctx, st); err != nil {
		t.Fatalf("full Sync: %v", err)
	}
	return normDump(f)
}

// cluster is a synthetic cluster of n Services default/svc-NNNNN, one TCP
// port each, with two endpoints (one here, one on node-2).
type cluster struct {
	svcs   []*corev1.Service
	slices []*discoveryv1.EndpointSlice
}

func newCluster(n int) *cluster {
	c := &cluster{}
	for i := range n {
		name := fmt.Sprintf("svc-%05d", i)
		cip := fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)
		c.svcs = append(c.svcs, service("default", name, cip, []corev1.ServicePort{tcp("http", 80)}))
		c.slices = append(c.slices, epSlice("default", name, name+"-1", []discoveryv1.EndpointPort{esPort("http", corev1.ProtocolTCP, 8080)},
			endpointOn(fmt.Sprintf("10.244.1.%d", i%250+2), "node-1"), endpointOn(fmt.Sprintf("10.244.%d.%d", 2+i/250%200, i%250+2), "node-2")))
	}
	return c
}

func (c *cluster) state() *State { return Build(IPv4, labNode, c.svcs, c.slices) }

func TestIncrementalSyncTouchesOnlyTheChangedService(t *testing.T) {
	c := newCluster(50)
	r := newRecorder()
	p := New(r, Config{})
	if err := p.Sync(ctx, c.state()); err != nil || !isFull(r.last()) {
		t.Fatalf("first Sync: %v, full: %v", err, isFull(r.last()))
	}
	// svc-00017 loses its local endpoint and gains another.
	svc17 := namesFor(ServicePortName{"default", "svc-00017", "http", TCP}).svc
	before := p.alloc.owned[svc17]
	c.slices[17] = epSlice("default", "svc-00017", "svc-00017-1", []discoveryv1.EndpointPort{esPort("http", corev1.ProtocolTCP, 8080)},
		endpointOn("10.244.1.200", "node-1"), endpointOn("10.244.2.19", "node-2"))
	st := c.state()
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	tx := r.runs[len(r.runs)-1]
	if isFull(tx.String()) {
		t.Fatalf("the second sync was a full one:\n%s", tx)
	}
	// Every operation is on svc-00017's objects: its chains, its map
	// elements, and the keys of its pick-map range (before and after).
	ranges := []block{before, p.alloc.owned[svc17]}
	for _, line := range strings.Split(strings.TrimSpace(tx.String()), "\n") {
		hairpin := strings.Contains(line, "hairpin { 10.244.1.19 . ") || strings.Contains(line, "hairpin { 10.244.1.200 . ")
		if !strings.Contains(line, "default/svc-00017/") && !inRanges(line, ranges) && !hairpin {
			t.Errorf("the partial sync touches something else than svc-00017: %s", line)
		}
	}
	// New endpoint chains, the policy chain rewritten with its pick
	// elements, stale endpoint chains.
	if n := tx.NumOperations(); n > 14 {
		t.Errorf("%d operations for one endpoint change:\n%s", n, tx)
	}
	if got, want := normDump(r.Fake), fullDump(t, st); got != want {
		t.Errorf("after the partial sync:\n%s\nwant (full sync of the same state):\n%s", got, want)
	}
	tr := newTracer(t, r.Fake, addrStrings(labNode.IPs)...)
	tr.expect("to svc-00017", packet{src: podHere, dst: "10.96.0.18", proto: TCP, dport: 80},
		expect{endpoints: []string{"10.244.1.200:8080", "10.244.2.19:8080"}, verdict: "accept", masq: "none"})

	runs := len(r.runs)
	if err := p.Sync(ctx, c.state()); err != nil {
		t.Fatal(err)
	}
	if len(r.runs) != runs {
		t.Errorf("a sync with nothing changed ran a transaction:\n%s", r.last())
	}
}

// TestIncrementalSyncEqualsFullSync applies one change after another, each
// by a partial sync, and compares the table with a full sync of the same
// state each time.
func TestIncrementalSyncEqualsFullSync(t *testing.T) {
	c := newCluster(20)
	r := newRecorder()
	p := New(r, Config{})
	if err := p.Sync(ctx, c.state()); err != nil {
		t.Fatal(err)
	}
	set := func(i int, opts ...svcOpt) {
		for _, o := range opts {
			o(c.svcs[i])
		}
	}
	for _, step := range []struct {
		what   string
		change func()
	}{
		{"add a Service", func() {
			more := newCluster(21)
			c.svcs, c.slices = append(c.svcs, more.svcs[20]), append(c.slices, more.slices[20])
		}},
		{"remove a Service", func() { c.svcs, c.slices = slices.Delete(c.svcs, 3, 4), slices.Delete(c.slices, 3, 4) }},
		{"no endpoints left: reject", func() { c.slices[4] = epSlice("default", "svc-00005", "x", nil) }},
		{"endpoints back", func() { c.slices[4] = newCluster(6).slices[5] }},
		{"become a NodePort with external IPs", func() { set(5, nodePorts(30005), externalIPs("203.0.113.5")) }},
		{"externalTrafficPolicy Local", func() { set(5, etpLocal(0)) }},
		{"session affinity", func() { set(6, affinity(60)) }},
		{"another affinity timeout", func() { set(6, affinity(90)) }},
		{"internalTrafficPolicy Local", func() { set(7, itpLocal) }},
		{"two Services claim one external IP and port", func() { set(8, externalIPs("203.0.113.5")) }},
		{"the first one lets it go", func() { c.svcs[4].Spec.ExternalIPs = nil }},
		{"a second port", func() { c.svcs[9].Spec.Ports = append(c.svcs[9].Spec.Ports, udp("dns", 53)) }},
		{"headless now", func() { c.svcs[10].Spec.ClusterIP, c.svcs[10].Spec.ClusterIPs = "None", []string{"None"} }},
	} {
		step.change()
		st := c.state()
		if err := p.Sync(ctx, st); err != nil {
			t.Fatalf("%s: %v", step.what, err)
		}
		if isFull(r.last()) {
			t.Errorf("%s: a full sync", step.what)
		}
		if got, want := normDump(r.Fake), fullDump(t, st); got != want {
			t.Fatalf("%s: after the partial sync:\n%s\nwant:\n%s\ntransaction:\n%s", step.what, got, want, r.last())
		}
	}
}

func TestFullSyncPeriodAndNodeChanges(t *testing.T) {
	now := time.Unix(1e9, 0)
	r := newRecorder()
	p := New(r, Config{FullSyncPeriod: time.Minute, Now: func() time.Time { return now }})
	c := newCluster(3)
	for _, step := range []struct {
		what  string
		after time.Duration
		node  func(*Node)
		full  bool
	}{
		{"first", 0, nil, true},
		{"soon after, a change", time.Second, nil, false},
		{"a period later", time.Minute, nil, true},
		{"the node's addresses change", time.Second, func(n *Node) { n.IPs = addrList("192.168.56.99") }, true},
	} {
		now = now.Add(step.after)
		node := labNode
		if step.node != nil {
			step.node(&node)
		}
		c.slices[0].Endpoints[0].Addresses[0] = fmt.Sprintf("10.244.1.%d", 100+len(r.runs)) // always something to write
		if err := p.Sync(ctx, Build(IPv4, node, c.svcs, c.slices)); err != nil {
			t.Fatal(err)
		}
		if got := isFull(r.last()); got != step.full {
			t.Errorf("%s: full sync %v, want %v", step.what, got, step.full)
		}
	}
}

// drift makes one change behind the Proxier's back.
func drift(t *testing.T, f *knftables.Fake, change func(tx *knftables.Transaction)) {
	t.Helper()
	tx := f.NewTransaction()
	change(tx)
	if err := f.Run(ctx, tx); err != nil {
		t.Fatalf("making drift: %v", err)
	}
}

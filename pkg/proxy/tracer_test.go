package proxy

// A packet tracer over the knftables Fake's ruleset: it runs a synthetic
// first packet of a connection through the hooks the kernel would (the
// base chains of the hook in priority order, then postrouting), evaluating
// the rules podnet writes, and explores every numgen outcome, so a test
// sees the set of endpoints a connection can reach, whether it is
// rejected or dropped, and whether it is masqueraded.
//
// It understands exactly the statement forms podnet writes and fails the
// test on any other, so a new rule shape must come with a new case here.

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"
)

// packet is the first packet of a connection.
type packet struct {
	src, dst string
	proto    Protocol
	dport    uint16
	// local: sent by a process of the node (output hook); otherwise it
	// arrives from a pod or from outside (prerouting).
	local bool
}

// outcome is where one path of the packet ends.
type outcome struct {
	verdict string // accept, drop, reject
	dnat    string // ip:port of the endpoint, "" if not DNATed
	masq    bool   // masqueraded in postrouting
	sticky  string // the affinity set the path records the client in
}

type tracer struct {
	t     *testing.T
	f     *knftables.Fake
	local map[netip.Addr]bool // the node's addresses (fib ... type local)
	stuck map[string]bool     // affinity sets that hold the client
	chain []string            // the chains walked, for error messages
}

func newTracer(t *testing.T, f *knftables.Fake, localAddrs ...string) *tracer {
	t.Helper()
	tr := &tracer{t: t, f: f, local: map[netip.Addr]bool{}, stuck: map[string]bool{}}
	for _, a := range localAddrs {
		tr.local[netip.MustParseAddr(a)] = true
	}
	return tr
}

// flowSt is the state of one path: what the rules did to the packet.
type flowSt struct {
	mark   uint32
	dnat   string
	sticky string
}

type resKind int

const (
	kNext    resKind = iota // the rule did not end the chain
	kReturn                 // the chain ended without a verdict
	kVerdict                // accept, drop, reject (incl. NAT statements)
)

type res struct {
	kind    resKind
	verdict string
	masq    bool
	st      flowSt
}

// trace runs p through prerouting (or output) and postrouting.
func (tr *tracer) trace(p packet) []outcome {
	tr.t.Helper()
	if tr.f.Table == nil {
		return []outcome{{verdict: "accept"}}
	}
	first := knftables.PreroutingHook
	if p.local {
		first = knftables.OutputHook
	}
	var out []outcome
	for _, r := range tr.hook(first, p, flowSt{}) {
		if r.verdict == "drop" || r.verdict == "reject" {
			out = append(out, outcome{verdict: r.verdict, dnat: r.st.dnat, sticky: r.st.sticky})
			continue
		}
		for _, post := range tr.hook(knftables.PostroutingHook, p, r.st) {
			out = append(out, outcome{verdict: post.verdict, dnat: post.st.dnat, masq: post.masq, sticky: post.st.sticky})
		}
	}
	return out
}

// hook runs the base chains of one hook in priority order. A chain that
// ends without a verdict, or with accept, passes the packet to the next.
func (tr *tracer) hook(h knftables.BaseChainHook, p packet, st flowSt) []res {
	var chains []*knftables.FakeChain
	for _, c := range tr.f.Table.Chains {
		if c.Hook != nil && *c.Hook == h {
			chains = append(chains, c)
		}
	}
	sort.Slice(chains, func(i, j int) bool { return priority(tr.t, chains[i]) < priority(tr.t, chains[j]) })
	cur := []res{{kind: kVerdict, verdict: "accept", st: st}}
	for _, c := range chains {
		var next []res
		for _, r := range cur {
			if r.verdict != "accept" {
				next = append(next, r)
				continue
			}
			for _, r2 := range tr.run(c.Name, p, r.st, 0) {
				if r2.kind != kVerdict {
					r2.kind, r2.verdict = kVerdict, "accept" // the policy: accept
				}
				r2.masq = r2.masq || r.masq
				next = append(next, r2)
			}
		}
		cur = next
	}
	return cur
}

func priority(t *testing.T, c *knftables.FakeChain) int {
	named := map[string]int{"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
	s := string(*c.Priority)
	if v, ok := named[s]; ok {
		return v
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("chain %s: priority %q", c.Name, s)
	}
	return v
}

// run evaluates a chain: rule after rule, every path on its own.
func (tr *tracer) run(name string, p packet, st flowSt, depth int) []res {
	tr.t.Helper()
	c := tr.f.Table.Chains[name]
	if c == nil {
		tr.t.Fatalf("trace %v: jump to missing chain %s (via %v)", p, name, tr.chain)
	}
	if depth > 16 {
		tr.t.Fatalf("trace %v: chains nest too deep: %v", p, tr.chain)
	}
	tr.chain = append(tr.chain, name)
	defer func() { tr.chain = tr.chain[:len(tr.chain)-1] }()
	live, ended := []flowSt{st}, []res(nil)
	for _, r := range c.Rules {
		var next []flowSt
		for _, s := range live {
			for _, x := range tr.rule(r.Rule, p, s, depth) {
				if x.kind == kNext {
					next = append(next, x.st)
				} else {
					ended = append(ended, x)
				}
			}
		}
		live = next
	}
	for _, s := range live {
		ended = append(ended, res{kind: kReturn, st: s})
	}
	return ended
}

// rule evaluates one rule: its matches left to right, then its statements.
func (tr *tracer) rule(rule string, p packet, st flowSt, depth int) []res {
	tr.t.Helper()
	w := strings.Fields(rule)
	for len(w) > 0 {
		n, ok := tr.match(w, p, &st)
		if n == 0 {
			return tr.statement(w, rule, p, st, depth)
		}
		if !ok {
			return []res{{kind: kNext, st: st}}
		}
		w = w[n:]
	}
	return []res{{kind: kNext, st: st}}
}

// match tries the matches podnet writes at the start of w; it returns how
// many words it used (0: w starts with a statement) and whether the
// packet matched.
func (tr *tracer) match(w []string, p packet, st *flowSt) (int, bool) {
	tr.t.Helper()
	at := func(i int) string {
		if i < len(w) {
			return w[i]
		}
		return ""
	}
	switch {
	case at(0) == "ct" && at(1) == "state" && at(2) == "new":
		return 3, true // the tracer follows first packets only
	case at(0) == "ct" && at(1) == "status" && at(2) == "dnat":
		return 3, st.dnat != ""
	case at(1) == "saddr" && at(2) == "." && at(4) == "daddr" && strings.HasPrefix(at(5), "@"):
		// The source and the destination as it is now (after DNAT).
		dst := p.dst
		if st.dnat != "" {
			dst = netip.MustParseAddrPort(st.dnat).Addr().String()
		}
		return 6, tr.pairIn(p.src, dst, at(5)[1:])
	case at(0) == "fib" && at(2) == "type" && at(3) == "local":
		a := p.src
		if at(1) == "daddr" {
			a = p.dst
		}
		return 4, tr.local[netip.MustParseAddr(a)]
	case (at(0) == "ip" || at(0) == "ip6") && (at(1) == "saddr" || at(1) == "daddr") && at(2) != "." && at(3) != "vmap":
		a := p.src
		if at(1) == "daddr" {
			a = p.dst
		}
		if at(2) == "!=" {
			return 4, !tr.addrIn(netip.MustParseAddr(a), at(3))
		}
		return 3, tr.addrIn(netip.MustParseAddr(a), at(2))
	case at(0) == "meta" && at(1) == "l4proto" && at(2) != ".":
		return 3, string(p.proto) == at(2)
	case at(0) == "meta" && at(1) == "mark" && at(2) == "&" && at(4) == "==":
		return 6, st.mark&parseHex(tr.t, at(3)) == parseHex(tr.t, at(5))
	}
	return 0, false
}

// addrIn matches a against an address, a prefix or a @set.
func (tr *tracer) addrIn(a netip.Addr, what string) bool {
	tr.t.Helper()
	if name, ok := strings.CutPrefix(what, "@"); ok {
		set := tr.f.Table.Sets[name]
		if set == nil {
			tr.t.Fatalf("rule refers to missing set %s", name)
		}
		if slices.Contains(set.Flags, knftables.DynamicFlag) {
			return tr.stuck[name] // an affinity set: holds the client or not
		}
		for _, e := range set.Elements {
			if tr.addrIn(a, e.Key[0]) {
				return true
			}
		}
		return false
	}
	if pfx, err := netip.ParsePrefix(what); err == nil {
		return pfx.Contains(a)
	}
	return netip.MustParseAddr(what) == a
}

// pairIn looks a . b up in a set of address pairs.
func (tr *tracer) pairIn(a, b, name string) bool {
	tr.t.Helper()
	set := tr.f.Table.Sets[name]
	if set == nil {
		tr.t.Fatalf("rule refers to missing set %s", name)
	}
	return set.FindElement(a, b) != nil
}

// statement runs the statement at the start of w (the rest of the rule).
func (tr *tracer) statement(w []string, rule string, p packet, st flowSt, depth int) []res {
	tr.t.Helper()
	s := strings.Join(w, " ")
	switch {
	case len(w) == 2 && (w[0] == "jump" || w[0] == "goto"):
		var out []res
		for _, r := range tr.run(w[1], p, st, depth+1) {
			if r.kind == kReturn { // jump: continue here; goto: this chain ends too
				r.kind = map[string]resKind{"jump": kNext, "goto": kReturn}[w[0]]
			}
			out = append(out, r)
		}
		return out
	case s == "return":
		return []res{{kind: kReturn, st: st}}
	case s == "drop" || s == "accept":
		return []res{{kind: kVerdict, verdict: s, st: st}}
	case strings.HasPrefix(s, "reject"):
		return []res{{kind: kVerdict, verdict: "reject", st: st}}
	case len(w) == 3 && w[0] == "dnat" && w[1] == "to":
		st.dnat = w[2]
		return []res{{kind: kVerdict, verdict: "accept", st: st}}
	case s == "masquerade fully-random":
		return []res{{kind: kVerdict, verdict: "accept", masq: true, st: st}}
	case len(w) == 7 && strings.Join(w[:5], " ") == "meta mark set meta mark":
		switch w[5] {
		case "|":
			st.mark |= parseHex(tr.t, w[6])
		case "^":
			st.mark ^= parseHex(tr.t, w[6])
		default:
			tr.t.Fatalf("unknown mark operator in %q", rule)
		}
		return []res{{kind: kNext, st: st}}
	case len(w) == 6 && w[0] == "update" && strings.HasPrefix(w[1], "@") && w[2] == "{" && w[5] == "}":
		st.sticky = strings.TrimPrefix(w[1], "@")
		return []res{{kind: kNext, st: st}}
	case strings.HasPrefix(s, "numgen random mod ") && strings.Contains(s, " vmap { "):
		return tr.numgenVmap(s, rule, p, st, depth)
	case len(w) > 6 && w[0] == "dnat" && strings.Join(w[2:6], " ") == "addr . port to":
		return tr.pickDNAT(strings.Join(w[6:], " "), rule, p, st)
	case strings.HasSuffix(s, "vmap @"+lastAt(s)):
		return tr.vmap(w, rule, p, st, depth)
	}
	tr.t.Fatalf("tracer: unknown statement %q in rule %q", s, rule)
	return nil
}

func lastAt(s string) string {
	i := strings.LastIndex(s, "@")
	if i < 0 {
		return "\x00"
	}
	return s[i+1:]
}

// vmap looks the packet up in a verdict map and runs the verdict found.
func (tr *tracer) vmap(w []string, rule string, p packet, st flowSt, depth int) []res {
	tr.t.Helper()
	keyExpr := strings.Join(w[:len(w)-2], " ")
	name := strings.TrimPrefix(w[len(w)-1], "@")
	var key []string
	switch keyExpr {
	case "ip daddr . meta l4proto . th dport", "ip6 daddr . meta l4proto . th dport":
		key = []string{p.dst, string(p.proto), fmt.Sprint(p.dport)}
	case "meta l4proto . th dport":
		key = []string{string(p.proto), fmt.Sprint(p.dport)}
	default:
		tr.t.Fatalf("tracer: unknown map key %q in %q", keyExpr, rule)
	}
	m := tr.f.Table.Maps[name]
	if m == nil {
		tr.t.Fatalf("rule refers to missing map %s", name)
	}
	e := m.FindElement(key...)
	if e == nil {
		return []res{{kind: kNext, st: st}}
	}
	return tr.statement(strings.Fields(e.Value[0]), rule, p, st, depth)
}

// pickDNAT explores every outcome of "numgen random mod N offset B map
// @pick-S": each of the keys B..B+N-1 must be an endpoint, once each.
func (tr *tracer) pickDNAT(s, rule string, p packet, st flowSt) []res {
	tr.t.Helper()
	var n, base int
	var name string
	if _, err := fmt.Sscanf(s, "numgen random mod %d offset %d map @%s", &n, &base, &name); err != nil {
		tr.t.Fatalf("tracer: %q: %v", rule, err)
	}
	m := tr.f.Table.Maps[name]
	if m == nil {
		tr.t.Fatalf("tracer: rule refers to missing map %s", name)
	}
	var out []res
	for i := range n {
		e := m.FindElement(strconv.Itoa(base + i))
		if e == nil {
			tr.t.Fatalf("tracer: numgen outcome %d (key %d of %s) leads nowhere: %q", i, base+i, name, rule)
		}
		f := strings.Fields(e.Value[0])
		if len(f) != 3 || f[1] != "." {
			tr.t.Fatalf("tracer: %s key %d: %q is not address . port", name, base+i, e.Value[0])
		}
		next := st
		next.dnat = net.JoinHostPort(f[0], f[2])
		out = append(out, res{kind: kVerdict, verdict: "accept", st: next})
	}
	return out
}

// numgenVmap explores every branch of "numgen random mod N vmap { i :
// goto chain , ... }", and checks the map has each of 0..N-1 exactly once.
func (tr *tracer) numgenVmap(s, rule string, p packet, st flowSt, depth int) []res {
	tr.t.Helper()
	var n int
	if _, err := fmt.Sscanf(s, "numgen random mod %d vmap", &n); err != nil {
		tr.t.Fatalf("tracer: %q: %v", rule, err)
	}
	body := s[strings.Index(s, "{")+1 : strings.LastIndex(s, "}")]
	seen := map[int]bool{}
	var out []res
	for _, entry := range strings.Split(body, ",") {
		f := strings.Fields(entry)
		if len(f) != 4 || f[1] != ":" || f[2] != "goto" {
			tr.t.Fatalf("tracer: numgen entry %q in %q", entry, rule)
		}
		i, err := strconv.Atoi(f[0])
		if err != nil || i < 0 || i >= n || seen[i] {
			tr.t.Fatalf("tracer: numgen mod %d has entry %q twice or out of range: %q", n, f[0], rule)
		}
		seen[i] = true
		out = append(out, tr.statement(f[2:], rule, p, st, depth)...)
	}
	if len(seen) != n {
		tr.t.Fatalf("tracer: numgen mod %d has %d entries: some outcomes lead nowhere: %q", n, len(seen), rule)
	}
	return out
}

func parseHex(t *testing.T, s string) uint32 {
	v, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 32)
	if err != nil {
		t.Fatalf("tracer: %q is not a hex mark", s)
	}
	return uint32(v)
}

// Helpers to read a trace.

// endpoints are the DNAT destinations the connection can reach, sorted.
func endpoints(out []outcome) []string {
	var eps []string
	for _, o := range out {
		if o.verdict == "accept" && o.dnat != "" && !slices.Contains(eps, o.dnat) {
			eps = append(eps, o.dnat)
		}
	}
	slices.Sort(eps)
	return eps
}

// verdicts are the distinct verdicts, sorted.
func verdicts(out []outcome) []string {
	var vs []string
	for _, o := range out {
		if !slices.Contains(vs, o.verdict) {
			vs = append(vs, o.verdict)
		}
	}
	slices.Sort(vs)
	return vs
}

// masquerade is "all", "none" or "mixed" over the accepted paths.
func masquerade(out []outcome) string {
	yes, no := 0, 0
	for _, o := range out {
		if o.verdict != "accept" {
			continue
		}
		if o.masq {
			yes++
		} else {
			no++
		}
	}
	switch {
	case yes > 0 && no == 0:
		return "all"
	case no > 0 && yes == 0:
		return "none"
	case yes == 0 && no == 0:
		return "n/a"
	}
	return "mixed"
}

// expect is what a test wants from a trace.
type expect struct {
	endpoints []string // nil: none
	verdict   string   // the one verdict of every path
	masq      string   // all, none, n/a
}

func (tr *tracer) expect(what string, p packet, want expect) []outcome {
	tr.t.Helper()
	out := tr.trace(p)
	if got := endpoints(out); !slices.Equal(got, want.endpoints) {
		tr.t.Errorf("%s: endpoints %v, want %v", what, got, want.endpoints)
	}
	if got := verdicts(out); len(got) != 1 || got[0] != want.verdict {
		tr.t.Errorf("%s: verdicts %v, want only %s", what, got, want.verdict)
	}
	if got := masquerade(out); got != want.masq {
		tr.t.Errorf("%s: masquerade %s, want %s", what, got, want.masq)
	}
	return out
}

package main

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// The targets.
const (
	targetVsRef   = 0.5 // podnet serial ADD p50 / reference serial ADD p50
	targetScaling = 3.0 // podnet concurrent ADD p50 / podnet serial ADD p50
)

// stats are the percentiles of one implementation in one mode.
type stats struct {
	addP50, addP99, delP50, delP99, sumP50 time.Duration
	n                                      int
	rate                                   float64       // sandboxes (ADD+DEL) per second of wall time
	cpu                                    time.Duration // plugin CPU time per sandbox (ADD+DEL)
	addCPU                                 time.Duration // p50 of the plugin CPU time of one ADD (serial only)
}

func summarize(s []sample, wall, cpu time.Duration) stats {
	add := make([]time.Duration, len(s))
	del := make([]time.Duration, len(s))
	sum := make([]time.Duration, len(s))
	addCPU := make([]time.Duration, len(s))
	for i, x := range s {
		add[i], del[i], sum[i], addCPU[i] = x.add, x.del, x.add+x.del, x.addCPU
	}
	st := stats{addP50: pct(add, 50), addP99: pct(add, 99), delP50: pct(del, 50), delP99: pct(del, 99),
		sumP50: pct(sum, 50), n: len(s), addCPU: pct(addCPU, 50)}
	if wall > 0 {
		st.rate = float64(len(s)) / wall.Seconds()
	}
	if len(s) > 0 {
		st.cpu = cpu / time.Duration(len(s))
	}
	return st
}

// pct is the nearest-rank percentile p of d.
func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	d = slices.Clone(d)
	slices.Sort(d)
	i := int(math.Ceil(p/100*float64(len(d)))) - 1
	return d[max(0, min(i, len(d)-1))]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return math.NaN()
	}
	return float64(a) / float64(b)
}

func verdict(r, target float64) string {
	if r <= target {
		return "PASS"
	}
	return "MISS"
}

func (b *bench) report(pn, ref *impl) {
	conc := fmt.Sprintf("%d-conc", b.opts.concurrency)
	ps, rs := summarize(pn.serial, pn.serialWall, pn.serialCPU), summarize(ref.serial, ref.serialWall, ref.serialCPU)
	pc, rc := summarize(pn.conc, pn.concWall, pn.concCPU), summarize(ref.conc, ref.concWall, ref.concCPU)
	w := b.out

	fmt.Fprintf(w, "%-20s %9s %9s %9s %9s %12s %8s %12s %9s\n", "", "ADD p50", "ADD p99", "DEL p50", "DEL p99", "ADD+DEL p50", "samples", "sandboxes/s", "CPU/sbx")
	row := func(name, mode string, s stats) {
		fmt.Fprintf(w, "%-10s %-9s %9s %9s %9s %9s %12s %8d %12.1f %9s\n", name, mode,
			ms(s.addP50), ms(s.addP99), ms(s.delP50), ms(s.delP99), ms(s.sumP50), s.n, s.rate, ms(s.cpu))
	}
	row("podnet", "serial", ps)
	row("reference", "serial", rs)
	row("podnet", conc, pc)
	row("reference", conc, rc)

	fmt.Fprintf(w, "\npodnet / reference %12s %9s\n", "serial", conc)
	cmp := func(name string, p, r, pC, rC time.Duration) {
		fmt.Fprintf(w, "  %-16s %12.2f %9.2f\n", name, ratio(p, r), ratio(pC, rC))
	}
	cmp("ADD p50", ps.addP50, rs.addP50, pc.addP50, rc.addP50)
	cmp("ADD p99", ps.addP99, rs.addP99, pc.addP99, rc.addP99)
	cmp("DEL p50", ps.delP50, rs.delP50, pc.delP50, rc.delP50)
	cmp("DEL p99", ps.delP99, rs.delP99, pc.delP99, rc.delP99)
	cmp("ADD+DEL p50", ps.sumP50, rs.sumP50, pc.sumP50, rc.sumP50)

	fmt.Fprintf(w, "\ntargets\n")
	r := ratio(ps.addP50, rs.addP50)
	fmt.Fprintf(w, "  %-52s %5.2f  target <= %.1f  %s\n", "podnet serial ADD p50 / reference serial ADD p50", r, targetVsRef, verdict(r, targetVsRef))
	r = ratio(pc.addP50, ps.addP50)
	fmt.Fprintf(w, "  %-52s %5.2f  target <= %.1f  %s\n", "podnet "+conc+" ADD p50 / podnet serial ADD p50", r, targetScaling, verdict(r, targetScaling))
	r = ratio(rc.addP50, rs.addP50)
	fmt.Fprintf(w, "  %-52s %5.2f  (context: the reference's own scaling)\n", "reference "+conc+" ADD p50 / reference serial ADD p50", r)

	// Context for the scaling target: an ADD that keeps a fraction `busy`
	// of a CPU busy when run alone, run by c workers at once on fewer CPUs
	// than c*busy, is stretched by about c*busy/CPUs by CPU sharing alone,
	// however fast the plugin is.
	fmt.Fprintf(w, "  CPU sharing alone (CPU = user+sys of the plugin processes; CPU/sbx above: per ADD+DEL):\n")
	c := float64(b.opts.concurrency)
	for _, x := range []struct {
		name string
		s    stats
	}{{"podnet", ps}, {"reference", rs}} {
		busy := math.Min(1, ratio(x.s.addCPU, x.s.addP50))
		fmt.Fprintf(w, "    %-9s a serial ADD uses %s CPU of %s wall (%.2f CPU): %d at once on %d CPUs -> x%.1f; x%.1f would need %.1f CPUs\n",
			x.name, ms(x.s.addCPU), ms(x.s.addP50), busy, b.opts.concurrency, numCPU(),
			math.Max(1, c*busy/float64(numCPU())), targetScaling, c*busy/targetScaling)
	}

	fmt.Fprintf(w, "\nchecks\n")
	for _, im := range []*impl{pn, ref} {
		if im.clean() {
			fmt.Fprintf(w, "  %-10s OK: all %d ADDs returned an IP; after each of %d blocks/rounds no reservation, veth or libcni cache entry was left\n",
				im.name, im.adds, im.checks)
			continue
		}
		fmt.Fprintf(w, "  %-10s FAILED:\n", im.name)
		for _, p := range im.problems {
			fmt.Fprintf(w, "    %s\n", p)
		}
		if im.problemsMore > 0 {
			fmt.Fprintf(w, "    … and %d more\n", im.problemsMore)
		}
	}
	fmt.Fprintf(w, "\nnote: %d CPUs, possibly shared with other work: absolute times are noisy between runs; the ratios\n"+
		"compare interleaved blocks of this one run, so noise hits both implementations alike.\n", numCPU())
}

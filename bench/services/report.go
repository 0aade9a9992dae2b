package main

import (
	"fmt"
	"slices"
	"time"

	"github.com/podnet/podnet/bench/internal/benchenv"
)

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func verdict(met bool) string {
	if met {
		return "met"
	}
	return "NOT met"
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func (b *bench) report() {
	kp, pn := b.results[kubeProxy.name], b.results[podnet.name]
	fmt.Printf("\n== Service proxy: podnet against kube-proxy (nftables), %d endpoints per Service; load average %s\n",
		b.opts.endpoints, benchenv.LoadAvg())
	fmt.Println("\nTime to program (the proxy's own first full sync; start to programmed in brackets), target podnet ≤ 0.5 × kube-proxy")
	fmt.Printf("%8s  %22s  %22s  %6s  %s\n", "Services", "kube-proxy", "podnet", "ratio", "")
	for _, n := range b.opts.sizes {
		if n == 10 {
			continue // measured for the latency baseline
		}
		k, p := kp.program[n], pn.program[n]
		ratio := p.own / k.own
		fmt.Printf("%8d  %9.3f s [%7.2f s]  %9.3f s [%7.2f s]  %6.2f  %s\n", n, k.own, k.wall.Seconds(), p.own, p.wall.Seconds(), ratio, verdict(ratio <= 0.5))
	}
	most := b.opts.sizes[len(b.opts.sizes)-1]
	dur := func(r *result) []float64 {
		var v []float64
		for _, d := range r.change {
			v = append(v, ms(d))
		}
		return v
	}
	fmt.Printf("\nOne endpoint change with %d Services: API acknowledgement to the first accepted connection (median of %d; the proxy's own partial sync)\n", most, b.opts.changes)
	fmt.Printf("  kube-proxy %7.1f ms (sync %.1f ms)\n", median(dur(kp)), median(kp.changeSync)*1000)
	pc := median(dur(pn))
	fmt.Printf("  podnet     %7.1f ms (sync %.1f ms)   target ≤ 150 ms: %s\n", pc, median(pn.changeSync)*1000, verdict(pc <= 150))
	fmt.Printf("\nConnect latency to a ClusterIP (%d connects), target podnet at %d Services ≤ 1.2 × at 10\n", b.opts.connects, most)
	for _, x := range []struct {
		name string
		r    *result
	}{{"kube-proxy", kp}, {"podnet", pn}} {
		a, z := x.r.connect[10], x.r.connect[most]
		r50, r99 := ms(z.p50)/ms(a.p50), ms(z.p99)/ms(a.p99)
		line := fmt.Sprintf("  %-10s p50 %6.0f µs → %6.0f µs (×%.2f)   p99 %6.0f µs → %6.0f µs (×%.2f)", x.name,
			ms(a.p50)*1000, ms(z.p50)*1000, r50, ms(a.p99)*1000, ms(z.p99)*1000, r99)
		if x.name == "podnet" {
			line += fmt.Sprintf("   p50 %s, p99 %s", verdict(r50 <= 1.2), verdict(r99 <= 1.2))
		}
		fmt.Println(line)
	}
	fmt.Printf("\nThroughput node-1 → iperf3 pod on node-2 (%d rounds of %s, median), target podnet ClusterIP/direct ≥ 0.95\n", b.opts.rounds, b.opts.iperf)
	for _, x := range []struct {
		name string
		r    *result
	}{{"kube-proxy", kp}, {"podnet", pn}} {
		r := median(x.r.ratio)
		line := fmt.Sprintf("  %-10s ClusterIP %5.2f Gbit/s, direct %5.2f Gbit/s: %.2f", x.name, median(x.r.tput), median(x.r.direct), r)
		if x.name == "podnet" {
			line += "   " + verdict(r >= 0.95)
		}
		fmt.Println(line)
	}
}

package main

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/podnet/podnet/bench/internal/benchenv"
)

// The targets.
var tputTarget = map[string]float64{"host-gw": 0.90, "vxlan": 0.75} // pod / node throughput, at least

const latencyTarget = 1.3 // pod / node latency, at most

func (b *bench) header() {
	o := b.opts
	w := b.out
	fmt.Fprintf(w, "podnet cross-node data path: pod-to-pod against node-to-node TCP on one underlay, per backend\n")
	fmt.Fprintf(w, "machine: %d CPUs, kernel %s, load average %s at start (shared with other work: numbers are noisy)\n",
		runtime.NumCPU(), kernel(), benchenv.LoadAvg())
	fmt.Fprintf(w, "underlay: eth1 veths (MTU %d) on a bridge in a switch netns; routes by pkg/backend Setup+Sync in each node netns;\n"+
		"  pods by %s through libcni (podnetd's conflist, pod MTU = the backend's Facts.MTU); no device tuning added\n",
		underlayMTU, b.tools.podnetBin)
	fmt.Fprintf(w, "throughput: iperf3, 1 TCP stream, %s per run (+1s omitted as warm-up); latency: TCP request/response,\n"+
		"  %d-byte request and reply, %d round trips per run after %d untimed, on blocking sockets\n",
		o.duration, o.rrSize, o.rr, o.rrWarmup)
	fmt.Fprintf(w, "%d rounds; in each, node and pod runs of each backend alternate (ABBA); ratio = median of the per-round\n"+
		"  pod/node ratios, [min-max] over the rounds\n", o.rounds)
	fmt.Fprintf(w, "hybrid: between two nodes on one segment it programs exactly host-gw's routes (no VXLAN), so host-gw's rows stand for it\n")
	if b.tools.podnetBinWarning != "" {
		fmt.Fprintf(w, "WARNING: %s\n", b.tools.podnetBinWarning)
	}
	fmt.Fprintln(w)
}

// spread is the median and range of per-round values.
type spread struct{ med, lo, hi float64 }

func spreadOf(v []float64) spread {
	if len(v) == 0 {
		return spread{math.NaN(), math.NaN(), math.NaN()}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return spread{med, s[0], s[len(s)-1]}
}

func (s spread) String() string { return fmt.Sprintf("%5.2f [%.2f-%.2f]", s.med, s.lo, s.hi) }

// ratios are the per-round pod/node ratios of f.
func ratios[T any](node, pod []T, f func(T) float64) []float64 {
	out := make([]float64, 0, len(node))
	for i := range min(len(node), len(pod)) {
		out = append(out, f(pod[i])/f(node[i]))
	}
	return out
}

func values[T any](s []T, f func(T) float64) []float64 {
	out := make([]float64, len(s))
	for i, x := range s {
		out[i] = f(x)
	}
	return out
}

func verdict(met bool) string {
	if met {
		return "met"
	}
	return "NOT met"
}

func (b *bench) report(subs []*subject) {
	w := b.out
	// row prints one backend's line; the ratio r must be at least target
	// (atLeast) or at most target.
	row := func(s *subject, node, pod spread, unit string, r spread, target float64, atLeast bool, why string) {
		met, cmp, other := r.med <= target, "<=", r.lo <= target
		if atLeast {
			met, cmp, other = r.med >= target, ">=", r.hi >= target
		}
		res := verdict(met)
		if !met {
			res += ": " + why
			if other {
				res += " (some rounds met it: noisy)"
			}
		}
		fmt.Fprintf(w, "  %-9s %8.2f %-6s %8.2f %-6s   %-18s %s %-5.2f %s\n", s.lab.backend, node.med, unit, pod.med, unit, r, cmp, target, res)
	}
	header := func(name string) {
		fmt.Fprintf(w, "%-11s %15s %15s   %-18s %-8s %s\n", name, "node-to-node", "pod-to-pod", "pod/node [rounds]", "target", "result")
	}
	header("throughput")
	for _, s := range subs {
		gbps := func(t tputRun) float64 { return t.gbps }
		r := spreadOf(ratios(s.tput[nodePath], s.tput[podPath], gbps))
		target := tputTarget[s.lab.backend]
		row(s, spreadOf(values(s.tput[nodePath], gbps)), spreadOf(values(s.tput[podPath], gbps)), "Gbit/s",
			r, target, true, tputReason(s))
	}
	for _, q := range []struct {
		name string
		f    func(rrResult) float64
	}{{"latency p50", func(r rrResult) float64 { return us(r.P50) }}, {"latency p99", func(r rrResult) float64 { return us(r.P99) }}} {
		header(q.name)
		for _, s := range subs {
			r := spreadOf(ratios(s.rr[nodePath], s.rr[podPath], q.f))
			row(s, spreadOf(values(s.rr[nodePath], q.f)), spreadOf(values(s.rr[podPath], q.f)), "µs",
				r, latencyTarget, false, latencyReason(s))
		}
	}
	fmt.Fprintf(w, "\nper run\n")
	for _, s := range subs {
		b.perRun(s)
	}
	fmt.Fprintf(w, "\nnote: %d CPUs shared with other work: absolute numbers move between runs; the ratios compare interleaved\n"+
		"runs of this one run, so slow changes of the load hit node and pod runs alike. Both nodes and the switch\n"+
		"run on this one kernel: a path's whole cost (sender, both nodes' forwarding, receiver) shares these CPUs.\n", runtime.NumCPU())
}

// perRun prints every round's numbers of one backend, and what the
// underlay carried.
func (b *bench) perRun(s *subject) {
	w := b.out
	line := func(p int) string {
		var f []string
		for i, t := range s.tput[p] {
			f = append(f, fmt.Sprintf("%.2f", t.gbps))
			if i < len(s.rr[p]) {
				f[i] += fmt.Sprintf("/%.0f/%.0f", us(s.rr[p][i].P50), us(s.rr[p][i].P99))
			}
		}
		return strings.Join(f, "  ")
	}
	var retr [2]int
	for p := range pathNames {
		for _, t := range s.tput[p] {
			retr[p] += t.retr
		}
	}
	fmt.Fprintf(w, "  %s (pod MTU %d): Gbit/s / p50 µs / p99 µs by round\n", s.lab.backend, s.lab.nodes[0].facts.MTU)
	fmt.Fprintf(w, "    node-to-node  %s   (TCP retransmits %d)\n", line(nodePath), retr[nodePath])
	fmt.Fprintf(w, "    pod-to-pod    %s   (TCP retransmits %d)\n", line(podPath), retr[podPath])
	if s.lab.backend != "vxlan" {
		fmt.Fprintf(w, "    node-2 received %d UDP datagrams in the pod warm-up run: the pod traffic is routed, not encapsulated\n", s.warmUDP)
		return
	}
	if kb := s.datagramKB(); kb > 0 {
		// Each datagram carries one inner (GSO) packet: their mean size
		// says whether the 64 KB super-packets cross the underlay whole.
		fmt.Fprintf(w, "    VXLAN datagrams node-2 received in the pod runs: %.1f KB of TCP payload each\n", kb)
	}
	if s.offloads != "" {
		fmt.Fprintf(w, "    offloads (read, not set): %s\n", s.offloads)
	}
}

// datagramKB is the mean TCP payload per UDP datagram node-2 received
// during the pod runs, in KB (0 if none).
func (s *subject) datagramKB() float64 {
	var udp uint64
	var bytes float64
	for _, t := range s.tput[podPath] {
		udp, bytes = udp+t.udp, bytes+t.sent
	}
	if udp == 0 {
		return 0
	}
	return bytes / float64(udp) / 1024
}

// tputReason says, for a missed throughput target, what the pod path adds
// to every packet (the path's own structure, and what the run measured).
func tputReason(s *subject) string {
	if s.lab.backend == "vxlan" {
		return fmt.Sprintf("every packet (a %.0f KB GSO packet here) also takes VXLAN encap, outer UDP/IP and decap", s.datagramKB())
	}
	return "every packet also crosses the pod veth, cni0 and IP forwarding on each node"
}

// latencyReason says, for a missed latency target, what the pod path adds
// to each direction of a round trip.
func latencyReason(s *subject) string {
	if s.lab.backend == "vxlan" {
		return "each way: 2 more veths, cni0 twice, forwarding on both nodes, VXLAN encap and decap"
	}
	return "each way: 2 more veths, cni0 twice, forwarding on both nodes"
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

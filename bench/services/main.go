// Command services (`make bench`, or `go run ./bench/services` as root
// after `make build k8s`) measures podnet's Service proxy side by side with
// the real kube-proxy in nftables mode (the lab's, built from the same
// k8s.io/kubernetes module), in one run, and prints ratios with the
// issue's targets:
//
//   - time to program 1, 1,000 and 10,000 Services (10 endpoints each):
//     podnet at most half of kube-proxy's;
//   - one endpoint change with 10,000 Services present: podnet ≤ 150 ms;
//   - first-packet (TCP connect) latency to a ClusterIP, p50 and p99, with
//     10,000 Services at most 1.2× that with 10;
//   - ClusterIP throughput at least 0.95 of direct pod-IP throughput.
//
// Targets are reported (met / NOT met), never asserted: the exit status is
// 0 whatever the numbers, and non-zero when the benchmark cannot run or
// its cleanup fails.
//
// # Setup
//
// A lab (`podnetctl lab up --workers 2 --service-proxy none`, in a
// directory of its own, removed at the end): the real API server, and
// node-2 running the servers (two agnhost netexec pods behind the Service
// bench/probe, an iperf3 pod behind bench/iperf). The proxies run one at a
// time in node-1's network namespace, as the lab runs them, each against
// the same API objects: kube-proxy with the lab's flags, podnet's as
// `podnetd --run-network=false` (the same binary and code as in the
// lab's podnetd, the network part off, as kube-proxy has none). Between
// runs the proxy's tables are deleted, so each starts from nothing.
//
// # Method
//
//   - Programming: the Services (selectorless, one port) and their
//     EndpointSlices (10 endpoints at addresses nothing uses, in
//     10.248.0.0/13) are created first, then the proxy is started. The
//     time compared is the proxy's own measurement of its first full sync
//     (kube-proxy's kubeproxy_sync_full_proxy_rules_duration_seconds,
//     podnet's podnet_proxy_sync_duration_seconds{mode="full"}): the time
//     from the state in its caches to the rules in the kernel. The time
//     from the process's start until the kernel's map service-ips holds
//     every Service is printed beside it (it includes listing the objects
//     and, for kube-proxy, its start-up).
//   - One change: the Service bench/probe goes from no endpoint to one of
//     the netexec pods; a client in node-1's namespace connects to its
//     ClusterIP every 2 ms, and the time is from the API's acknowledgement
//     of the EndpointSlice update to the first accepted connection (watch,
//     proxy sync and kernel, end to end). -changes runs, median.
//   - Connect latency: -connects TCP connects (and closes) from node-1's
//     namespace to bench/probe's ClusterIP (two backends on node-2), each
//     timed to the end of the handshake; p50 and p99, with 10 and with
//     10,000 Services programmed.
//   - Throughput: iperf3 from node-1's namespace to bench/iperf's
//     ClusterIP and to the pod's own address, -iperf long, alternating,
//     -rounds rounds, median of the per-round ratios.
//
// The machine is small and shared (both proxies, the API server and the
// clients share its CPUs), so the numbers are noisy; the load average is
// printed with them.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/podnet/podnet/bench/internal/benchenv"
)

type options struct {
	sizes     []int
	endpoints int
	connects  int
	changes   int
	rounds    int
	iperf     time.Duration
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == probeCommand {
		os.Exit(probeMain(os.Args[2:]))
	}
	var o options
	flag.IntVar(&o.endpoints, "endpoints", 10, "endpoints per Service")
	flag.IntVar(&o.connects, "connects", 2000, "TCP connects per latency measurement")
	flag.IntVar(&o.changes, "changes", 5, "one-change measurements with the most Services (median)")
	flag.IntVar(&o.rounds, "rounds", 3, "throughput rounds")
	flag.DurationVar(&o.iperf, "iperf", 3*time.Second, "length of each iperf3 run")
	small := flag.Bool("small", false, "sizes 1, 10 and 100 instead of 1, 10, 1000 and 10000 (a quick check)")
	flag.Parse()
	o.sizes = []int{1, 10, 1000, 10000}
	if *small {
		o.sizes = []int{1, 10, 100}
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench/services: needs root (a lab of network namespaces)")
		os.Exit(1)
	}
	b := &bench{opts: o}
	os.Exit(benchenv.Run("bench/services", b.cleanup, b.run))
}

// Command net (`make bench`, or `go run ./bench/net` as root after
// `make build`) measures what podnet's cross-node data path costs: TCP
// throughput and TCP request/response latency from a pod on one node to a
// pod on another, against the same measurements between the two nodes
// themselves on the same underlay, for each backend side by side in one
// run, printed as ratios with the targets:
//
//   - pod-to-pod / node-to-node throughput: host-gw >= 0.90, vxlan >= 0.75
//   - pod-to-pod / node-to-node latency: <= 1.3x
//
// Targets are reported (met / NOT met), not asserted: the exit status is 0
// whatever the ratios, and non-zero when the benchmark cannot run, a path
// does not carry traffic, or the cleanup fails.
//
// # Topology
//
// One small cluster per backend, each in namespaces of its own (named
// pnbench-net-<backend>-<role>), as the lab builds it:
//
//	           switch  (netns …-sw, bridge br0)
//	          ┌────────┴─────────┐
//	node-1 (…-n1) eth1          node-2 (…-n2) eth1      veth pairs, MTU 1500
//	192.168.56.11/24            192.168.56.12/24
//	cni0 ─ pod (…-p1)           cni0 ─ pod (…-p2)       pods of 10.244.1.0/24, 10.244.2.0/24
//
// Everything a node holds is made by podnet's own code, as podnetd and a
// container runtime make it: pkg/backend's New(name), Setup (whose
// Facts.MTU is the pod MTU) and Sync (with the other node as the remote,
// its VTEP MAC taken from the annotations its Setup published) run inside
// the node namespace; the pods are made by the built podnet plugin (with
// the conflist podnetd writes: podnet, then the reference portmap) through
// libcni from inside the node namespace. The benchmark adds no tuning of
// its own to any device.
//
// # Method
//
// Throughput is one iperf3 TCP stream for -t (1 s more at the start is
// omitted, as warm-up); latency is a TCP request/response test of this
// program's own (the binary re-executed inside the namespaces with
// `ip netns exec`; blocking sockets, TCP_NODELAY, a -rr-size byte request
// echoed back, -rr round trips timed one by one after a warm-up), giving
// p50 and p99. Node-to-node runs from node-1's eth1 to node-2's eth1;
// pod-to-pod from the pod on node-1 to the pod on node-2.
//
// The machine is small and shared, so the numbers are noisy: node and pod
// runs are interleaved (A/B then B/A, over -rounds rounds, with the
// backends alternating too), each ratio is the median of the per-round
// pod/node ratios (so slow drifts of the machine's load cancel), and the
// spread of the rounds is printed beside it. All nodes share this one
// kernel and its CPUs: a path's whole cost (sender, both nodes'
// forwarding, encap and decap, receiver) competes for the same CPUs, where
// two real machines would share it out.
//
// During vxlan's pod runs it also counts the UDP datagrams node-2 receives
// (its /proc/net/snmp): the pod traffic must cross the underlay as VXLAN,
// and host-gw's must not.
//
// Everything it creates is removed at the end — on success, on error and
// on SIGINT/SIGTERM; namespaces (and their processes) left by an earlier
// run that was killed are removed at the start. Only one run at a time.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/podnet/podnet/bench/internal/benchenv"
	"github.com/podnet/podnet/internal/cnitest"
)

// options are the command-line flags.
type options struct {
	rounds       int
	duration     time.Duration
	rr, rrWarmup int
	rrSize       int
	backends     []string
	podnetDir    string
	refDir       string
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == rrCommand {
		os.Exit(rrMain(os.Args[2:]))
	}
	os.Exit(realMain())
}

func realMain() int {
	var o options
	var backends string
	flag.IntVar(&o.rounds, "rounds", 7, "interleaved rounds (each: node-to-node and pod-to-pod of every backend)")
	flag.DurationVar(&o.duration, "t", 4*time.Second, "iperf3 time per throughput run (1 s more is omitted as warm-up)")
	flag.IntVar(&o.rr, "rr", 20000, "timed round trips per latency run")
	flag.IntVar(&o.rrWarmup, "rr-warmup", 2000, "untimed round trips before them")
	flag.IntVar(&o.rrSize, "rr-size", 1, "bytes of each request and response")
	flag.StringVar(&backends, "backends", "host-gw,vxlan", "backends to measure, comma-separated (hybrid on one segment is host-gw)")
	flag.StringVar(&o.podnetDir, "podnet-dir", "", "directory holding the podnet plugin binary (default <module>/bin, from `make build`)")
	flag.StringVar(&o.refDir, "ref-dir", "", "directory of the reference plugins, for portmap (default $PODNET_REF_CNI_DIR, else /var/cache/podnet/cni-plugins/"+cnitest.RefVersion+")")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: go run ./bench/net [flags]   (as root, after `make build`)\n\n"+
			"Measures cross-node pod-to-pod TCP throughput and latency against node-to-node, per backend.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	o.backends = strings.Split(backends, ",")
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/net:", err)
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench/net: must run as root: it creates network namespaces, bridges and veths (sudo make bench)")
		return 1
	}
	tools, err := o.findTools()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/net:", err)
		return 1
	}
	return runLocked(o, tools)
}

// runLocked runs the benchmark while holding the one-run lock, with
// everything it creates removed however it ends.
func runLocked(o options, tools tools) int {
	unlock, err := lockRun()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/net:", err)
		return 1
	}
	defer unlock()
	reg, err := newRegistry(tools.ip)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/net:", err)
		return 1
	}
	b := &bench{opts: o, tools: tools, reg: reg, out: os.Stdout}
	return benchenv.Run("bench/net", reg.cleanup, b.run)
}

func (o options) validate() error {
	switch {
	case o.rounds < 1:
		return fmt.Errorf("-rounds must be at least 1")
	case o.duration < time.Second:
		return fmt.Errorf("-t must be at least 1s")
	case o.rr < 100:
		return fmt.Errorf("-rr must be at least 100 (for a p99)")
	case o.rrWarmup < 0:
		return fmt.Errorf("-rr-warmup must not be negative")
	case o.rrSize < 1 || o.rrSize > 65536:
		return fmt.Errorf("-rr-size must be 1..65536 bytes")
	}
	seen := map[string]bool{}
	for _, b := range o.backends {
		switch {
		case b == "hybrid":
			return fmt.Errorf("-backends: hybrid between two nodes on one segment programs exactly host-gw's routes: measure host-gw")
		case b != "vxlan" && b != "host-gw":
			return fmt.Errorf("-backends: unknown backend %q: use vxlan and/or host-gw", b)
		case seen[b]:
			return fmt.Errorf("-backends: %s twice", b)
		}
		seen[b] = true
	}
	return nil
}

// tools are the programs the benchmark runs.
type tools struct {
	ip, iperf3       string
	ethtool          string // optional: only to show the offloads in use
	podnetBin        string
	cniPath          []string // podnet's directory, then the reference plugins'
	self             string   // this program, re-executed for the latency test
	podnetBinWarning string
}

// findTools finds ip, iperf3, the podnet plugin and the reference portmap
// plugin, and says what to run when one is missing. It builds nothing.
func (o options) findTools() (tools, error) {
	var t tools
	var err error
	if t.ip, err = benchenv.LookPath("ip", "iproute2"); err != nil {
		return t, err
	}
	if t.iperf3, err = benchenv.LookPath("iperf3", "iperf3"); err != nil {
		return t, err
	}
	t.ethtool, _ = benchenv.LookPath("ethtool", "ethtool")
	if t.self, err = os.Executable(); err != nil {
		return t, fmt.Errorf("find this program's executable: %w", err)
	}
	if t.podnetBin, t.podnetBinWarning, err = benchenv.PodnetBinary(o.podnetDir); err != nil {
		return t, err
	}
	refDir, err := benchenv.RefPluginDir(o.refDir, "portmap")
	if err != nil {
		return t, fmt.Errorf("%w (portmap is in podnetd's conflist)", err)
	}
	t.cniPath = []string{filepath.Dir(t.podnetBin), refDir}
	return t, nil
}

// Command cni (`make bench`, or `go run ./bench/cni` as root after
// `make build`) measures the latency of CNI ADD and DEL of the podnet plugin
// side by side with the reference chain it replaces: the bridge plugin with
// host-local IPAM of containernetworking/plugins v1.9.1 (built by
// `make ref-plugins`; $PODNET_REF_CNI_DIR overrides where they are).
//
// # What it measures
//
// For each implementation it reports ADD p50/p99, DEL p50/p99 and the p50 of
// ADD+DEL per sandbox, once serially (one sandbox at a time) and once with
// -c workers (16 by default) running sandboxes at the same time, then the
// ratios the issue sets targets for:
//
//   - podnet serial ADD p50 / reference serial ADD p50   (target <= 0.5)
//   - podnet concurrent ADD p50 / podnet serial ADD p50  (target <= 3.0)
//
// and the same ratios of the reference for context, with the CPU time the
// plugin processes use per sandbox (user+sys of every process libcni ran,
// a delegated IPAM plugin included) and what sharing the machine's CPUs
// among -c workers alone does to latency. Targets are reported
// (PASS/MISS), not asserted: the exit status is 0 whatever the ratios. It is
// non-zero when the benchmark cannot run, an ADD or DEL fails, or a run does
// not leave the node clean (see below).
//
// # How
//
// The program drives the plugins exactly as a container runtime does:
// through libcni, from a goroutine whose OS thread is locked inside a "node"
// network namespace (ns.Do), so the plugin processes libcni execs inherit
// it. Each implementation has its own node namespace (so they never share
// the cni0 bridge), its own IPAM data directory and its own libcni cache.
// The configurations are the issue's: podnet with its built-in IPAM, and
// bridge (isGateway, hairpinMode, no ipMasq) with host-local, both MTU 1500
// on 10.244.1.0/24, CNI 1.1.0.
//
// Every sandbox is a fresh pod network namespace created before the timing
// starts (not timed) and removed after its block. ADD and DEL are timed
// separately around the libcni call. Warm-up sandboxes (-warmup, which also
// create the bridge) are excluded. To let the noise of a shared machine hit
// both implementations alike, the runs are interleaved: serial blocks of
// -block sandboxes and concurrent rounds alternate between the two in an
// ABBA order. A concurrent round starts all workers together at a barrier
// (each worker inside its own ns.Do) and they take sandboxes from a shared
// queue, so -c are in flight except in the last wave of a round.
//
// After every block and round it checks that every ADD returned an IP, and
// that after the DELs the IPAM directory holds no reservation, the node
// namespace no veth and libcni's cache no attachment.
//
// Everything it creates is named "pnbench-<run>-…" and removed at the end:
// on success, on error, and on SIGINT/SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"

	"github.com/podnet/podnet/bench/internal/benchenv"
	"github.com/podnet/podnet/internal/cnitest"
)

// refVersion is the containernetworking/plugins release the reference is
// built from (hack/ref-plugins.sh).
const refVersion = cnitest.RefVersion

type options struct {
	n, concurrency, warmup, block int
	podnetDir, refDir             string
}

func main() {
	os.Exit(realMain())
}

func realMain() int {
	var o options
	flag.IntVar(&o.n, "n", 200, "sandboxes per implementation and mode (serial, concurrent)")
	flag.IntVar(&o.concurrency, "c", 16, "workers in the concurrent mode")
	flag.IntVar(&o.warmup, "warmup", 5, "warm-up sandboxes per implementation, not measured")
	flag.IntVar(&o.block, "block", 10, "serial sandboxes per block before switching implementation")
	flag.StringVar(&o.podnetDir, "podnet-dir", "", "directory holding the podnet plugin binary (default <module>/bin, from `make build`)")
	flag.StringVar(&o.refDir, "ref-dir", "", "directory of the reference plugins (default $PODNET_REF_CNI_DIR, else /var/cache/podnet/cni-plugins/"+refVersion+")")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: go run ./bench/cni [flags]   (as root, after `make build`)\n\n"+
			"Measures CNI ADD/DEL latency of podnet against bridge+host-local %s, side by side.\n\n", refVersion)
		flag.PrintDefaults()
	}
	flag.Parse()
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/cni:", err)
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench/cni: must run as root: it creates network namespaces, bridges and veths (sudo make bench)")
		return 1
	}
	ipPath, err := benchenv.LookPath("ip", "iproute2")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/cni:", err)
		return 1
	}
	podnetBin, refDir, err := o.plugins()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/cni:", err)
		return 1
	}
	reg := newRegistry(ipPath)
	b := &bench{opts: o, reg: reg, out: os.Stdout}
	return benchenv.Run("bench/cni", reg.cleanup, func(ctx context.Context) error { return b.run(ctx, podnetBin, refDir) })
}

func (o options) validate() error {
	switch {
	case o.n < 1:
		return fmt.Errorf("-n must be at least 1")
	case o.concurrency < 1:
		return fmt.Errorf("-c must be at least 1")
	case o.warmup < 0:
		return fmt.Errorf("-warmup must not be negative")
	case o.block < 1:
		return fmt.Errorf("-block must be at least 1")
	case o.concurrency > 200:
		// Each worker holds one address of 10.244.1.0/24 at a time.
		return fmt.Errorf("-c must be at most 200 (the /24 of the benchmark's network)")
	}
	return nil
}

// plugins finds the podnet binary and the reference plugins, and says what
// to run when one is missing. It builds nothing.
func (o options) plugins() (podnetBin, refDir string, err error) {
	podnetBin, warning, err := benchenv.PodnetBinary(o.podnetDir)
	if err != nil {
		return "", "", err
	}
	if warning != "" {
		fmt.Fprintln(os.Stderr, "bench/cni: warning:", warning)
	}
	refDir, err = benchenv.RefPluginDir(o.refDir, "bridge", "host-local")
	return podnetBin, refDir, err
}

func numCPU() int { return runtime.NumCPU() }

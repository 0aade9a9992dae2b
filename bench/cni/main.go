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
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

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
	ipPath, err := findIP()
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
	defer reg.cleanup()
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	done := make(chan struct{})
	defer close(done)
	handleSignals(cancel, reg, done)

	b := &bench{opts: o, reg: reg, out: os.Stdout}
	code := 0
	if err := b.run(ctx, podnetBin, refDir); err != nil {
		if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
			err = cause
		}
		fmt.Fprintln(os.Stderr, "bench/cni:", err)
		code = 1
		var sig signalError
		if errors.As(err, &sig) {
			code = 128 + int(sig.sig)
		}
	}
	if errs := reg.cleanup(); len(errs) > 0 {
		fmt.Fprintln(os.Stderr, "bench/cni: cleanup:", errors.Join(errs...))
		code = 1
	}
	return code
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

// signalError is the cause of a run stopped by a signal.
type signalError struct{ sig syscall.Signal }

func (e signalError) Error() string { return "interrupted by " + e.sig.String() }

// handleSignals stops the run on SIGINT or SIGTERM: it cancels ctx (libcni
// kills the plugins it runs) so the run unwinds through its deferred
// cleanup. Should that not finish within 15s, or on a second signal, it
// removes everything itself and exits.
func handleSignals(cancel context.CancelCauseFunc, reg *registry, done <-chan struct{}) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		var s os.Signal
		select {
		case s = <-sigs:
		case <-done:
			return
		}
		sig, _ := s.(syscall.Signal)
		fmt.Fprintf(os.Stderr, "\nbench/cni: %v: stopping, removing the benchmark's namespaces\n", s)
		cancel(signalError{sig})
		select {
		case <-done:
			return
		case <-sigs:
		case <-time.After(15 * time.Second):
		}
		if errs := reg.cleanup(); len(errs) > 0 {
			fmt.Fprintln(os.Stderr, "bench/cni: cleanup:", errors.Join(errs...))
		}
		os.Exit(128 + int(sig))
	}()
}

// findIP finds iproute2's ip, which also lives in sbin directories a
// root shell's PATH may lack.
func findIP() (string, error) {
	if p, err := exec.LookPath("ip"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("iproute2's ip is not installed (apt-get install iproute2)")
}

// plugins finds the podnet binary and the reference plugins, and says what
// to run when one is missing. It builds nothing.
func (o options) plugins() (podnetBin, refDir string, err error) {
	root, err := cnitest.ModuleRoot()
	if err != nil {
		return "", "", err
	}
	dir := o.podnetDir
	if dir == "" {
		dir = filepath.Join(root, "bin")
	}
	podnetBin = filepath.Join(dir, "podnet")
	if fi, err := os.Stat(podnetBin); err != nil || fi.Mode()&0o111 == 0 {
		return "", "", fmt.Errorf("no podnet plugin binary at %s: run `make build` first (`make bench` does)", podnetBin)
	}
	if newer := newerSource(root, podnetBin); newer != "" {
		fmt.Fprintf(os.Stderr, "bench/cni: warning: %s is newer than %s: run `make build` to measure the current code\n", newer, podnetBin)
	}
	refDir = o.refDir
	if refDir == "" {
		refDir = os.Getenv("PODNET_REF_CNI_DIR")
	}
	if refDir == "" {
		refDir = "/var/cache/podnet/cni-plugins/" + refVersion
	}
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(refDir, p)); err != nil {
			return "", "", fmt.Errorf("reference CNI plugin %s is not in %s: run `make ref-plugins` (`make bench` does)", p, refDir)
		}
	}
	return podnetBin, refDir, nil
}

// newerSource returns a non-test Go source file of the plugin (cmd/, pkg/,
// go.mod, go.sum) modified after bin, or "".
func newerSource(root, bin string) string {
	fi, err := os.Stat(bin)
	if err != nil {
		return ""
	}
	built := fi.ModTime()
	var newer string
	for _, sub := range []string{"cmd", "pkg", "go.mod", "go.sum"} {
		_ = filepath.WalkDir(filepath.Join(root, sub), func(p string, d fs.DirEntry, err error) error {
			if err != nil || newer != "" {
				return fs.SkipAll
			}
			isSource := strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go")
			if d.IsDir() || !(isSource || strings.HasPrefix(d.Name(), "go.")) {
				return nil
			}
			if info, err := d.Info(); err == nil && info.ModTime().After(built) {
				newer, _ = filepath.Rel(root, p)
				return fs.SkipAll
			}
			return nil
		})
	}
	return newer
}

// loadavg is the first three fields of /proc/loadavg, or "?".
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func numCPU() int { return runtime.NumCPU() }

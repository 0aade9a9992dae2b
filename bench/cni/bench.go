package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/bench/internal/benchenv"
)

const (
	netName = "benchnet"
	subnet  = "10.244.1.0/24"
)

// bench is one benchmark run.
type bench struct {
	opts options
	reg  *registry
	out  io.Writer
	seq  atomic.Int64 // numbers pod namespaces
}

// impl is one implementation under test, on its own node.
type impl struct {
	name     string
	node     string // node namespace name
	ipamDir  string // where its IPAM keeps this network's reservations
	cacheDir string // libcni's cache
	cni      *libcni.CNIConfig
	list     *libcni.NetworkConfigList

	serial, conc []sample
	// Wall time of the measured serial blocks and concurrent rounds, and
	// the CPU time their plugin processes used.
	serialWall, concWall time.Duration
	serialCPU, concCPU   time.Duration
	adds, noIP           int // ADDs run (warm-up included), and those without an IP
	checks               int // blocks and rounds checked for leftovers
	problems             []string
	problemsMore         int
}

// sample is one sandbox's ADD and DEL latency and, in the serial mode
// only (where one plugin runs at a time), the CPU time of the ADD's plugin
// processes.
type sample struct{ add, del, addCPU time.Duration }

// block is what one serial block or concurrent round measured.
type block struct {
	samples []sample
	wall    time.Duration // from the first ADD to the last DEL
	cpu     time.Duration // CPU time of the plugin processes
}

// sandbox is one pod: a fresh network namespace and the runtime config
// libcni passes for it.
type sandbox struct {
	ns string
	rt *libcni.RuntimeConf
}

func (b *bench) run(ctx context.Context, podnetBin, refDir string) error {
	if other := b.reg.otherRuns(); len(other) > 0 {
		fmt.Fprintf(os.Stderr, "bench/cni: note: %d pnbench namespaces of another run exist (left alone): %v\n", len(other), other)
	}
	podnetConf := `{"type":"podnet","bridge":"cni0","mtu":1500,"ipam":{"ranges":[[{"subnet":%q}]],"dataDir":%q}}`
	refConf := `{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":false,"hairpinMode":true,"mtu":1500,` +
		`"ipam":{"type":"host-local","ranges":[[{"subnet":%q}]],"dataDir":%q}}`
	pn, err := b.newImpl("podnet", filepath.Dir(podnetBin), podnetConf)
	if err != nil {
		return err
	}
	ref, err := b.newImpl("reference", refDir, refConf)
	if err != nil {
		return err
	}
	impls := [2]*impl{pn, ref}

	fmt.Fprintf(b.out, "podnet CNI ADD/DEL latency: podnet (%s) vs reference bridge+host-local %s (%s)\n", podnetBin, refVersion, refDir)
	fmt.Fprintf(b.out, "%d sandboxes per implementation serially (blocks of %d) and %d-concurrent, %d warm-up each; CNI %s, %s, MTU 1500\n",
		b.opts.n, b.opts.block, b.opts.concurrency, b.opts.warmup, "1.1.0", subnet)
	fmt.Fprintf(b.out, "machine: %d CPUs, load average %s at start\n", numCPU(), benchenv.LoadAvg())

	// Warm-up: page cache, the bridge (the first ADD creates it) and the
	// IPAM directories; not measured, but checked.
	for _, im := range impls {
		if _, err := b.serialBlock(ctx, im, b.opts.warmup); err != nil {
			return err
		}
	}
	// Serial blocks alternate ABBA so neither implementation always runs
	// first, after the other's namespace removals.
	for i, left := 0, b.opts.n; left > 0; i++ {
		k := min(b.opts.block, left)
		left -= k
		for _, im := range abba(impls, i) {
			r, err := b.serialBlock(ctx, im, k)
			if err != nil {
				return err
			}
			im.serial = append(im.serial, r.samples...)
			im.serialWall, im.serialCPU = im.serialWall+r.wall, im.serialCPU+r.cpu
		}
	}
	// Concurrent rounds: about four waves of -c sandboxes each, so most
	// samples run with -c in flight, and still a few alternations.
	rounds := max(1, b.opts.n/(4*b.opts.concurrency))
	for i := 0; i < rounds; i++ {
		k := b.opts.n/rounds + btoi(i < b.opts.n%rounds)
		for _, im := range abba(impls, i) {
			r, err := b.concurrentRound(ctx, im, k)
			if err != nil {
				return err
			}
			im.conc = append(im.conc, r.samples...)
			im.concWall, im.concCPU = im.concWall+r.wall, im.concCPU+r.cpu
		}
	}
	fmt.Fprintf(b.out, "load average %s at end\n\n", benchenv.LoadAvg())
	b.report(pn, ref)
	if !pn.clean() || !ref.clean() {
		return fmt.Errorf("a run did not leave its node clean (see above)")
	}
	return nil
}

// childCPU is the user+system CPU time of every plugin process run so far
// (libcni waits for each; a delegated IPAM plugin counts with its parent).
// Blocks and rounds run one implementation at a time, so the difference
// around one is that implementation's.
func childCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_CHILDREN, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func abba(impls [2]*impl, i int) [2]*impl {
	if i%2 == 1 {
		return [2]*impl{impls[1], impls[0]}
	}
	return impls
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// newImpl makes the node namespace and directories of one implementation;
// conf is its plugin entry with %q for the subnet and the IPAM data dir.
func (b *bench) newImpl(name, pluginDir, conf string) (*impl, error) {
	dir, err := b.reg.tempDir()
	if err != nil {
		return nil, err
	}
	im := &impl{name: name, node: b.reg.name("node-" + name), cacheDir: filepath.Join(dir, "cache")}
	dataDir := filepath.Join(dir, "ipam")
	im.ipamDir = filepath.Join(dataDir, netName) // both IPAMs keep <dataDir>/<network>
	js := fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[`+conf+`]}`, netName, subnet, dataDir)
	if im.list, err = libcni.NetworkConfFromBytes([]byte(js)); err != nil {
		return nil, fmt.Errorf("parse %s conflist %s: %w", name, js, err)
	}
	im.cni = libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, im.cacheDir, nil)
	if err := b.reg.addNS(im.node); err != nil {
		return nil, err
	}
	return im, nil
}

// sandboxes creates k pod namespaces (not timed).
func (b *bench) sandboxes(k int) ([]sandbox, []string, error) {
	sbs := make([]sandbox, k)
	names := make([]string, k)
	for i := range sbs {
		id := make([]byte, 32)
		_, _ = rand.Read(id)
		name := b.reg.name("pod-" + strconv.FormatInt(b.seq.Add(1), 10))
		names[i] = name
		sbs[i] = sandbox{ns: name, rt: &libcni.RuntimeConf{
			ContainerID: hex.EncodeToString(id), NetNS: nsPath(name), IfName: "eth0",
			Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "bench"}, {"K8S_POD_NAME", name}},
		}}
	}
	return sbs, names, b.reg.addNS(names...)
}

// inNode runs fn on a goroutine whose OS thread is locked inside the
// node namespace, so the plugins libcni execs run there.
func inNode(im *impl, fn func() error) error {
	h, err := ns.GetNS(nsPath(im.node))
	if err != nil {
		return fmt.Errorf("open node namespace %s: %w", im.node, err)
	}
	defer h.Close()
	return h.Do(func(ns.NetNS) error { return fn() })
}

// cycle runs and times ADD, then DEL, of one sandbox. It must run inside
// the node namespace. serial says no other plugin runs meanwhile, so the
// ADD's CPU time can be told apart.
func (im *impl) cycle(ctx context.Context, sb sandbox, serial bool) (s sample, hasIP bool, err error) {
	var cpu0 time.Duration
	if serial {
		cpu0 = childCPU()
	}
	t0 := time.Now()
	res, err := im.cni.AddNetworkList(ctx, im.list, sb.rt)
	s.add = time.Since(t0)
	if serial {
		s.addCPU = childCPU() - cpu0
	}
	if err != nil {
		return s, false, fmt.Errorf("%s: ADD of %s: %w", im.name, sb.ns, err)
	}
	if cur, err := current.NewResultFromResult(res); err == nil {
		hasIP = len(cur.IPs) > 0
	}
	t1 := time.Now()
	err = im.cni.DelNetworkList(ctx, im.list, sb.rt)
	s.del = time.Since(t1)
	if err != nil {
		return s, hasIP, fmt.Errorf("%s: DEL of %s: %w", im.name, sb.ns, err)
	}
	return s, hasIP, nil
}

// serialBlock runs k sandboxes one after the other.
func (b *bench) serialBlock(ctx context.Context, im *impl, k int) (block, error) {
	if k == 0 {
		return block{}, nil
	}
	sbs, names, err := b.sandboxes(k)
	defer func() { _ = b.reg.delNS(names...) }()
	if err != nil {
		return block{}, err
	}
	out := make([]sample, 0, k)
	noIP := 0
	var wall time.Duration
	cpu0 := childCPU()
	err = inNode(im, func() error {
		start := time.Now()
		defer func() { wall = time.Since(start) }()
		for _, sb := range sbs {
			if err := context.Cause(ctx); err != nil {
				return err
			}
			s, ok, err := im.cycle(ctx, sb, true)
			if err != nil {
				return err
			}
			noIP += 1 - btoi(ok)
			out = append(out, s)
		}
		return nil
	})
	cpu := childCPU() - cpu0
	if err != nil {
		return block{}, err
	}
	return block{out, wall, cpu}, b.afterBlock(im, k, noIP)
}

// concurrentRound runs k sandboxes on -c workers that each lock their own
// thread in the node namespace, wait at a barrier, then take sandboxes
// from a shared queue.
func (b *bench) concurrentRound(ctx context.Context, im *impl, k int) (block, error) {
	sbs, names, err := b.sandboxes(k)
	defer func() { _ = b.reg.delNS(names...) }()
	if err != nil {
		return block{}, err
	}
	queue := make(chan sandbox, len(sbs))
	for _, sb := range sbs {
		queue <- sb
	}
	close(queue)
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		mu    sync.Mutex
		out   = make([]sample, 0, k)
		noIP  int
		ready sync.WaitGroup
		done  sync.WaitGroup
		start = make(chan struct{})
	)
	workers := min(b.opts.concurrency, k)
	ready.Add(workers)
	for w := 0; w < workers; w++ {
		done.Add(1)
		go func() {
			defer done.Done()
			signalled := false
			defer func() {
				if !signalled {
					ready.Done()
				}
			}()
			err := inNode(im, func() error {
				signalled = true
				ready.Done()
				<-start
				for sb := range queue {
					if err := context.Cause(rctx); err != nil {
						return err
					}
					s, ok, err := im.cycle(rctx, sb, false)
					if err != nil {
						return err
					}
					mu.Lock()
					out = append(out, s)
					noIP += 1 - btoi(ok)
					mu.Unlock()
				}
				return nil
			})
			if err != nil {
				cancel(err)
			}
		}()
	}
	ready.Wait()
	cpu0, t0 := childCPU(), time.Now()
	close(start)
	done.Wait()
	wall, cpu := time.Since(t0), childCPU()-cpu0
	if err := context.Cause(rctx); err != nil {
		return block{}, err
	}
	return block{out, wall, cpu}, b.afterBlock(im, k, noIP)
}

// afterBlock records the block's ADDs without an IP and checks that its
// DELs left nothing: no reservation, no veth, no libcni cache entry.
func (b *bench) afterBlock(im *impl, adds, noIP int) error {
	im.adds += adds
	im.noIP += noIP
	im.checks++
	if noIP > 0 {
		im.problem(fmt.Sprintf("%d of %d ADD results had no IP", noIP, adds))
	}
	resv, err := reservations(im.ipamDir)
	if err != nil {
		return err
	}
	var veths []string
	err = inNode(im, func() error {
		links, err := netlinksafe.LinkList()
		if err != nil {
			return fmt.Errorf("list links of %s: %w", im.node, err)
		}
		for _, l := range links {
			if l.Type() == "veth" {
				veths = append(veths, l.Attrs().Name)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	cache, _ := os.ReadDir(filepath.Join(im.cacheDir, "results"))
	if len(resv)+len(veths)+len(cache) > 0 {
		im.problem(fmt.Sprintf("after DEL: %d reservations %v, %d veths %v, %d libcni cache entries left",
			len(resv), first(resv, 3), len(veths), first(veths, 3), len(cache)))
	}
	return nil
}

// reservations lists the reserved addresses of an IPAM directory: both
// IPAMs name a reservation file by its address.
func reservations(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read IPAM directory: %w", err)
	}
	var out []string
	for _, e := range ents {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

func first(s []string, n int) []string { return s[:min(n, len(s))] }

func (im *impl) problem(msg string) {
	if len(im.problems) < 5 {
		im.problems = append(im.problems, msg)
	} else {
		im.problemsMore++
	}
}

func (im *impl) clean() bool { return len(im.problems) == 0 }

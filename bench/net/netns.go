package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// nsPrefix starts the name of every namespace (and temporary directory)
// this benchmark creates; bench/cni's are "pnbench-<hex>-…".
const nsPrefix = "pnbench-net-"

const netnsDir = "/var/run/netns"

func nsPath(name string) string { return filepath.Join(netnsDir, name) }

// lockRun makes sure only one run is active: it holds an abstract unix
// socket in the root namespace, which the kernel releases however the
// process ends. So anything named nsPrefix found afterwards is a leftover.
func lockRun() (func(), error) {
	l, err := net.Listen("unix", "@"+nsPrefix+"lock")
	if err != nil {
		return nil, fmt.Errorf("another bench/net run is active (its lock, the abstract socket @%slock, is held): %w", nsPrefix, err)
	}
	return func() { _ = l.Close() }, nil
}

// registry creates the benchmark's namespaces, temporary directory and
// server processes and removes them again. cleanup is safe to call more
// than once, and from the signal handler while the run still goes on.
type registry struct {
	ip  string
	dir string // temporary directory: IPAM stores, libcni caches

	mu    sync.Mutex
	ns    []string // namespaces that may exist
	procs []*proc
}

// proc is a server process started in a namespace.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
	err  error         // its exit, once done
}

// newRegistry first removes what an earlier run that was killed left
// behind (the caller holds the run lock), then makes the temporary
// directory.
func newRegistry(ip string) (*registry, error) {
	r := &registry{ip: ip}
	if err := r.sweep(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", nsPrefix)
	if err != nil {
		return nil, fmt.Errorf("create temporary directory: %w", err)
	}
	r.dir = dir
	return r, nil
}

// sweep removes the namespaces and temporary directories of earlier runs,
// killing first the processes (their servers) still inside those
// namespaces, which would otherwise keep them alive unnamed.
func (r *registry) sweep() error {
	ents, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("list network namespaces: %w", err)
	}
	var stale []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), nsPrefix) {
			stale = append(stale, e.Name())
		}
	}
	if len(stale) > 0 {
		killed := killInNamespaces(stale)
		fmt.Fprintf(os.Stderr, "bench/net: removing %d namespaces left by an earlier run (and %d processes in them): %s\n",
			len(stale), killed, strings.Join(stale, " "))
		if err := r.batch("del", stale); err != nil {
			return fmt.Errorf("remove leftover namespaces: %w", err)
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), nsPrefix+"*"))
	for _, d := range dirs {
		if err := os.RemoveAll(d); err != nil {
			return fmt.Errorf("remove leftover directory: %w", err)
		}
	}
	return nil
}

// killInNamespaces kills (SIGKILL) every process whose network namespace
// is one of the named ones, and returns how many it killed.
func killInNamespaces(names []string) int {
	type id struct{ dev, ino uint64 }
	want := map[id]bool{}
	for _, n := range names {
		var st syscall.Stat_t
		if err := syscall.Stat(nsPath(n), &st); err == nil {
			want[id{st.Dev, st.Ino}] = true
		}
	}
	procs, _ := os.ReadDir("/proc")
	killed := 0
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join("/proc", p.Name(), "ns", "net"), &st); err != nil || !want[id{st.Dev, st.Ino}] {
			continue
		}
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			killed++
		}
	}
	return killed
}

// addNS creates the named namespaces; they are registered first, so a
// failure half way still has them all removed.
func (r *registry) addNS(names ...string) error {
	r.mu.Lock()
	r.ns = append(r.ns, names...)
	r.mu.Unlock()
	return r.batch("add", names)
}

// batch runs `ip netns <verb> <name>` for each name in one ip process.
func (r *registry) batch(verb string, names []string) error {
	if len(names) == 0 {
		return nil
	}
	var in strings.Builder
	for _, n := range names {
		fmt.Fprintf(&in, "netns %s %s\n", verb, n)
	}
	// -force: one name that is gone already does not stop the others.
	cmd := exec.Command(r.ip, "-force", "-batch", "-")
	cmd.Stdin = strings.NewReader(in.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns %s %s (%d namespaces): %w: %s", verb, names[0], len(names), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ipIn runs ip commands, one a line, inside namespace ns ("" for the
// root namespace, where the benchmark only ever creates veth pairs whose
// ends it places in its own namespaces).
func (r *registry) ipIn(ns string, lines ...string) error {
	args := []string{"-batch", "-"}
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	cmd := exec.Command(r.ip, args...)
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip -batch in %s: %q: %w: %s", nsOrRoot(ns), lines, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func nsOrRoot(ns string) string {
	if ns == "" {
		return "the root namespace"
	}
	return ns
}

// execIn returns a command running args inside namespace ns.
func (r *registry) execIn(ctx context.Context, ns string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, r.ip, append([]string{"netns", "exec", ns}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// startServer starts a server inside ns and returns once it printed a line
// holding ready (it listens then). cleanup kills it.
func (r *registry) startServer(ns, ready string, args ...string) (*proc, error) {
	cmd := r.execIn(context.Background(), ns, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", args[0], ns, err)
	}
	var stderr strings.Builder
	cmd.Stderr = &limitWriter{w: &stderr, n: 4096}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", args[0], ns, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	r.mu.Lock()
	r.procs = append(r.procs, p)
	r.mu.Unlock()
	up := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		said := false
		for sc.Scan() {
			if !said && strings.Contains(sc.Text(), ready) {
				said = true
				close(up)
			}
		}
		_, _ = io.Copy(io.Discard, out)
		p.err = cmd.Wait()
		close(p.done)
	}()
	select {
	case <-up:
		return p, nil
	case <-p.done:
		return nil, fmt.Errorf("%s in %s exited before listening: %v: %s", args[0], ns, p.err, strings.TrimSpace(stderr.String()))
	case <-time.After(10 * time.Second):
		return nil, fmt.Errorf("%s in %s did not say %q within 10s", args[0], ns, ready)
	}
}

// limitWriter keeps the first n bytes written to it.
type limitWriter struct {
	w io.Writer
	n int
}

func (l *limitWriter) Write(b []byte) (int, error) {
	if l.n > 0 {
		k := min(l.n, len(b))
		l.n -= k
		_, _ = l.w.Write(b[:k])
	}
	return len(b), nil
}

// cleanup kills the servers, removes the namespaces and the temporary
// directory, and checks that no namespace of the benchmark is left.
func (r *registry) cleanup() []error {
	r.mu.Lock()
	procs, names, dir := r.procs, slices.Clone(r.ns), r.dir
	r.procs, r.dir = nil, ""
	r.mu.Unlock()

	var errs []error
	for _, p := range procs {
		_ = p.cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			errs = append(errs, fmt.Errorf("server %d (%s) did not exit after SIGKILL", p.cmd.Process.Pid, p.cmd.Args[3]))
		}
	}
	var exist []string
	for _, n := range names {
		if _, err := os.Stat(nsPath(n)); err == nil {
			exist = append(exist, n)
		}
	}
	if err := r.batch("del", exist); err != nil {
		errs = append(errs, err)
	}
	if dir != "" {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
		}
	}
	ents, _ := os.ReadDir(netnsDir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), nsPrefix) {
			errs = append(errs, fmt.Errorf("namespace %s left behind", e.Name()))
		}
	}
	return errs
}

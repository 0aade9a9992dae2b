package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
)

// nsPrefix starts the name of every namespace the benchmark creates.
const nsPrefix = "pnbench-"

const netnsDir = "/var/run/netns"

// registry creates the benchmark's named network namespaces and temporary
// directories and removes them again: each batch when its block is done,
// and whatever is left by cleanup, which is safe to call more than once and
// from the signal handler at the same time as from the run.
type registry struct {
	ip    string
	runID string

	mu   sync.Mutex
	ns   map[string]bool // names of namespaces that may exist
	dirs []string
}

func newRegistry(ip string) *registry {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return &registry{ip: ip, runID: hex.EncodeToString(b), ns: map[string]bool{}}
}

// name returns a namespace name of this run: pnbench-<run>-<tag>.
func (r *registry) name(tag string) string { return nsPrefix + r.runID + "-" + tag }

func nsPath(name string) string { return netnsDir + "/" + name }

// addNS creates the named namespaces with one `ip -batch` (one process for
// a whole block; `ip netns add` is what netnstest and runtimes' test
// harnesses use). The names are registered first, so a failure half way
// still has them all removed.
func (r *registry) addNS(names ...string) error {
	r.mu.Lock()
	for _, n := range names {
		r.ns[n] = true
	}
	r.mu.Unlock()
	return r.batch("add", names)
}

// delNS removes the named namespaces (and so every interface in them).
func (r *registry) delNS(names ...string) error {
	var exist []string
	for _, n := range names {
		if _, err := os.Stat(nsPath(n)); err == nil {
			exist = append(exist, n)
		}
	}
	err := r.batch("del", exist)
	r.mu.Lock()
	for _, n := range names {
		if _, serr := os.Stat(nsPath(n)); serr != nil {
			delete(r.ns, n)
		}
	}
	r.mu.Unlock()
	return err
}

func (r *registry) batch(verb string, names []string) error {
	if len(names) == 0 {
		return nil
	}
	var in strings.Builder
	for _, n := range names {
		fmt.Fprintf(&in, "netns %s %s\n", verb, n)
	}
	cmd := exec.Command(r.ip, "-batch", "-")
	cmd.Stdin = strings.NewReader(in.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns %s %s…(%d namespaces): %w: %s", verb, names[0], len(names), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// tempDir makes a temporary directory that cleanup removes.
func (r *registry) tempDir() (string, error) {
	d, err := os.MkdirTemp("", "pnbench-"+r.runID+"-")
	if err != nil {
		return "", fmt.Errorf("create temporary directory: %w", err)
	}
	r.mu.Lock()
	r.dirs = append(r.dirs, d)
	r.mu.Unlock()
	return d, nil
}

// cleanup removes every namespace and directory still registered, then
// looks for any namespace of this run that escaped the registry.
func (r *registry) cleanup() []error {
	r.mu.Lock()
	names := make([]string, 0, len(r.ns))
	for n := range r.ns {
		names = append(names, n)
	}
	dirs := r.dirs
	r.dirs = nil
	r.mu.Unlock()
	sort.Strings(names)

	var errs []error
	if err := r.delNS(names...); err != nil {
		// One bad name stops a batch: retry one at a time.
		for _, n := range names {
			if err := r.delNS(n); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, d := range dirs {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", d, err))
		}
	}
	if left := r.leftovers(); len(left) > 0 {
		errs = append(errs, fmt.Errorf("namespaces left behind: %s", strings.Join(left, " ")))
	}
	return errs
}

// leftovers lists this run's namespaces that still exist.
func (r *registry) leftovers() []string {
	ents, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), r.name("")) {
			out = append(out, e.Name())
		}
	}
	return out
}

// otherRuns lists pnbench namespaces that belong to other runs (a run
// killed with SIGKILL, or one running now): reported, never touched.
func (r *registry) otherRuns() []string {
	ents, _ := os.ReadDir(netnsDir)
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), nsPrefix) && !strings.HasPrefix(e.Name(), r.name("")) {
			out = append(out, e.Name())
		}
	}
	return out
}

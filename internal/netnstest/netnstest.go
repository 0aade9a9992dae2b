// Package netnstest gives kernel tests throwaway named network namespaces
// ("pntest-…", visible to `ip netns list` while a test runs) that are
// removed when the test ends, passed or failed. Tests that need them skip
// cleanly when not run as root.
package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Prefix starts the name of every namespace this package makes.
const Prefix = "pntest-"

// RequireRoot skips t unless it runs as root (namespaces need CAP_SYS_ADMIN).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root to create network namespaces")
	}
}

// NS is one named network namespace.
type NS struct {
	Name string
	Path string // /var/run/netns/<name>
}

// New creates a namespace named Prefix+tag+random and registers its removal.
func New(t testing.TB, tag string) *NS {
	t.Helper()
	RequireRoot(t)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := Prefix + tag + "-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	n := &NS{Name: name, Path: "/var/run/netns/" + name}
	t.Cleanup(func() { n.Delete() })
	return n
}

// Delete removes the namespace (and so every interface in it); deleting a
// deleted namespace is a no-op.
func (n *NS) Delete() {
	if _, err := os.Stat(n.Path); err == nil {
		_ = exec.Command("ip", "netns", "del", n.Name).Run()
	}
}

// Run runs a command inside the namespace and returns its combined output.
func (n *NS) Run(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s: %w: %s", n.Name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// MustRun is Run that fails the test on error.
func (n *NS) MustRun(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.Run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Do runs fn with the calling goroutine's thread inside the namespace (the
// containernetworking ns.Do discipline: the thread is locked, and processes
// fn starts inherit the namespace).
func (n *NS) Do(fn func() error) error {
	h, err := ns.GetNS(n.Path)
	if err != nil {
		return err
	}
	defer h.Close()
	return h.Do(func(ns.NetNS) error { return fn() })
}

// Leftovers lists namespaces whose names start with Prefix: a test that
// ends with some has leaked.
func Leftovers() []string {
	ents, _ := os.ReadDir("/var/run/netns")
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), Prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

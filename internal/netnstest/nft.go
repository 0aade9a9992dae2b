package netnstest

import (
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
	"sigs.k8s.io/knftables"
)

// GuardedNFT builds a knftables Interface for (family, table) inside ns and
// wraps it so that every call that runs nft first checks it runs on a
// thread in ns: knftables execs nft from the calling thread, so code under
// test must call it from within ns.Do, and a call from anywhere else would
// change the test machine's own ruleset. Such a call fails with a "test
// bug" error instead.
func GuardedNFT(t testing.TB, ns *NS, family knftables.Family, table string) knftables.Interface {
	t.Helper()
	want, err := netns.GetFromPath(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { want.Close() })
	var nft knftables.Interface
	if err := ns.Do(func() (err error) { nft, err = knftables.New(family, table); return err }); err != nil {
		t.Fatalf("knftables.New in %s: %v", ns.Name, err)
	}
	return &nftGuard{Interface: nft, want: want, name: ns.Name}
}

type nftGuard struct {
	knftables.Interface
	want netns.NsHandle
	name string
}

// in locks the goroutine to its thread, checks that thread is in the
// wanted namespace and, if so, runs f there.
func (g *nftGuard) in(f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cur, err := netns.Get()
	if err != nil {
		return err
	}
	defer cur.Close()
	if !cur.Equal(g.want) {
		return fmt.Errorf("test bug: nft would run outside %s (in %s)", g.name, cur)
	}
	return f()
}

func (g *nftGuard) Run(c context.Context, tx *knftables.Transaction) error {
	return g.in(func() error { return g.Interface.Run(c, tx) })
}

func (g *nftGuard) Check(c context.Context, tx *knftables.Transaction) error {
	return g.in(func() error { return g.Interface.Check(c, tx) })
}

func (g *nftGuard) ListAll(c context.Context) (out map[string][]string, err error) {
	err = g.in(func() error { out, err = g.Interface.ListAll(c); return err })
	return out, err
}

func (g *nftGuard) List(c context.Context, typ string) (out []string, err error) {
	err = g.in(func() error { out, err = g.Interface.List(c, typ); return err })
	return out, err
}

func (g *nftGuard) ListRules(c context.Context, chain string) (out []*knftables.Rule, err error) {
	err = g.in(func() error { out, err = g.Interface.ListRules(c, chain); return err })
	return out, err
}

func (g *nftGuard) ListElements(c context.Context, typ, name string) (out []*knftables.Element, err error) {
	err = g.in(func() error { out, err = g.Interface.ListElements(c, typ, name); return err })
	return out, err
}

func (g *nftGuard) ListCounters(c context.Context) (out []*knftables.Counter, err error) {
	err = g.in(func() error { out, err = g.Interface.ListCounters(c); return err })
	return out, err
}

// RequireNFT skips a kernel test that needs nft: with -short, when not
// root, or without the nft binary (package nftables).
func RequireNFT(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("kernel test: skipped with -short")
	}
	RequireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("kernel test: needs the nft binary (package nftables)")
	}
}

package cniplugin

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podnet/podnet/pkg/ipam"
	"github.com/podnet/podnet/pkg/wire"
)

const (
	netns    = "/var/run/netns/cni-1111"
	netns2   = "/var/run/netns/cni-2222"
	network  = "podnet-test"
	podArgs  = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u1"
	subnet24 = "10.244.1.0/24"
)

// env is a plugin wired to fakes: a fake kernel, a fake delegate and one
// in-memory store per network (shared by every call, as the disk is).
type env struct {
	k  *FakeKernel
	d  *FakeDelegate
	p  *Plugin
	mu sync.Mutex
	st map[string]*ipam.MemStore
	// dataDirs records the ipam.dataDir each OpenStore call was given.
	dataDirs []string
}

func newEnv(t *testing.T, nss ...string) *env {
	t.Helper()
	if len(nss) == 0 {
		nss = []string{netns, netns2}
	}
	e := &env{k: NewFakeKernel(nss...), d: &FakeDelegate{}, st: map[string]*ipam.MemStore{}}
	e.p = &Plugin{
		Kernel:   e.k,
		Delegate: e.d,
		OpenStore: func(dataDir, nw string) (ipam.Store, error) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.dataDirs = append(e.dataDirs, dataDir)
			if e.st[nw] == nil {
				e.st[nw] = ipam.NewMemStore()
			}
			return e.st[nw], nil
		},
		Log: slog.New(slog.DiscardHandler),
	}
	return e
}

// store returns the reservations of a network.
func (e *env) store(t *testing.T, nw string) []ipam.Reservation {
	t.Helper()
	e.mu.Lock()
	st := e.st[nw]
	e.mu.Unlock()
	if st == nil {
		return nil
	}
	unlock, _ := st.Lock()
	defer unlock()
	all, err := st.List()
	if err != nil {
		t.Fatal(err)
	}
	return all
}

// withStore runs f on a network's store with its lock held, as the Store
// contract asks.
func (e *env) withStore(t *testing.T, nw string, f func(st *ipam.MemStore)) {
	t.Helper()
	e.mu.Lock()
	st := e.st[nw]
	e.mu.Unlock()
	if st == nil {
		t.Fatalf("network %s has no store", nw)
	}
	unlock, _ := st.Lock()
	defer unlock()
	f(st)
}

// conf builds a network configuration: the minimal podnet one, with the
// given top-level fields set (a nil value deletes the field).
func conf(t *testing.T, cniVersion string, set map[string]any) []byte {
	t.Helper()
	m := map[string]any{
		"cniVersion": cniVersion, "name": network, "type": "podnet",
		"ipam": map[string]any{"ranges": [][]map[string]string{{{"subnet": subnet24}}}},
	}
	for k, v := range set {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ranges(subnets ...string) map[string]any {
	var sets [][]map[string]string
	for _, s := range subnets {
		sets = append(sets, []map[string]string{{"subnet": s}})
	}
	return map[string]any{"ranges": sets}
}

func cmdArgs(cid, ns string, stdin []byte) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: cid, Netns: ns, IfName: "eth0", Args: podArgs, Path: "/opt/cni/bin", StdinData: stdin}
}

// stdoutMu serialises the swaps of os.Stdout.
var stdoutMu sync.Mutex

// captureStdout runs f with os.Stdout redirected to a pipe and returns what
// it wrote (Add prints its result there, as the spec asks).
func captureStdout(t *testing.T, f func() error) ([]byte, error) {
	t.Helper()
	stdoutMu.Lock()
	defer stdoutMu.Unlock()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	out := make(chan []byte)
	go func() { b, _ := io.ReadAll(r); out <- b }()
	ferr := f()
	os.Stdout = old
	w.Close()
	b := <-out
	r.Close()
	return b, ferr
}

// added is what one ADD printed.
type added struct {
	raw map[string]any  // the printed JSON, for prevResult
	res *current.Result // converted to the current version
}

// add runs ADD and parses what it printed.
func (e *env) add(t *testing.T, args *skel.CmdArgs) (added, error) {
	t.Helper()
	out, err := captureStdout(t, func() error { return e.p.Add(args) })
	if cniErr(t, err) != nil {
		if len(out) != 0 {
			t.Errorf("a failed ADD printed %s", out)
		}
		return added{}, err
	}
	var a added
	if err := json.Unmarshal(out, &a.raw); err != nil {
		t.Fatalf("ADD printed %q, not JSON: %v", out, err)
	}
	var hdr struct {
		CNIVersion string `json:"cniVersion"`
	}
	if err := json.Unmarshal(args.StdinData, &hdr); err != nil {
		t.Fatal(err)
	}
	if a.raw["cniVersion"] != hdr.CNIVersion {
		t.Errorf("ADD printed cniVersion %v, the configuration asked for %s", a.raw["cniVersion"], hdr.CNIVersion)
	}
	r, err := version.NewResult(hdr.CNIVersion, out)
	if err != nil {
		t.Fatalf("ADD printed a result that does not parse as %s: %v\n%s", hdr.CNIVersion, err, out)
	}
	if a.res, err = current.NewResultFromResult(r); err != nil {
		t.Fatal(err)
	}
	return a, nil
}

func (e *env) mustAdd(t *testing.T, args *skel.CmdArgs) added {
	t.Helper()
	a, err := e.add(t, args)
	if cniErr(t, err) != nil {
		t.Fatalf("ADD %s: %v", args.ContainerID, err)
	}
	return a
}

// cniErr returns err as the *types.Error the runtime would see. skel turns
// a verb's error into its response with errors.As(err, &*types.Error), so a
// nil *types.Error inside the interface reads as success there.
func cniErr(t *testing.T, err error) *types.Error {
	t.Helper()
	if err == nil {
		return nil
	}
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is a %T, not a CNI *types.Error", err, err)
	}
	return e
}

func wantOK(t *testing.T, what string, err error) {
	t.Helper()
	if e := cniErr(t, err); e != nil {
		t.Fatalf("%s: %v (code %d, details %q)", what, e, e.Code, e.Details)
	}
}

func wantCode(t *testing.T, what string, err error, code uint) *types.Error {
	t.Helper()
	e := cniErr(t, err)
	if e == nil {
		t.Fatalf("%s succeeded, want CNI error code %d", what, code)
	}
	if e.Code != code {
		t.Errorf("%s: code %d (%s), want %d", what, e.Code, e.Msg, code)
	}
	if e.Msg == "" {
		t.Errorf("%s: error without a message", what)
	}
	return e
}

// wantNothingLeaked checks that no reservation and no attachment is left.
func (e *env) wantNothingLeaked(t *testing.T) {
	t.Helper()
	if all := e.store(t, network); len(all) != 0 {
		t.Errorf("reservations leaked: %+v", all)
	}
	if len(e.k.Pods) != 0 {
		t.Errorf("attachments leaked: %+v", e.k.Pods)
	}
}

func mustPrefix(t *testing.T, n net.IPNet) netip.Prefix {
	t.Helper()
	p, ok := wire.PrefixOf(&n)
	if !ok {
		t.Fatalf("bad address %v", n)
	}
	return p
}

package cniplugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
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
	p, ok := prefixOf(&n)
	if !ok {
		t.Fatalf("bad address %v", n)
	}
	return p
}

func TestAddResult(t *testing.T) {
	e := newEnv(t)
	a := e.mustAdd(t, cmdArgs("c1", netns, conf(t, "1.1.0", nil)))
	res := a.res
	host := wire.HostName("c1", "eth0")

	if len(res.Interfaces) != 3 {
		t.Fatalf("interfaces = %v, want bridge, host veth, pod interface", res.Interfaces)
	}
	br, hv, pod := res.Interfaces[0], res.Interfaces[1], res.Interfaces[2]
	if br.Name != "cni0" || br.Sandbox != "" {
		t.Errorf("interface 0 = %+v, want cni0 on the host", br)
	}
	if hv.Name != host || hv.Sandbox != "" || hv.Mtu != 1500 {
		t.Errorf("interface 1 = %+v, want %s on the host, mtu 1500", hv, host)
	}
	if pod.Name != "eth0" || pod.Sandbox != netns || pod.Mtu != 1500 {
		t.Errorf("interface 2 = %+v, want eth0 in %s, mtu 1500", pod, netns)
	}
	if len(res.IPs) != 1 {
		t.Fatalf("IPs = %v, want 1", res.IPs)
	}
	ip := res.IPs[0]
	if ip.Interface == nil || *ip.Interface != 2 {
		t.Errorf("IP on interface %v, want 2 (eth0)", ip.Interface)
	}
	addr := mustPrefix(t, ip.Address)
	if addr.Bits() != 24 || !netip.MustParsePrefix(subnet24).Contains(addr.Addr()) {
		t.Errorf("address %s, want one of %s with its /24", addr, subnet24)
	}
	if addr.Addr() == netip.MustParseAddr("10.244.1.1") || addr.Addr() == netip.MustParseAddr("10.244.1.0") {
		t.Errorf("pod got the reserved address %s", addr)
	}
	if !ip.Gateway.Equal(net.ParseIP("10.244.1.1")) {
		t.Errorf("gateway = %v, want 10.244.1.1", ip.Gateway)
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" || !res.Routes[0].GW.Equal(net.ParseIP("10.244.1.1")) {
		t.Errorf("routes = %v, want the default route via 10.244.1.1", res.Routes)
	}
	if want := wire.PodMAC([]netip.Prefix{addr}).String(); pod.Mac != want {
		t.Errorf("eth0 MAC = %s, want %s", pod.Mac, want)
	}
	if want := wire.GatewayMAC([]netip.Prefix{netip.MustParsePrefix("10.244.1.1/24")}).String(); br.Mac != want {
		t.Errorf("bridge MAC = %s, want %s", br.Mac, want)
	}

	// The kernel got what the result says.
	fa, ok := e.k.Pods[host]
	if !ok {
		t.Fatalf("no attachment %s in the kernel: %v", host, e.k.Pods)
	}
	wp := fa.Pod
	if wp.NetNS != netns || wp.IfName != "eth0" || wp.Bridge != "cni0" || wp.MTU != 1500 || !wp.Hairpin || wp.Network != network {
		t.Errorf("kernel attachment = %+v", wp)
	}
	if len(wp.Addrs) != 1 || wp.Addrs[0] != addr {
		t.Errorf("kernel addresses %v, want [%s]", wp.Addrs, addr)
	}
	wantRoute := wire.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: netip.MustParseAddr("10.244.1.1")}
	if len(wp.Routes) != 1 || wp.Routes[0] != wantRoute {
		t.Errorf("kernel routes %v, want [%v]", wp.Routes, wantRoute)
	}
	brs := e.k.Bridges["cni0"]
	if len(brs) == 0 || len(brs[0].Gateways) != 1 || brs[0].Gateways[0] != netip.MustParsePrefix("10.244.1.1/24") {
		t.Errorf("bridge = %+v, want cni0 with 10.244.1.1/24", brs)
	}

	// And the store holds the address for this pod.
	all := e.store(t, network)
	if len(all) != 1 || all[0].IP != addr.Addr() || all[0].ContainerID != "c1" || all[0].IfName != "eth0" ||
		all[0].PodNamespace != "default" || all[0].PodName != "web-0" {
		t.Errorf("store = %+v, want %s for c1/eth0 (default/web-0)", all, addr.Addr())
	}
}

func TestAddResultVersions(t *testing.T) {
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			e := newEnv(t)
			a := e.mustAdd(t, cmdArgs("c1", netns, conf(t, v, nil))) // checks the printed cniVersion
			res := a.res
			if len(res.Interfaces) != 3 || res.Interfaces[2].Name != "eth0" || res.Interfaces[2].Sandbox != netns {
				t.Errorf("interfaces = %v", res.Interfaces)
			}
			if len(res.IPs) != 1 || res.IPs[0].Interface == nil || *res.IPs[0].Interface != 2 ||
				!res.IPs[0].Gateway.Equal(net.ParseIP("10.244.1.1")) {
				t.Errorf("IPs = %v", res.IPs)
			}
			if len(res.Routes) != 1 {
				t.Errorf("routes = %v", res.Routes)
			}
		})
	}
}

func TestAddDualStack(t *testing.T) {
	e := newEnv(t)
	a := e.mustAdd(t, cmdArgs("c1", netns, conf(t, "1.1.0", map[string]any{"ipam": ranges(subnet24, "fd00:10:244:1::/64")})))
	res := a.res
	if len(res.IPs) != 2 {
		t.Fatalf("IPs = %v, want one IPv4 and one IPv6", res.IPs)
	}
	v4, v6 := mustPrefix(t, res.IPs[0].Address), mustPrefix(t, res.IPs[1].Address)
	if !v4.Addr().Is4() || v6.Bits() != 64 || !netip.MustParsePrefix("fd00:10:244:1::/64").Contains(v6.Addr()) {
		t.Errorf("addresses %s, %s", v4, v6)
	}
	for _, ip := range res.IPs {
		if *ip.Interface != 2 {
			t.Errorf("%v not on eth0", ip)
		}
	}
	if !res.IPs[1].Gateway.Equal(net.ParseIP("fd00:10:244:1::1")) {
		t.Errorf("IPv6 gateway = %v", res.IPs[1].Gateway)
	}
	got := map[string]string{}
	for _, r := range res.Routes {
		got[r.Dst.String()] = r.GW.String()
	}
	if got["0.0.0.0/0"] != "10.244.1.1" || got["::/0"] != "fd00:10:244:1::1" || len(got) != 2 {
		t.Errorf("routes = %v, want a default route per family via its gateway", got)
	}
	if want := wire.PodMAC([]netip.Prefix{v4}).String(); res.Interfaces[2].Mac != want {
		t.Errorf("MAC %s, want %s (from the IPv4 address)", res.Interfaces[2].Mac, want)
	}
	if n := len(e.k.Bridges["cni0"][0].Gateways); n != 2 {
		t.Errorf("bridge has %d gateways, want 2", n)
	}
}

func TestAddOptions(t *testing.T) {
	e := newEnv(t)
	ipamConf := ranges(subnet24)
	ipamConf["routes"] = []map[string]string{{"dst": "10.96.0.0/12"}, {"dst": "192.168.0.0/16", "gw": "10.244.1.254"}}
	ipamConf["reserved"] = []string{"10.244.1.2/31", "10.244.1.4"}
	ipamConf["dataDir"] = "/tmp/podnet-somewhere"
	a := e.mustAdd(t, cmdArgs("c1", netns, conf(t, "1.1.0", map[string]any{
		"bridge": "podbr0", "mtu": 1450, "hairpinMode": false,
		"dns":  map[string]any{"nameservers": []string{"10.96.0.10"}},
		"ipam": ipamConf,
	})))
	res := a.res
	if res.Interfaces[0].Name != "podbr0" || len(e.k.Bridges["podbr0"]) == 0 || len(e.k.Bridges["cni0"]) != 0 {
		t.Errorf("bridge: interface %v, kernel %v", res.Interfaces[0], e.k.Bridges)
	}
	if res.Interfaces[1].Mtu != 1450 || res.Interfaces[2].Mtu != 1450 {
		t.Errorf("MTUs %d/%d, want 1450", res.Interfaces[1].Mtu, res.Interfaces[2].Mtu)
	}
	if got := mustPrefix(t, res.IPs[0].Address).Addr(); got.Compare(netip.MustParseAddr("10.244.1.5")) < 0 {
		t.Errorf("pod got %s, a reserved address", got)
	}
	routes := map[string]string{}
	for _, r := range res.Routes {
		routes[r.Dst.String()] = r.GW.String()
	}
	want := map[string]string{"10.96.0.0/12": "10.244.1.1", "192.168.0.0/16": "10.244.1.254", "0.0.0.0/0": "10.244.1.1"}
	if fmt.Sprint(routes) != fmt.Sprint(want) {
		t.Errorf("routes = %v, want %v", routes, want)
	}
	if len(res.DNS.Nameservers) != 1 || res.DNS.Nameservers[0] != "10.96.0.10" {
		t.Errorf("DNS = %+v", res.DNS)
	}
	wp := e.k.Pods[wire.HostName("c1", "eth0")].Pod
	if wp.Hairpin || wp.MTU != 1450 || wp.Bridge != "podbr0" || len(wp.Routes) != 3 {
		t.Errorf("kernel attachment = %+v", wp)
	}
	if len(e.dataDirs) == 0 || e.dataDirs[0] != "/tmp/podnet-somewhere" {
		t.Errorf("store opened with dataDir %v, want the configured one", e.dataDirs)
	}
}

func TestAddNoDefaultGateway(t *testing.T) {
	e := newEnv(t)
	a := e.mustAdd(t, cmdArgs("c1", netns, conf(t, "1.1.0", map[string]any{"isDefaultGateway": false})))
	if len(a.res.Routes) != 0 {
		t.Errorf("routes = %v, want none", a.res.Routes)
	}
	if r := e.k.Pods[wire.HostName("c1", "eth0")].Pod.Routes; len(r) != 0 {
		t.Errorf("kernel routes = %v, want none", r)
	}
}

func TestAddTwoPodsDistinctAddresses(t *testing.T) {
	e := newEnv(t)
	a := e.mustAdd(t, cmdArgs("c1", netns, conf(t, "1.1.0", nil)))
	b := e.mustAdd(t, cmdArgs("c2", netns2, conf(t, "1.1.0", nil)))
	ipA, ipB := mustPrefix(t, a.res.IPs[0].Address), mustPrefix(t, b.res.IPs[0].Address)
	if ipA == ipB {
		t.Errorf("both pods got %s", ipA)
	}
	if a.res.Interfaces[2].Mac == b.res.Interfaces[2].Mac {
		t.Errorf("both pods got MAC %s", a.res.Interfaces[2].Mac)
	}
	if a.res.Interfaces[1].Name == b.res.Interfaces[1].Name {
		t.Errorf("both pods got host veth %s", a.res.Interfaces[1].Name)
	}
	if len(e.k.Pods) != 2 || len(e.store(t, network)) != 2 {
		t.Errorf("kernel %d attachments, store %d reservations; want 2, 2", len(e.k.Pods), len(e.store(t, network)))
	}
}

func TestAddRetriedGetsSameAddress(t *testing.T) {
	e := newEnv(t)
	a := e.mustAdd(t, cmdArgs("c1", netns, conf(t, "1.1.0", nil)))
	b := e.mustAdd(t, cmdArgs("c1", netns, conf(t, "1.1.0", nil)))
	if a.res.IPs[0].Address.String() != b.res.IPs[0].Address.String() {
		t.Errorf("retried ADD got %s, first %s", b.res.IPs[0].Address.String(), a.res.IPs[0].Address.String())
	}
	if len(e.store(t, network)) != 1 || len(e.k.Pods) != 1 {
		t.Errorf("after a retried ADD: %d reservations, %d attachments; want 1, 1", len(e.store(t, network)), len(e.k.Pods))
	}
}

func TestAddFailuresLeakNothing(t *testing.T) {
	cases := []struct {
		name  string
		setup func(e *env, args *skel.CmdArgs)
		code  uint // 0: any error
	}{
		{"missing netns", func(e *env, args *skel.CmdArgs) { args.Netns = "/var/run/netns/gone" }, types.ErrUnknownContainer},
		{"attach fails half-way", func(e *env, _ *skel.CmdArgs) { e.k.FailAttach = errors.New("sysctl: permission denied") }, 0},
		{"bridge name taken by a non-bridge", func(e *env, _ *skel.CmdArgs) { e.k.NotBridge["cni0"] = true }, types.ErrInvalidNetworkConfig},
		{"bad CNI_ARGS", func(e *env, args *skel.CmdArgs) { args.Args = "K8S_POD_NAME" }, types.ErrInvalidEnvironmentVariables},
		{"malformed config", func(e *env, args *skel.CmdArgs) { args.StdinData = []byte(`{"cniVersion":`) }, types.ErrDecodingFailure},
		{"store refuses", func(e *env, _ *skel.CmdArgs) {
			st := ipam.NewMemStore()
			st.FailReserve = errors.New("disk full")
			e.st[network] = st
		}, types.ErrIOFailure},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			args := cmdArgs("c1", netns, conf(t, "1.1.0", nil))
			tc.setup(e, args)
			_, err := e.add(t, args)
			ce := cniErr(t, err)
			if ce == nil {
				t.Fatal("ADD succeeded")
			}
			if tc.code != 0 && ce.Code != tc.code {
				t.Errorf("code %d (%s), want %d", ce.Code, ce.Msg, tc.code)
			}
			if tc.code != 0 && ce.Details == "" {
				t.Errorf("error %q has no details saying how to fix it", ce.Msg)
			}
			e.wantNothingLeaked(t)
			// Nothing is wedged: once the cause is gone, ADD works.
			e.k.FailAttach, e.k.NotBridge = nil, map[string]bool{}
			if st := e.st[network]; st != nil {
				st.FailReserve = nil
			}
			e.mustAdd(t, cmdArgs("c1", netns, conf(t, "1.1.0", nil)))
		})
	}
}

func TestAddInterfaceNameTakenLeavesOwnerAlone(t *testing.T) {
	e := newEnv(t)
	first := e.mustAdd(t, cmdArgs("c1", netns, conf(t, "1.1.0", nil)))
	_, err := e.add(t, cmdArgs("c2", netns, conf(t, "1.1.0", nil))) // same netns, same eth0
	wantCode(t, "ADD of a second eth0 into one netns", err, types.ErrInvalidEnvironmentVariables)
	all := e.store(t, network)
	if len(all) != 1 || all[0].ContainerID != "c1" || all[0].IP != mustPrefix(t, first.res.IPs[0].Address).Addr() {
		t.Errorf("store = %+v, want only c1's reservation", all)
	}
	if _, ok := e.k.Pods[wire.HostName("c1", "eth0")]; !ok || len(e.k.Pods) != 1 {
		t.Errorf("kernel = %v, want c1's attachment untouched and nothing else", e.k.Pods)
	}
}

func TestAddExhausted(t *testing.T) {
	e := newEnv(t)
	c := conf(t, "1.1.0", map[string]any{"ipam": ranges("10.244.1.0/30")}) // one address after the gateway
	e.mustAdd(t, cmdArgs("c1", netns, c))
	_, err := e.add(t, cmdArgs("c2", netns2, c))
	ce := wantCode(t, "ADD into a full range", err, types.ErrTryAgainLater)
	if ce.Details == "" {
		t.Error("exhaustion error has no details")
	}
	if !strings.Contains(ce.Msg, "10.244.1.0/30") {
		t.Errorf("message %q does not name the range", ce.Msg)
	}
	if len(e.store(t, network)) != 1 || len(e.k.Pods) != 1 {
		t.Errorf("after the failed ADD: %d reservations, %d attachments; want c1's only", len(e.store(t, network)), len(e.k.Pods))
	}
}

func TestDel(t *testing.T) {
	e := newEnv(t)
	c := conf(t, "1.1.0", map[string]any{"ipam": ranges("10.244.1.0/30")}) // a single address
	a := e.mustAdd(t, cmdArgs("c1", netns, c))
	wantOK(t, "DEL", e.p.Del(cmdArgs("c1", netns, c)))
	e.wantNothingLeaked(t)
	wantOK(t, "second DEL", e.p.Del(cmdArgs("c1", netns, c)))
	// DEL without a netns (the sandbox is already gone) is fine too.
	wantOK(t, "DEL without netns", e.p.Del(cmdArgs("c1", "", c)))
	wantOK(t, "DEL of an unknown container", e.p.Del(cmdArgs("never-added", netns, c)))
	// The address is free again: the only one the range has.
	b := e.mustAdd(t, cmdArgs("c2", netns2, c))
	if a.res.IPs[0].Address.String() != b.res.IPs[0].Address.String() {
		t.Errorf("after DEL the next pod got %s, want the freed %s", b.res.IPs[0].Address.String(), a.res.IPs[0].Address.String())
	}
}

func TestDelLeavesOtherPodsAlone(t *testing.T) {
	e := newEnv(t)
	c := conf(t, "1.1.0", nil)
	e.mustAdd(t, cmdArgs("c1", netns, c))
	b := e.mustAdd(t, cmdArgs("c2", netns2, c))
	wantOK(t, "DEL c1", e.p.Del(cmdArgs("c1", netns, c)))
	all := e.store(t, network)
	if len(all) != 1 || all[0].ContainerID != "c2" || all[0].IP != mustPrefix(t, b.res.IPs[0].Address).Addr() {
		t.Errorf("store = %+v, want c2's reservation only", all)
	}
	if _, ok := e.k.Pods[wire.HostName("c2", "eth0")]; !ok || len(e.k.Pods) != 1 {
		t.Errorf("kernel = %v, want only c2's attachment", e.k.Pods)
	}
}

func TestDelBadConfig(t *testing.T) {
	e := newEnv(t)
	wantCode(t, "DEL with a malformed config", e.p.Del(cmdArgs("c1", netns, []byte("{"))), types.ErrDecodingFailure)
}

// withPrev returns the configuration with ADD's result as prevResult.
func withPrev(t *testing.T, cniVersion string, a added, set map[string]any) []byte {
	t.Helper()
	m := map[string]any{"prevResult": a.raw}
	for k, v := range set {
		m[k] = v
	}
	return conf(t, cniVersion, m)
}

func TestCheck(t *testing.T) {
	for _, v := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			e := newEnv(t)
			a := e.mustAdd(t, cmdArgs("c1", netns, conf(t, v, nil)))
			wantOK(t, "CHECK after ADD", e.p.Check(cmdArgs("c1", netns, withPrev(t, v, a, nil))))
		})
	}
}

func TestCheckDualStackWithRoutes(t *testing.T) {
	e := newEnv(t)
	ipamConf := ranges(subnet24, "fd00::/64")
	ipamConf["routes"] = []map[string]string{{"dst": "10.96.0.0/12"}, {"dst": "0.0.0.0/0", "gw": "10.244.1.254"}}
	set := map[string]any{"ipam": ipamConf, "mtu": 1450}
	a := e.mustAdd(t, cmdArgs("c1", netns, conf(t, "1.1.0", set)))
	wantOK(t, "CHECK", e.p.Check(cmdArgs("c1", netns, withPrev(t, "1.1.0", a, set))))
}

func TestCheckDetectsDrift(t *testing.T) {
	cases := []struct {
		name  string
		drift func(t *testing.T, e *env, a added) map[string]any // returns config changes
	}{
		{"attachment removed", func(t *testing.T, e *env, _ added) map[string]any {
			delete(e.k.Pods, wire.HostName("c1", "eth0"))
			return nil
		}},
		{"MTU in config differs", func(*testing.T, *env, added) map[string]any {
			return map[string]any{"mtu": 1400}
		}},
		{"reservation released behind its back", func(t *testing.T, e *env, a added) map[string]any {
			e.withStore(t, network, func(st *ipam.MemStore) { st.Release(mustPrefix(t, a.res.IPs[0].Address).Addr()) })
			return nil
		}},
		{"reservation handed to another pod", func(t *testing.T, e *env, a added) map[string]any {
			ip := mustPrefix(t, a.res.IPs[0].Address).Addr()
			e.withStore(t, network, func(st *ipam.MemStore) {
				st.Release(ip)
				st.Reserve(ipam.Reservation{IP: ip, ContainerID: "thief", IfName: "eth0"})
			})
			return nil
		}},
		{"default gateway turned off", func(*testing.T, *env, added) map[string]any {
			return map[string]any{"isDefaultGateway": false}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			a := e.mustAdd(t, cmdArgs("c1", netns, conf(t, "1.1.0", nil)))
			set := tc.drift(t, e, a)
			err := e.p.Check(cmdArgs("c1", netns, withPrev(t, "1.1.0", a, set)))
			if ce := wantCode(t, "CHECK after drift", err, ErrCodeDrift); ce.Details == "" {
				t.Errorf("drift error %q has no details", ce.Msg)
			}
		})
	}
}

func TestCheckDetectsChangedMAC(t *testing.T) {
	e := newEnv(t)
	a := e.mustAdd(t, cmdArgs("c1", netns, conf(t, "1.1.0", nil)))
	ifs := a.raw["interfaces"].([]any)
	ifs[2].(map[string]any)["mac"] = "0a:58:01:02:03:04"
	wantCode(t, "CHECK with another MAC", e.p.Check(cmdArgs("c1", netns, withPrev(t, "1.1.0", a, nil))), ErrCodeDrift)
}

func TestCheckPrevResultWithoutThisInterface(t *testing.T) {
	e := newEnv(t)
	a := e.mustAdd(t, cmdArgs("c1", netns, conf(t, "1.1.0", nil)))
	// Same result, asked about another netns.
	wantCode(t, "CHECK of an interface the result lacks", e.p.Check(cmdArgs("c1", netns2, withPrev(t, "1.1.0", a, nil))), ErrCodeDrift)
}

func TestCheckNetNSGone(t *testing.T) {
	e := newEnv(t)
	a := e.mustAdd(t, cmdArgs("c1", netns, conf(t, "1.1.0", nil)))
	delete(e.k.NetNS, netns)
	wantCode(t, "CHECK of a pod whose netns is gone", e.p.Check(cmdArgs("c1", netns, withPrev(t, "1.1.0", a, nil))), types.ErrUnknownContainer)
}

func TestCheckNeedsPrevResult(t *testing.T) {
	e := newEnv(t)
	e.mustAdd(t, cmdArgs("c1", netns, conf(t, "1.1.0", nil)))
	ce := wantCode(t, "CHECK without prevResult", e.p.Check(cmdArgs("c1", netns, conf(t, "1.1.0", nil))), types.ErrInvalidNetworkConfig)
	if ce.Details == "" {
		t.Error("no details")
	}
	// A prevResult that is no result.
	bad := conf(t, "1.1.0", map[string]any{"prevResult": map[string]any{"interfaces": "x"}})
	if cniErr(t, e.p.Check(cmdArgs("c1", netns, bad))) == nil {
		t.Error("CHECK with a malformed prevResult succeeded")
	}
}

func TestStatus(t *testing.T) {
	cases := []struct {
		name   string
		subnet string
		setup  func(t *testing.T, e *env, c []byte)
		code   uint // 0: success
	}{
		{"fresh node", subnet24, func(*testing.T, *env, []byte) {}, 0},
		{"pods and room for more", "10.244.1.0/29", func(t *testing.T, e *env, c []byte) {
			e.mustAdd(t, cmdArgs("c1", netns, c))
		}, 0},
		{"range full", "10.244.1.0/30", func(t *testing.T, e *env, c []byte) {
			e.mustAdd(t, cmdArgs("c1", netns, c))
		}, types.ErrPluginNotAvailable},
		{"bridge name taken by a non-bridge", subnet24, func(_ *testing.T, e *env, _ []byte) { e.k.NotBridge["cni0"] = true }, types.ErrPluginNotAvailable},
		{"bridge down", subnet24, func(_ *testing.T, e *env, _ []byte) { e.k.Down["cni0"] = true }, types.ErrLimitedConnectivity},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			c := conf(t, "1.1.0", map[string]any{"ipam": ranges(tc.subnet)})
			tc.setup(t, e, c)
			err := e.p.Status(&skel.CmdArgs{StdinData: c})
			if tc.code == 0 {
				wantOK(t, "STATUS", err)
				return
			}
			if ce := wantCode(t, "STATUS", err, tc.code); ce.Details == "" {
				t.Errorf("STATUS error %q has no details", ce.Msg)
			}
		})
	}
}

func TestStatusFullThenFreed(t *testing.T) {
	e := newEnv(t)
	c := conf(t, "1.1.0", map[string]any{"ipam": ranges("10.244.1.0/30")})
	wantOK(t, "STATUS on an empty range", e.p.Status(&skel.CmdArgs{StdinData: c}))
	e.mustAdd(t, cmdArgs("c1", netns, c))
	wantCode(t, "STATUS on a full range", e.p.Status(&skel.CmdArgs{StdinData: c}), types.ErrPluginNotAvailable)
	wantOK(t, "DEL", e.p.Del(cmdArgs("c1", netns, c)))
	wantOK(t, "STATUS after DEL", e.p.Status(&skel.CmdArgs{StdinData: c}))
}

func gcList(ids ...string) []map[string]string {
	out := []map[string]string{}
	for _, id := range ids {
		out = append(out, map[string]string{"containerID": id, "ifname": "eth0"})
	}
	return out
}

func hostLinks(e *env) []string {
	var out []string
	for name := range e.k.Pods {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func TestGC(t *testing.T) {
	for _, key := range []string{"cni.dev/valid-attachments", "cni.dev/attachments"} {
		t.Run(key, func(t *testing.T) {
			e := newEnv(t, netns, netns2, "/var/run/netns/cni-3", "/var/run/netns/cni-4")
			c := conf(t, "1.1.0", nil)
			keep := e.mustAdd(t, cmdArgs("keep", netns, c))
			e.mustAdd(t, cmdArgs("stale", netns2, c))
			// A leaked veth with no reservation (its store entry is gone).
			e.mustAdd(t, cmdArgs("leaked-veth", "/var/run/netns/cni-3", c))
			e.withStore(t, network, func(st *ipam.MemStore) {
				all, _ := st.List()
				for _, r := range all {
					if r.ContainerID == "leaked-veth" {
						st.Release(r.IP)
					}
				}
				// A reservation with no veth.
				st.Reserve(ipam.Reservation{IP: netip.MustParseAddr("10.244.1.200"), ContainerID: "leaked-ip", IfName: "eth0"})
			})
			// Another network on the same node: not GC'd by this one.
			other := conf(t, "1.1.0", map[string]any{"name": "other", "bridge": "cni1", "ipam": ranges("10.244.9.0/24")})
			e.mustAdd(t, cmdArgs("other-net", "/var/run/netns/cni-4", other))

			gc := conf(t, "1.1.0", map[string]any{key: gcList("keep")})
			wantOK(t, "GC", e.p.GC(&skel.CmdArgs{StdinData: gc}))

			all := e.store(t, network)
			if len(all) != 1 || all[0].ContainerID != "keep" || all[0].IP != mustPrefix(t, keep.res.IPs[0].Address).Addr() {
				t.Errorf("after GC the store holds %+v, want keep's reservation only", all)
			}
			wantLinks := []string{wire.HostName("keep", "eth0"), wire.HostName("other-net", "eth0")}
			sort.Strings(wantLinks)
			if got := hostLinks(e); fmt.Sprint(got) != fmt.Sprint(wantLinks) {
				t.Errorf("after GC the host links are %v, want %v (keep's and the other network's)", got, wantLinks)
			}
			if o := e.store(t, "other"); len(o) != 1 {
				t.Errorf("GC of %s touched network other: %+v", network, o)
			}
			// The valid pod still checks out.
			wantOK(t, "CHECK of the kept pod", e.p.Check(cmdArgs("keep", netns, withPrev(t, "1.1.0", keep, nil))))
		})
	}
}

func TestGCRefusesWithoutList(t *testing.T) {
	e := newEnv(t)
	c := conf(t, "1.1.0", nil)
	e.mustAdd(t, cmdArgs("c1", netns, c))
	ce := wantCode(t, "GC without a list", e.p.GC(&skel.CmdArgs{StdinData: c}), types.ErrInvalidNetworkConfig)
	if ce.Details == "" {
		t.Error("no details")
	}
	if len(e.store(t, network)) != 1 || len(e.k.Pods) != 1 {
		t.Error("a refused GC removed something")
	}
	// An empty list is a list: everything of this network goes.
	wantOK(t, "GC with an empty list", e.p.GC(&skel.CmdArgs{StdinData: conf(t, "1.1.0", map[string]any{"cni.dev/valid-attachments": gcList()})}))
	e.wantNothingLeaked(t)
}

func TestGCIfNameMatters(t *testing.T) {
	e := newEnv(t)
	c := conf(t, "1.1.0", nil)
	e.mustAdd(t, cmdArgs("c1", netns, c))
	args := cmdArgs("c1", netns, c)
	args.IfName = "net1"
	e.mustAdd(t, args)
	gc := conf(t, "1.1.0", map[string]any{"cni.dev/valid-attachments": gcList("c1")}) // c1/eth0 only
	wantOK(t, "GC", e.p.GC(&skel.CmdArgs{StdinData: gc}))
	all := e.store(t, network)
	if len(all) != 1 || all[0].IfName != "eth0" {
		t.Errorf("store = %+v, want c1/eth0 only", all)
	}
	if _, ok := e.k.Pods[wire.HostName("c1", "net1")]; ok || len(e.k.Pods) != 1 {
		t.Errorf("kernel = %v, want c1/eth0 only", e.k.Pods)
	}
}

// delegated is a configuration whose addresses come from host-local.
func delegated(t *testing.T, set map[string]any) []byte {
	t.Helper()
	m := map[string]any{"ipam": map[string]any{"type": "host-local", "ranges": [][]map[string]string{{{"subnet": "10.244.5.0/24"}}}}}
	for k, v := range set {
		m[k] = v
	}
	return conf(t, "1.1.0", m)
}

func delegateResult(routes ...string) *current.Result {
	r := &current.Result{CNIVersion: "1.1.0", IPs: []*current.IPConfig{{
		Address: net.IPNet{IP: net.ParseIP("10.244.5.7").To4(), Mask: net.CIDRMask(24, 32)},
		Gateway: net.ParseIP("10.244.5.1"),
	}}}
	for _, d := range routes {
		_, n, _ := net.ParseCIDR(d)
		r.Routes = append(r.Routes, &types.Route{Dst: *n})
	}
	return r
}

func TestDelegatedIPAM(t *testing.T) {
	e := newEnv(t)
	e.d.Result = delegateResult()
	c := delegated(t, nil)
	a := e.mustAdd(t, cmdArgs("c1", netns, c))
	if got := mustPrefix(t, a.res.IPs[0].Address); got != netip.MustParsePrefix("10.244.5.7/24") || *a.res.IPs[0].Interface != 2 {
		t.Errorf("IP %s on %d, want the delegate's 10.244.5.7/24 on eth0", got, *a.res.IPs[0].Interface)
	}
	if !a.res.IPs[0].Gateway.Equal(net.ParseIP("10.244.5.1")) {
		t.Errorf("gateway %v", a.res.IPs[0].Gateway)
	}
	wp := e.k.Pods[wire.HostName("c1", "eth0")].Pod
	if len(wp.Addrs) != 1 || wp.Addrs[0] != netip.MustParsePrefix("10.244.5.7/24") {
		t.Errorf("kernel addresses %v", wp.Addrs)
	}
	if br := e.k.Bridges["cni0"]; len(br) == 0 || br[0].Gateways[0] != netip.MustParsePrefix("10.244.5.1/24") {
		t.Errorf("bridge %+v, want gateway 10.244.5.1/24", br)
	}
	if len(e.st) != 0 {
		t.Errorf("the built-in store was opened for a delegated network: %v", e.st)
	}
	wantOK(t, "CHECK", e.p.Check(cmdArgs("c1", netns, withPrev(t, "1.1.0", a, map[string]any{"ipam": map[string]any{"type": "host-local"}}))))
	wantOK(t, "STATUS", e.p.Status(&skel.CmdArgs{StdinData: c}))
	wantOK(t, "GC", e.p.GC(&skel.CmdArgs{StdinData: delegated(t, map[string]any{"cni.dev/valid-attachments": gcList("c1")})}))
	wantOK(t, "DEL", e.p.Del(cmdArgs("c1", netns, c)))
	want := []string{"ADD host-local", "CHECK host-local", "STATUS host-local", "GC host-local", "DEL host-local"}
	if fmt.Sprint(e.d.Calls) != fmt.Sprint(want) {
		t.Errorf("delegate calls = %v, want %v", e.d.Calls, want)
	}
	if len(e.k.Pods) != 0 {
		t.Errorf("DEL left %v", e.k.Pods)
	}
}

func TestDelegatedIPAMNoGatewayInResult(t *testing.T) {
	e := newEnv(t)
	res := delegateResult()
	res.IPs[0].Gateway = nil
	e.d.Result = res
	a := e.mustAdd(t, cmdArgs("c1", netns, delegated(t, nil)))
	if !a.res.IPs[0].Gateway.Equal(net.ParseIP("10.244.5.1")) {
		t.Errorf("gateway %v, want the subnet's first address 10.244.5.1", a.res.IPs[0].Gateway)
	}
}

func TestDelegatedCheckWithDelegateRoutes(t *testing.T) {
	e := newEnv(t)
	e.d.Result = delegateResult("10.96.0.0/12")
	c := delegated(t, nil)
	a := e.mustAdd(t, cmdArgs("c1", netns, c))
	wp := e.k.Pods[wire.HostName("c1", "eth0")].Pod
	if len(wp.Routes) != 2 {
		t.Fatalf("kernel routes %v, want the delegate's route and the default route", wp.Routes)
	}
	// Nothing changed since ADD: CHECK must pass.
	wantOK(t, "CHECK", e.p.Check(cmdArgs("c1", netns, withPrev(t, "1.1.0", a, map[string]any{"ipam": map[string]any{"type": "host-local"}}))))
}

func TestDelegatedAddFailures(t *testing.T) {
	cases := []struct {
		name     string
		setup    func(e *env)
		wantDels int // DEL calls to the delegate (the undo)
	}{
		{"attach fails: the delegate's address is given back", func(e *env) {
			e.d.Result = delegateResult()
			e.k.FailAttach = errors.New("boom")
		}, 1},
		{"missing netns", func(e *env) { e.d.Result = delegateResult(); e.k.NetNS = map[string]bool{} }, 1},
		{"bridge taken", func(e *env) { e.d.Result = delegateResult(); e.k.NotBridge["cni0"] = true }, 1},
		{"delegate returns no address", func(e *env) { e.d.Result = &current.Result{CNIVersion: "1.1.0"} }, 1},
		{"delegate fails", func(e *env) { e.d.Err = &types.Error{Code: 11, Msg: "host-local: no IP addresses available"} }, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			tc.setup(e)
			_, err := e.add(t, cmdArgs("c1", netns, delegated(t, nil)))
			if cniErr(t, err) == nil {
				t.Fatal("ADD succeeded")
			}
			dels := 0
			for _, c := range e.d.Calls {
				if c == "DEL host-local" {
					dels++
				}
			}
			if dels != tc.wantDels {
				t.Errorf("delegate calls %v: %d DELs, want %d", e.d.Calls, dels, tc.wantDels)
			}
			if len(e.k.Pods) != 0 {
				t.Errorf("attachments leaked: %v", e.k.Pods)
			}
		})
	}
	// A delegate that is not installed is a configuration error.
	e0 := newEnv(t)
	e0.d.Err = errors.New(`failed to find plugin "host-local" in path [/opt/cni/bin]`)
	_, err0 := e0.add(t, cmdArgs("c1", netns, delegated(t, nil)))
	if ce := wantCode(t, "ADD with a missing IPAM plugin", err0, types.ErrInvalidNetworkConfig); !strings.Contains(ce.Details, "CNI_PATH") {
		t.Errorf("details %q do not say where the plugin is looked for", ce.Details)
	}
	// The delegate's own CNI error reaches the runtime unchanged.
	e := newEnv(t)
	e.d.Err = &types.Error{Code: 11, Msg: "host-local: no IP addresses available"}
	_, err := e.add(t, cmdArgs("c1", netns, delegated(t, nil)))
	if ce := cniErr(t, err); ce == nil || ce.Code != 11 {
		t.Errorf("err = %v, want the delegate's code 11", err)
	}
}

func TestAddChainedAfterAnotherPlugin(t *testing.T) {
	e := newEnv(t)
	prev := map[string]any{
		"cniVersion": "1.1.0",
		"interfaces": []map[string]any{{"name": "dummy0"}, {"name": "net0", "sandbox": netns}},
		"ips":        []map[string]any{{"address": "192.168.50.5/24", "interface": 1}},
		"routes":     []map[string]any{{"dst": "192.168.0.0/16"}},
		"dns":        map[string]any{"nameservers": []string{"192.168.50.1"}},
	}
	c := conf(t, "1.1.0", map[string]any{"prevResult": prev})
	a := e.mustAdd(t, cmdArgs("c1", netns, c))
	res := a.res
	if len(res.Interfaces) != 5 {
		t.Fatalf("interfaces = %v, want the previous 2 and podnet's 3", res.Interfaces)
	}
	if res.Interfaces[0].Name != "dummy0" || res.Interfaces[1].Name != "net0" || res.Interfaces[2].Name != "cni0" ||
		res.Interfaces[4].Name != "eth0" || res.Interfaces[4].Sandbox != netns {
		t.Errorf("interfaces = %v", res.Interfaces)
	}
	if len(res.IPs) != 2 {
		t.Fatalf("IPs = %v, want the previous one and podnet's", res.IPs)
	}
	if res.IPs[0].Address.String() != "192.168.50.5/24" || *res.IPs[0].Interface != 1 {
		t.Errorf("previous IP = %v, want 192.168.50.5/24 on interface 1", res.IPs[0])
	}
	if !netip.MustParsePrefix(subnet24).Contains(mustPrefix(t, res.IPs[1].Address).Addr()) || *res.IPs[1].Interface != 4 {
		t.Errorf("podnet's IP = %v, want an address of %s on interface 4 (eth0)", res.IPs[1], subnet24)
	}
	if len(res.Routes) != 2 || res.Routes[0].Dst.String() != "192.168.0.0/16" || res.Routes[1].Dst.String() != "0.0.0.0/0" {
		t.Errorf("routes = %v", res.Routes)
	}
	if len(res.DNS.Nameservers) != 1 || res.DNS.Nameservers[0] != "192.168.50.1" {
		t.Errorf("DNS = %+v, want the previous plugin's", res.DNS)
	}
	// CHECK with the chained result finds podnet's interface.
	wantOK(t, "CHECK of the chained result", e.p.Check(cmdArgs("c1", netns, withPrev(t, "1.1.0", a, nil))))
}

func TestVerbsReturnUntypedNilOnSuccess(t *testing.T) {
	e := newEnv(t)
	c := conf(t, "1.1.0", nil)
	a := e.mustAdd(t, cmdArgs("c1", netns, c))
	if err := e.p.Check(cmdArgs("c1", netns, withPrev(t, "1.1.0", a, nil))); err != nil {
		t.Errorf("CHECK returned %#v, want nil", err)
	}
	if err := e.p.GC(&skel.CmdArgs{StdinData: conf(t, "1.1.0", map[string]any{"cni.dev/valid-attachments": gcList("c1")})}); err != nil {
		t.Errorf("GC returned %#v, want nil", err)
	}
	if err := e.p.Status(&skel.CmdArgs{StdinData: c}); err != nil {
		t.Errorf("STATUS returned %#v, want nil", err)
	}
	if err := e.p.Del(cmdArgs("c1", netns, c)); err != nil {
		t.Errorf("DEL returned %#v, want nil", err)
	}
	e.d.Result = delegateResult()
	dc := delegated(t, nil)
	e.mustAdd(t, cmdArgs("c2", netns, dc))
	if err := e.p.Status(&skel.CmdArgs{StdinData: dc}); err != nil {
		t.Errorf("delegated STATUS returned %#v, want nil", err)
	}
	if err := e.p.Del(cmdArgs("c2", netns, dc)); err != nil {
		t.Errorf("delegated DEL returned %#v, want nil", err)
	}
}

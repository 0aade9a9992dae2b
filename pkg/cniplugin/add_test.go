package cniplugin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/pkg/ipam"
	"github.com/podnet/podnet/pkg/wire"
)

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

// A reservation left by a sandbox that no DEL and no GC will ever come for
// (its runtime lost it: the node reset, its state gone) is reclaimed by the
// next ADD once it is old and its pod's veth is gone; a live pod's as old,
// and an orphan young enough for its ADD to be still running, stay.
func TestAddReclaimsReservationsWhoseInterfaceIsGone(t *testing.T) {
	e := newEnv(t, netns, netns2)
	c := conf(t, "1.1.0", map[string]any{"ipam": ranges("10.244.1.0/29")}) // 5 usable
	live := e.mustAdd(t, cmdArgs("live", netns, c)).res.IPs[0].Address.IP.String()
	old := time.Now().Add(-ipam.StaleAfter - time.Minute).UTC().Truncate(time.Second)
	lost := netip.MustParseAddr("10.244.1.6")
	young := netip.MustParseAddr("10.244.1.5")
	e.withStore(t, network, func(st *ipam.MemStore) {
		all, _ := st.List()
		for _, r := range all { // the live pod has run for a while
			r.Created = old
			_ = st.Release(r.IP)
			_, _ = st.Reserve(r)
		}
		_, _ = st.Reserve(ipam.Reservation{IP: lost, ContainerID: "lost", IfName: "eth0", PodNamespace: "default", PodName: "gone", Created: old})
		_, _ = st.Reserve(ipam.Reservation{IP: young, ContainerID: "adding", IfName: "eth0", Created: time.Now().UTC()})
	})
	e.mustAdd(t, cmdArgs("next", netns2, c))
	held := map[string]string{}
	for _, r := range e.store(t, network) {
		held[r.IP.String()] = r.ContainerID
	}
	if _, ok := held[lost.String()]; ok {
		t.Errorf("the old reservation %s whose veth is gone survived an ADD: %v", lost, held)
	}
	if held[live] != "live" || held[young.String()] != "adding" {
		t.Errorf("an ADD released a live pod's old reservation (%s) or a young orphan's (%s): %v", live, young, held)
	}
	if len(held) != 3 {
		t.Errorf("store %v, want live, adding and next", held)
	}
}

package cniplugin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet/pkg/wire"
)

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

package cniplugin

import (
	"fmt"
	"net/netip"
	"sort"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/pkg/ipam"
	"github.com/podnet/podnet/pkg/wire"
)

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

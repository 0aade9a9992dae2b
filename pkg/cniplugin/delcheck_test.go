package cniplugin

import (
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/pkg/ipam"
	"github.com/podnet/podnet/pkg/wire"
)

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

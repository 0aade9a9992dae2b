package kernel

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet/internal/cnitest"
	"github.com/podnet/podnet/pkg/wire"
)

const subnet = "10.244.1.0/24"

// podIP returns the address the result gives the pod's eth0.
func podIP(t *testing.T, res types.Result, netnsPath string) netip.Addr {
	t.Helper()
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatalf("convert result: %v", err)
	}
	for _, ipc := range cur.IPs {
		if ipc.Interface != nil && cur.Interfaces[*ipc.Interface].Name == "eth0" &&
			cur.Interfaces[*ipc.Interface].Sandbox == netnsPath {
			a, _ := netip.AddrFromSlice(ipc.Address.IP)
			return a.Unmap()
		}
	}
	t.Fatalf("result has no IP on eth0 in %s: %v", netnsPath, cur)
	return netip.Addr{}
}

// reservations lists the addresses held in the node's built-in IPAM store.
func reservations(t *testing.T, n *cnitest.Node, network string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(n.DataDir, network))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

// hostVeths lists the veths in the node namespace.
func hostVeths(t *testing.T, n *cnitest.Node) []string {
	t.Helper()
	out := n.NS.MustRun(t, "ip", "-o", "link", "show", "type", "veth")
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			names = append(names, strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0])
		}
	}
	return names
}

func ping(p *cnitest.Pod, dst netip.Addr) error {
	_, err := p.NS.Run("ping", "-c", "1", "-W", "2", dst.String())
	return err
}

// TestSameNodePath is seed 004: two pods on one bridge reach each other
// through pod eth0 → veth → cni0 → veth → pod eth0.
func TestSameNodePath(t *testing.T) {
	n := cnitest.NewNode(t)
	list := cnitest.List(t, "1.1.0", "podnet", n.PodnetConf(subnet, ""))
	a, b := cnitest.NewPod(t, "pod-a"), cnitest.NewPod(t, "pod-b")
	ra, err := n.Add(list, a.RT())
	if err != nil {
		t.Fatalf("ADD pod-a: %v", err)
	}
	rb, err := n.Add(list, b.RT())
	if err != nil {
		t.Fatalf("ADD pod-b: %v", err)
	}
	ipA, ipB := podIP(t, ra, a.NS.Path), podIP(t, rb, b.NS.Path)
	if ipA == ipB || !netip.MustParsePrefix(subnet).Contains(ipA) || !netip.MustParsePrefix(subnet).Contains(ipB) {
		t.Fatalf("pod addresses %s and %s: want two distinct addresses of %s", ipA, ipB, subnet)
	}
	if err := ping(a, ipB); err != nil {
		t.Fatalf("pod-a cannot reach pod-b: %v", err)
	}
	if err := ping(b, ipA); err != nil {
		t.Fatalf("pod-b cannot reach pod-a: %v", err)
	}
	// The gateway is the bridge's address, and the node reaches the pod.
	if err := ping(a, netip.MustParseAddr("10.244.1.1")); err != nil {
		t.Fatalf("pod-a cannot reach its gateway: %v", err)
	}
	if _, err := n.NS.Run("ping", "-c", "1", "-W", "2", ipA.String()); err != nil {
		t.Fatalf("node cannot reach pod-a: %v", err)
	}
	// Seed 004's views: both host ends are ports of cni0, hairpin on, and
	// the pod's eth0 has the MTU of the config.
	links := n.NS.MustRun(t, "bridge", "-d", "link", "show")
	for _, p := range []*cnitest.Pod{a, b} {
		host := wire.HostName(p.ContainerID, "eth0")
		var line string
		for _, l := range strings.Split(links, "\n") {
			if strings.Contains(l, host) {
				line = l
			}
		}
		if !strings.Contains(line, "master cni0") {
			t.Errorf("%s is not a port of cni0:\n%s", host, links)
		}
	}
	if !strings.Contains(links, "hairpin on") {
		t.Errorf("hairpin is off on the bridge ports:\n%s", links)
	}
	if out := a.NS.MustRun(t, "ip", "-o", "link", "show", "eth0"); !strings.Contains(out, "mtu 1450") {
		t.Errorf("pod eth0 MTU: %s", out)
	}
	if out := a.NS.MustRun(t, "cat", "/proc/sys/net/ipv6/conf/eth0/accept_dad"); strings.TrimSpace(out) != "0" {
		t.Errorf("IPv6 DAD on the pod side: accept_dad=%s, want 0", out)
	}
	if out := n.NS.MustRun(t, "cat", "/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(out) != "1" {
		t.Errorf("forwarding on the node: ip_forward=%s, want 1", out)
	}
}

// TestDualStack gives each pod an IPv4 and an IPv6 address, both reachable.
func TestDualStack(t *testing.T) {
	n := cnitest.NewNode(t)
	conf := fmt.Sprintf(`{"type":"podnet","ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:10:244:1::/64"}]],"dataDir":%q}}`, n.DataDir)
	list := cnitest.List(t, "1.1.0", "podnet", conf)
	a, b := cnitest.NewPod(t, "v6-a"), cnitest.NewPod(t, "v6-b")
	if _, err := n.Add(list, a.RT()); err != nil {
		t.Fatal(err)
	}
	rb, err := n.Add(list, b.RT())
	if err != nil {
		t.Fatal(err)
	}
	cur, _ := current.NewResultFromResult(rb)
	if len(cur.IPs) != 2 {
		t.Fatalf("want an IPv4 and an IPv6 address, got %v", cur.IPs)
	}
	v6 := cur.IPs[1].Address.IP.String()
	// No DAD: the address is usable at once, not "tentative".
	if out := b.NS.MustRun(t, "ip", "-6", "addr", "show", "dev", "eth0"); strings.Contains(out, "tentative") {
		t.Errorf("IPv6 address still tentative (DAD not off):\n%s", out)
	}
	if _, err := a.NS.Run("ping", "-6", "-c", "1", "-W", "2", v6); err != nil {
		t.Fatalf("IPv6 pod to pod: %v", err)
	}
	if out := a.NS.MustRun(t, "ip", "-6", "route", "show", "default"); !strings.Contains(out, "via fd00:10:244:1::1") {
		t.Errorf("IPv6 default route: %q", out)
	}
}

// TestCheckDetectsDrift: CHECK passes on a fresh attachment and names each
// kind of damage done to it afterwards.
func TestCheckDetectsDrift(t *testing.T) {
	cases := []struct {
		name   string
		break_ func(t *testing.T, n *cnitest.Node, p *cnitest.Pod, ip netip.Addr)
		want   string
	}{
		{"mtu", func(t *testing.T, n *cnitest.Node, p *cnitest.Pod, _ netip.Addr) {
			p.NS.MustRun(t, "ip", "link", "set", "eth0", "mtu", "1400")
		}, "MTU 1400"},
		{"address", func(t *testing.T, n *cnitest.Node, p *cnitest.Pod, ip netip.Addr) {
			p.NS.MustRun(t, "ip", "addr", "del", ip.String()+"/24", "dev", "eth0")
		}, "lacks address"},
		{"route", func(t *testing.T, n *cnitest.Node, p *cnitest.Pod, _ netip.Addr) {
			p.NS.MustRun(t, "ip", "route", "del", "default")
		}, "route 0.0.0.0/0 via 10.244.1.1 is missing"},
		{"mac", func(t *testing.T, n *cnitest.Node, p *cnitest.Pod, _ netip.Addr) {
			p.NS.MustRun(t, "ip", "link", "set", "eth0", "address", "02:00:00:00:00:01")
		}, "has MAC 02:00:00:00:00:01"},
		{"bridge port", func(t *testing.T, n *cnitest.Node, p *cnitest.Pod, _ netip.Addr) {
			n.NS.MustRun(t, "ip", "link", "set", wire.HostName(p.ContainerID, "eth0"), "nomaster")
		}, "is not attached to bridge cni0"},
		{"interface", func(t *testing.T, n *cnitest.Node, p *cnitest.Pod, _ netip.Addr) {
			n.NS.MustRun(t, "ip", "link", "del", wire.HostName(p.ContainerID, "eth0"))
		}, "interface eth0 is missing"},
		{"reservation", func(t *testing.T, n *cnitest.Node, p *cnitest.Pod, ip netip.Addr) {
			if err := os.Remove(filepath.Join(n.DataDir, "podnet", ip.String())); err != nil {
				t.Fatal(err)
			}
		}, "reservation of " + "%s"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := cnitest.NewNode(t)
			list := cnitest.List(t, "1.1.0", "podnet", n.PodnetConf(subnet, ""))
			p := cnitest.NewPod(t, "check")
			res, err := n.Add(list, p.RT())
			if err != nil {
				t.Fatal(err)
			}
			if err := n.Check(list, p.RT()); err != nil {
				t.Fatalf("CHECK right after ADD: %v", err)
			}
			ip := podIP(t, res, p.NS.Path)
			c.break_(t, n, p, ip)
			err = n.Check(list, p.RT())
			want := c.want
			if strings.Contains(want, "%s") {
				want = fmt.Sprintf(want, ip)
			}
			var te *types.Error
			if !errors.As(err, &te) || te.Code != 100 || !strings.Contains(te.Msg, want) {
				t.Fatalf("CHECK after breaking the %s: got %v, want code 100 with %q", c.name, err, want)
			}
			if err := n.Del(list, p.RT()); err != nil {
				t.Fatalf("DEL of a drifted attachment: %v", err)
			}
		})
	}
}

// TestDelIdempotent: DEL twice, and DEL after the pod namespace is gone,
// succeed and leave nothing behind.
func TestDelIdempotent(t *testing.T) {
	n := cnitest.NewNode(t)
	list := cnitest.List(t, "1.1.0", "podnet", n.PodnetConf(subnet, ""))
	a, b := cnitest.NewPod(t, "del-a"), cnitest.NewPod(t, "del-b")
	for _, p := range []*cnitest.Pod{a, b} {
		if _, err := n.Add(list, p.RT()); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 2; i++ {
		if err := n.Del(list, a.RT()); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	if out := a.NS.MustRun(t, "ip", "-o", "link"); strings.Contains(out, "eth0") {
		t.Errorf("eth0 still in the pod after DEL:\n%s", out)
	}
	// The pod namespace disappears before DEL, as when a runtime crashed.
	b.NS.Delete()
	if err := n.Del(list, b.RT()); err != nil {
		t.Fatalf("DEL after the namespace is gone: %v", err)
	}
	rt := b.RT()
	rt.NetNS = ""
	if err := n.Del(list, rt); err != nil {
		t.Fatalf("DEL without CNI_NETNS: %v", err)
	}
	if v := hostVeths(t, n); len(v) != 0 {
		t.Errorf("veths left on the node: %v", v)
	}
	if r := reservations(t, n, "podnet"); len(r) != 0 {
		t.Errorf("reservations left: %v", r)
	}
}

// TestGC releases what is not valid and leaves the valid attachment working.
func TestGC(t *testing.T) {
	for _, key := range []string{"cni.dev/valid-attachments", "cni.dev/attachments"} {
		t.Run(key, func(t *testing.T) {
			n := cnitest.NewNode(t)
			list := cnitest.List(t, "1.1.0", "podnet", n.PodnetConf(subnet, ""))
			keep, drop, peer := cnitest.NewPod(t, "keep"), cnitest.NewPod(t, "drop"), cnitest.NewPod(t, "peer")
			for _, p := range []*cnitest.Pod{keep, drop, peer} {
				if _, err := n.Add(list, p.RT()); err != nil {
					t.Fatal(err)
				}
			}
			// An orphaned reservation with no interface at all, as a crashed
			// runtime leaves behind.
			orphan := `{"ip":"10.244.1.200","containerID":"orphan","ifName":"eth0"}`
			if err := os.WriteFile(filepath.Join(n.DataDir, "podnet", "10.244.1.200"), []byte(orphan), 0o600); err != nil {
				t.Fatal(err)
			}
			valid := []types.GCAttachment{{ContainerID: keep.ContainerID, IfName: "eth0"}, {ContainerID: peer.ContainerID, IfName: "eth0"}}
			// Send the GC by hand with only the key under test (libcni sends both).
			conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"podnet",%s,%q:%s}`,
				strings.TrimSuffix(strings.TrimPrefix(n.PodnetConf(subnet, ""), "{"), "}"), key, mustJSON(valid))
			if out, ok := n.Exec(t, map[string]string{"CNI_COMMAND": "GC", "CNI_PATH": strings.Join(n.Path, ":")}, conf); !ok {
				t.Fatalf("GC failed: %s", out)
			}
			got := reservations(t, n, "podnet")
			if len(got) != 2 {
				t.Errorf("after GC: reservations %v, want only keep's and peer's", got)
			}
			for _, v := range hostVeths(t, n) {
				if v == wire.HostName(drop.ContainerID, "eth0") {
					t.Errorf("GC left the invalid attachment's veth %s", v)
				}
			}
			if out := drop.NS.MustRun(t, "ip", "-o", "link"); strings.Contains(out, "eth0") {
				t.Errorf("GC left eth0 in the dropped pod")
			}
			peerIP := podIPFromNS(t, peer)
			if err := ping(keep, peerIP); err != nil {
				t.Errorf("a valid attachment lost connectivity after GC: %v", err)
			}
		})
	}
}

// TestAddReclaimsStaleReservations: with no runtime sending GC, an ADD
// releases reservations made long ago whose veth is gone (a sandbox its
// runtime lost), and keeps a live pod's as old, an orphan young enough for
// its ADD to be running, and one of unknown age.
func TestAddReclaimsStaleReservations(t *testing.T) {
	n := cnitest.NewNode(t)
	list := cnitest.List(t, "1.1.0", "podnet", n.PodnetConf(subnet, ""))
	keep := cnitest.NewPod(t, "keep")
	res, err := n.Add(list, keep.RT())
	if err != nil {
		t.Fatal(err)
	}
	keepIP := podIP(t, res, keep.NS.Path)
	old := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	store := filepath.Join(n.DataDir, "podnet")
	write := func(ip, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(store, ip), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// keep has been running for an hour.
	write(keepIP.String(), fmt.Sprintf(`{"ip":%q,"containerID":%q,"ifName":"eth0","created":%q}`, keepIP, keep.ContainerID, old))
	write("10.244.1.200", `{"ip":"10.244.1.200","containerID":"lost","ifName":"eth0","created":"`+old+`"}`)
	write("10.244.1.201", `{"ip":"10.244.1.201","containerID":"adding","ifName":"eth0","created":"`+time.Now().UTC().Format(time.RFC3339)+`"}`)
	write("10.244.1.202", "inherited\r\neth0") // host-local's format: no age
	next := cnitest.NewPod(t, "next")
	if _, err := n.Add(list, next.RT()); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(reservations(t, n, "podnet"), " ")
	if strings.Contains(got, "10.244.1.200") {
		t.Errorf("an ADD kept the hour-old reservation of a pod whose veth is gone: %s", got)
	}
	for _, want := range []string{keepIP.String(), "10.244.1.201", "10.244.1.202"} {
		if !strings.Contains(got, want) {
			t.Errorf("an ADD released %s: %s", want, got)
		}
	}
	if err := ping(next, keepIP); err != nil {
		t.Errorf("keep, whose old reservation stayed, is unreachable: %v", err)
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func podIPFromNS(t *testing.T, p *cnitest.Pod) netip.Addr {
	t.Helper()
	out := p.NS.MustRun(t, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	f := strings.Fields(out)
	for i, w := range f {
		if w == "inet" {
			return netip.MustParsePrefix(f[i+1]).Addr()
		}
	}
	t.Fatalf("no IPv4 address on eth0: %s", out)
	return netip.Addr{}
}

// TestStatus: 0 when an ADD would work; 50 with the reason when it could not.
func TestStatus(t *testing.T) {
	t.Run("ok", func(t *testing.T) {
		n := cnitest.NewNode(t)
		if err := n.Status(cnitest.List(t, "1.1.0", "podnet", n.PodnetConf(subnet, ""))); err != nil {
			t.Fatalf("STATUS on a fresh node: %v", err)
		}
	})
	t.Run("exhausted", func(t *testing.T) {
		n := cnitest.NewNode(t)
		// A /29 has .1 (gateway) and five pod addresses.
		list := cnitest.List(t, "1.1.0", "podnet", n.PodnetConf("10.244.1.0/29", ""))
		for i := 0; i < 5; i++ {
			if _, err := n.Add(list, cnitest.NewPod(t, fmt.Sprintf("fill%d", i)).RT()); err != nil {
				t.Fatal(err)
			}
		}
		expectCode(t, n.Status(list), types.ErrPluginNotAvailable, "all 5 addresses are taken")
		// And ADD says the same with "try again later".
		p := cnitest.NewPod(t, "one-too-many")
		_, err := n.Add(list, p.RT())
		expectCode(t, err, types.ErrTryAgainLater, "no free address")
		if len(reservations(t, n, "podnet")) != 5 || len(hostVeths(t, n)) != 5 {
			t.Errorf("a refused ADD left something behind")
		}
	})
	t.Run("not a bridge", func(t *testing.T) {
		n := cnitest.NewNode(t)
		n.NS.MustRun(t, "ip", "link", "add", "cni0", "type", "veth", "peer", "name", "cni0-peer")
		list := cnitest.List(t, "1.1.0", "podnet", n.PodnetConf(subnet, ""))
		expectCode(t, n.Status(list), types.ErrPluginNotAvailable, "not a bridge")
		_, err := n.Add(list, cnitest.NewPod(t, "nb").RT())
		expectCode(t, err, types.ErrInvalidNetworkConfig, "not a bridge")
		if len(reservations(t, n, "podnet")) != 0 {
			t.Errorf("a refused ADD kept its reservation")
		}
	})
	t.Run("store not writable", func(t *testing.T) {
		n := cnitest.NewNode(t)
		file := filepath.Join(n.Dir, "a-file")
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		conf := fmt.Sprintf(`{"type":"podnet","ipam":{"ranges":[[{"subnet":%q}]],"dataDir":%q}}`, subnet, file)
		expectCode(t, n.Status(cnitest.List(t, "1.1.0", "podnet", conf)), types.ErrPluginNotAvailable, "a-file")
	})
	t.Run("bridge down", func(t *testing.T) {
		n := cnitest.NewNode(t)
		list := cnitest.List(t, "1.1.0", "podnet", n.PodnetConf(subnet, ""))
		if _, err := n.Add(list, cnitest.NewPod(t, "dn").RT()); err != nil {
			t.Fatal(err)
		}
		n.NS.MustRun(t, "ip", "link", "set", "cni0", "down")
		expectCode(t, n.Status(list), types.ErrLimitedConnectivity, "cni0 is down")
	})
}

func expectCode(t *testing.T, err error, code uint, msg string) {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("got %v, want a CNI error with code %d", err, code)
	}
	if te.Code != code || !strings.Contains(te.Msg, msg) || te.Details == "" {
		t.Fatalf("got code %d msg %q details %q, want code %d, msg containing %q and details", te.Code, te.Msg, te.Details, code, msg)
	}
}

// TestVersions: every CNI version a runtime may ask for gets a result of
// that version; CHECK where the version has it.
func TestVersions(t *testing.T) {
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			n := cnitest.NewNode(t)
			list := cnitest.List(t, v, "podnet", n.PodnetConf(subnet, ""))
			p := cnitest.NewPod(t, "ver")
			res, err := n.Add(list, p.RT())
			if err != nil {
				t.Fatal(err)
			}
			if res.Version() != v {
				t.Errorf("result version %s, want %s", res.Version(), v)
			}
			podIP(t, res, p.NS.Path)
			if v >= "0.4.0" {
				if err := n.Check(list, p.RT()); err != nil {
					t.Errorf("CHECK: %v", err)
				}
			}
			if err := n.Del(list, p.RT()); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("cniVersions", func(t *testing.T) {
		n := cnitest.NewNode(t)
		js := fmt.Sprintf(`{"cniVersion":"0.4.0","cniVersions":["0.4.0","1.1.0"],"name":"podnet","plugins":[%s]}`, n.PodnetConf(subnet, ""))
		list, err := libcni.ConfListFromBytes([]byte(js))
		if err != nil {
			t.Fatal(err)
		}
		res, err := n.Add(list, cnitest.NewPod(t, "vers").RT())
		if err != nil {
			t.Fatal(err)
		}
		if res.Version() != "1.1.0" {
			t.Errorf("with cniVersions [0.4.0 1.1.0]: result version %s, want 1.1.0", res.Version())
		}
	})
}

// TestHostLocalDelegation: "type": "host-local" switches to the reference
// IPAM plugin, with the same ranges.
func TestHostLocalDelegation(t *testing.T) {
	n := cnitest.NewNode(t)
	cnitest.RefDir(t, "host-local")
	hl := filepath.Join(n.Dir, "host-local")
	conf := fmt.Sprintf(`{"type":"podnet","ipam":{"type":"host-local","ranges":[[{"subnet":%q}]],"dataDir":%q}}`, subnet, hl)
	list := cnitest.List(t, "1.1.0", "podnet", conf)
	a, b := cnitest.NewPod(t, "hl-a"), cnitest.NewPod(t, "hl-b")
	if _, err := n.Add(list, a.RT()); err != nil {
		t.Fatal(err)
	}
	rb, err := n.Add(list, b.RT())
	if err != nil {
		t.Fatal(err)
	}
	ipB := podIP(t, rb, b.NS.Path)
	if _, err := os.Stat(filepath.Join(hl, "podnet", ipB.String())); err != nil {
		t.Errorf("host-local holds no reservation for %s: %v", ipB, err)
	}
	if err := ping(a, ipB); err != nil {
		t.Fatalf("pods on host-local addresses cannot talk: %v", err)
	}
	if err := n.Check(list, b.RT()); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := n.Del(list, b.RT()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(hl, "podnet", ipB.String())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("DEL did not release %s in host-local", ipB)
	}
}

// TestConcurrentAdds: 32 ADDs at once all succeed with 32 distinct
// addresses, and every pod reaches its gateway.
func TestConcurrentAdds(t *testing.T) {
	n := cnitest.NewNode(t)
	list := cnitest.List(t, "1.1.0", "podnet", n.PodnetConf(subnet, ""))
	const N = 32
	pods := make([]*cnitest.Pod, N)
	for i := range pods {
		pods[i] = cnitest.NewPod(t, fmt.Sprintf("c%02d", i))
	}
	ips := make([]netip.Addr, N)
	errs := make([]error, N)
	var wg sync.WaitGroup
	for i := range pods {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res, err := n.Add(list, pods[i].RT())
			if err == nil {
				cur, cerr := current.NewResultFromResult(res)
				if cerr == nil && len(cur.IPs) == 1 {
					ips[i], _ = netip.AddrFromSlice(cur.IPs[0].Address.IP)
				}
			}
			errs[i] = err
		}(i)
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i, err := range errs {
		if err != nil {
			t.Errorf("ADD %d: %v", i, err)
			continue
		}
		if j, dup := seen[ips[i].Unmap()]; dup {
			t.Errorf("pods %d and %d both got %s", j, i, ips[i])
		}
		seen[ips[i].Unmap()] = i
	}
	if len(seen) != N || len(reservations(t, n, "podnet")) != N {
		t.Fatalf("%d distinct addresses, %d reservations; want %d", len(seen), len(reservations(t, n, "podnet")), N)
	}
	for i, p := range pods {
		if err := ping(p, netip.MustParseAddr("10.244.1.1")); err != nil {
			t.Errorf("pod %d (%s) cannot reach the gateway: %v", i, ips[i], err)
		}
	}
	for _, p := range pods {
		if err := n.Del(list, p.RT()); err != nil {
			t.Error(err)
		}
	}
	if r := reservations(t, n, "podnet"); len(r) != 0 {
		t.Errorf("reservations left after DEL: %v", r)
	}
}

// TestKilledMidAdd kills the plugin at many points of ADD; whatever it left
// behind, a GC that no longer lists the attachment removes it, and the node
// keeps working (no stuck lock, no taken address).
func TestKilledMidAdd(t *testing.T) {
	n := cnitest.NewNode(t)
	stdin := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"podnet",%s`,
		strings.TrimPrefix(n.PodnetConf(subnet, ""), "{"))
	bin := filepath.Join(cnitest.PluginDir(t), "podnet")
	start := func(p *cnitest.Pod) *exec.Cmd {
		cmd := exec.Command("ip", "netns", "exec", n.NS.Name, "env", "-i",
			"CNI_COMMAND=ADD", "CNI_CONTAINERID="+p.ContainerID, "CNI_NETNS="+p.NS.Path,
			"CNI_IFNAME=eth0", "CNI_PATH="+strings.Join(n.Path, ":"), bin)
		cmd.Stdin = strings.NewReader(stdin)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	gc := stdin[:len(stdin)-1] + `,"cni.dev/valid-attachments":[]}`
	gcEnv := map[string]string{"CNI_COMMAND": "GC", "CNI_PATH": strings.Join(n.Path, ":")}
	// Time one whole ADD, so the kills below spread over all of it.
	t0 := time.Now()
	if err := start(cnitest.NewPod(t, "timed")).Wait(); err != nil {
		t.Fatalf("uninterrupted ADD: %v", err)
	}
	full := time.Since(t0)
	if out, ok := n.Exec(t, gcEnv, gc); !ok {
		t.Fatalf("GC: %s", out)
	}
	const kills = 24
	killedWithLeftovers := 0
	for i := 0; i < kills; i++ {
		p := cnitest.NewPod(t, fmt.Sprintf("kill%02d", i))
		cmd := start(p)
		// `ip netns exec` execs env, which execs the plugin: same PID.
		time.Sleep(full * time.Duration(i) / kills)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if len(reservations(t, n, "podnet")) > 0 || len(hostVeths(t, n)) > 0 {
			killedWithLeftovers++
		}
		if out, ok := n.Exec(t, gcEnv, gc); !ok {
			t.Fatalf("GC after kill %d failed: %s", i, out)
		}
		if r := reservations(t, n, "podnet"); len(r) != 0 {
			t.Fatalf("kill %d: GC left reservations %v", i, r)
		}
		if v := hostVeths(t, n); len(v) != 0 {
			t.Fatalf("kill %d: GC left veths %v", i, v)
		}
		if out := p.NS.MustRun(t, "ip", "-o", "link"); strings.Contains(out, "eth0") {
			t.Fatalf("kill %d: GC left eth0 in the pod", i)
		}
		if ents, _ := os.ReadDir(filepath.Join(n.DataDir, "podnet")); len(ents) > 0 {
			for _, e := range ents {
				if strings.HasPrefix(e.Name(), ".tmp-") {
					t.Fatalf("kill %d: GC left temporary file %s", i, e.Name())
				}
			}
		}
	}
	t.Logf("an ADD takes %v; %d of %d kills spread over it left something for GC to clean", full, killedWithLeftovers, kills)
	if killedWithLeftovers == 0 {
		t.Errorf("no kill landed in the middle of an ADD: the test did not test anything")
	}
	// The node still works.
	list := cnitest.List(t, "1.1.0", "podnet", n.PodnetConf(subnet, ""))
	if _, err := n.Add(list, cnitest.NewPod(t, "after").RT()); err != nil {
		t.Fatalf("ADD after the kills: %v", err)
	}
}

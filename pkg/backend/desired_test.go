package backend

import (
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// Unit tests of the desired state: no kernel, no root.

const (
	testUnderlay = 3 // ifindex of eth1
	testVTEP     = 7 // ifindex of podnet.1

	pinnedNode1MAC = "0e:58:c6:6f:01:69"
)

var testLocal = Local{Node: "node-1", PodCIDR: netip.MustParsePrefix("10.244.1.0/24"), NodeIP: netip.MustParseAddr("192.168.56.11"), Link: "eth1"}

func testNode() node {
	return node{local: testLocal, segment: netip.MustParsePrefix("192.168.56.0/24"), underlay: testUnderlay, vtep: testVTEP}
}

// remote is node-<n> with pod subnet 10.244.<n>.0/24 at nodeIP, with a VTEP
// MAC unless noMAC.
func remote(n int, nodeIP string, noMAC bool) Remote {
	name := "node-" + string(rune('0'+n))
	r := Remote{Node: name, PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(n), 0}), 24), NodeIP: netip.MustParseAddr(nodeIP)}
	if !noMAC {
		r.VTEPMAC = VTEPMAC(name)
	}
	return r
}

// triple is flannel's vxlan state for one remote.
func triple(r Remote) (route, neigh, fdbEntry) {
	gw := r.PodCIDR.Masked().Addr()
	return route{dst: r.PodCIDR, gw: gw, link: testVTEP, onlink: true}, neigh{ip: gw, mac: r.VTEPMAC}, fdbEntry{mac: r.VTEPMAC, dst: r.NodeIP}
}

func direct(r Remote) route {
	return route{dst: r.PodCIDR, gw: r.NodeIP, link: testUnderlay}
}

func TestDesiredVXLAN(t *testing.T) {
	n2, n3, n4 := remote(2, "192.168.56.12", false), remote(3, "192.168.57.13", false), remote(4, "192.168.56.14", true)
	got := desiredVXLAN(testNode(), []Remote{n3, n4, n2}, nil)

	r2, ne2, f2 := triple(n2)
	r3, ne3, f3 := triple(n3)
	want := state{routes: []route{r2, r3}, neighs: []neigh{ne2, ne3}, fdb: []fdbEntry{f2, f3}}
	assertState(t, got, want)
	// The exact triple of the seeds for node-2.
	if r2.dst.String() != "10.244.2.0/24" || r2.gw.String() != "10.244.2.0" || !r2.onlink || r2.link != testVTEP {
		t.Errorf("route for node-2 = %+v, want 10.244.2.0/24 via 10.244.2.0 onlink dev podnet.1", r2)
	}
	if ne2.ip.String() != "10.244.2.0" || ne2.mac.String() != VTEPMAC("node-2").String() {
		t.Errorf("neighbour for node-2 = %+v", ne2)
	}
	if f2.dst.String() != "192.168.56.12" || f2.mac.String() != VTEPMAC("node-2").String() {
		t.Errorf("fdb for node-2 = %+v", f2)
	}
	// No VTEP MAC yet: refused, with the reason, and nothing programmed.
	if len(got.refused) != 1 || !strings.Contains(got.refused["node-4"], AnnotationVTEPMAC) {
		t.Errorf("refused = %v, want node-4 refused for lack of %s", got.refused, AnnotationVTEPMAC)
	}
}

func TestDesiredHostGW(t *testing.T) {
	n2, n3, n4 := remote(2, "192.168.56.12", true), remote(3, "192.168.57.13", false), remote(4, "192.168.56.14", false)
	got := desiredHostGW(testNode(), []Remote{n2, n3, n4}, nil)
	assertState(t, got, state{routes: []route{direct(n2), direct(n4)}})
	if r := got.routes[0]; r.dst.String() != "10.244.2.0/24" || r.gw.String() != "192.168.56.12" || r.onlink || r.link != testUnderlay {
		t.Errorf("route for node-2 = %+v, want 10.244.2.0/24 via 192.168.56.12 dev eth1", r)
	}
	msg, ok := got.refused["node-3"]
	if len(got.refused) != 1 || !ok {
		t.Fatalf("refused = %v, want node-3 only", got.refused)
	}
	for _, s := range []string{"192.168.57.13", "192.168.56.0/24", "vxlan"} {
		if !strings.Contains(msg, s) {
			t.Errorf("refusal %q does not name %s", msg, s)
		}
	}
}

func TestDesiredHybrid(t *testing.T) {
	near := remote(2, "192.168.56.12", false)
	nearNoMAC := remote(5, "192.168.56.15", true) // direct routes need no MAC
	far := remote(3, "192.168.57.13", false)
	farNoMAC := remote(4, "192.168.58.14", true)
	got := desiredHybrid(testNode(), []Remote{far, near, farNoMAC, nearNoMAC}, nil)
	r3, ne3, f3 := triple(far)
	assertState(t, got, state{routes: []route{direct(near), r3, direct(nearNoMAC)}, neighs: []neigh{ne3}, fdb: []fdbEntry{f3}})
	if len(got.refused) != 1 || !strings.Contains(got.refused["node-4"], AnnotationVTEPMAC) {
		t.Errorf("refused = %v, want node-4 (far, no VTEP MAC)", got.refused)
	}
}

// TestDesiredBadRemotes: bad input is refused with a reason, never a panic
// and never a route that could hijack traffic (a zero prefix would be a
// default route).
func TestDesiredBadRemotes(t *testing.T) {
	good := remote(2, "192.168.56.12", false)
	cases := []struct {
		name   string
		r      Remote
		reason string
	}{
		{"no pod subnet", Remote{Node: "a", NodeIP: netip.MustParseAddr("192.168.56.20"), VTEPMAC: VTEPMAC("a")}, "not an IPv4 prefix"},
		{"IPv6 pod subnet", Remote{Node: "b", PodCIDR: netip.MustParsePrefix("fd00::/64"), NodeIP: netip.MustParseAddr("192.168.56.21"), VTEPMAC: VTEPMAC("b")}, "not an IPv4 prefix"},
		{"no node address", Remote{Node: "c", PodCIDR: netip.MustParsePrefix("10.244.9.0/24"), VTEPMAC: VTEPMAC("c")}, "not an IPv4 address"},
		{"this node's name", Remote{Node: "node-1", PodCIDR: netip.MustParsePrefix("10.244.8.0/24"), NodeIP: netip.MustParseAddr("192.168.56.22")}, "this node"},
		{"this node's address", Remote{Node: "d", PodCIDR: netip.MustParsePrefix("10.244.7.0/24"), NodeIP: netip.MustParseAddr("192.168.56.11")}, "this node's"},
		{"this node's subnet", Remote{Node: "e", PodCIDR: netip.MustParsePrefix("10.244.0.0/16"), NodeIP: netip.MustParseAddr("192.168.56.23")}, "overlaps this node's 10.244.1.0/24"},
		{"another node's subnet", Remote{Node: "z", PodCIDR: netip.MustParsePrefix("10.244.2.0/24"), NodeIP: netip.MustParseAddr("192.168.56.24"), VTEPMAC: VTEPMAC("z")}, "overlaps node node-2's"},
		{"short MAC", Remote{Node: "f", PodCIDR: netip.MustParsePrefix("10.244.6.0/24"), NodeIP: netip.MustParseAddr("192.168.57.25"), VTEPMAC: net.HardwareAddr{}}, AnnotationVTEPMAC},
	}
	for name, desired := range map[string]desiredFunc{"vxlan": desiredVXLAN, "host-gw": desiredHostGW, "hybrid": desiredHybrid} {
		for _, c := range cases {
			if name == "host-gw" && c.name == "short MAC" {
				continue // host-gw needs no MAC (and refuses this one for its segment)
			}
			t.Run(name+"/"+c.name, func(t *testing.T) {
				got := desired(testNode(), []Remote{good, c.r}, nil)
				if len(got.routes) != 1 || got.routes[0].dst != good.PodCIDR {
					t.Errorf("routes = %+v, want only node-2's", got.routes)
				}
				if reason := got.refused[c.r.Node]; !strings.Contains(reason, c.reason) {
					t.Errorf("refused[%s] = %q, want it to say %q", c.r.Node, reason, c.reason)
				}
				if _, ok := got.refused[good.Node]; ok {
					t.Errorf("node-2 refused: %v", got.refused)
				}
			})
		}
	}
}

// TestDesiredOrderIndependent: the same remotes in any order give the same
// state (the first by name wins a contested subnet, whatever the order).
func TestDesiredOrderIndependent(t *testing.T) {
	a := remote(2, "192.168.56.12", false)
	b := remote(3, "192.168.57.13", false)
	clash := Remote{Node: "node-0", PodCIDR: a.PodCIDR, NodeIP: netip.MustParseAddr("192.168.56.30"), VTEPMAC: VTEPMAC("node-0")}
	one := desiredHybrid(testNode(), []Remote{a, b, clash}, nil)
	two := desiredHybrid(testNode(), []Remote{clash, b, a}, nil)
	if !reflect.DeepEqual(one, two) {
		t.Errorf("order changed the state:\n%+v\n%+v", one, two)
	}
	if _, ok := one.refused["node-2"]; !ok || one.routes[0].gw != clash.NodeIP {
		t.Errorf("node-0 (first by name) should own 10.244.2.0/24: %+v", one)
	}
}

func TestDesiredNoRemotes(t *testing.T) {
	for _, s := range []state{desiredVXLAN(testNode(), nil, nil), desiredHostGW(testNode(), nil, nil), desiredHybrid(testNode(), nil, nil)} {
		if len(s.routes)+len(s.neighs)+len(s.fdb)+len(s.refused) != 0 || s.refused == nil {
			t.Errorf("no remotes: %+v, want empty state with a non-nil refused map", s)
		}
	}
}

func TestVTEPMAC(t *testing.T) {
	seen := map[string]string{}
	for _, name := range []string{"node-1", "node-2", "controlplane", "a", "", "worker-with-a-very-long-name.example.com"} {
		m := VTEPMAC(name)
		if len(m) != 6 {
			t.Fatalf("VTEPMAC(%q) = %s: not 6 bytes", name, m)
		}
		if m[0]&0x02 == 0 || m[0]&0x01 != 0 {
			t.Errorf("VTEPMAC(%q) = %s: want locally administered (bit 1) unicast (bit 0 clear)", name, m)
		}
		if again := VTEPMAC(name); again.String() != m.String() {
			t.Errorf("VTEPMAC(%q) not stable: %s then %s", name, m, again)
		}
		if other, dup := seen[m.String()]; dup {
			t.Errorf("VTEPMAC(%q) = VTEPMAC(%q) = %s", name, other, m)
		}
		seen[m.String()] = name
	}
	// Pinned: a change would strand every peer's FDB and neighbour entries
	// across an upgrade.
	if got := VTEPMAC("node-1").String(); got != pinnedNode1MAC {
		t.Errorf("VTEPMAC(node-1) = %s, was %s: the derivation changed", got, pinnedNode1MAC)
	}
}

func TestCheckLocal(t *testing.T) {
	if err := checkLocal(testLocal); err != nil {
		t.Fatal(err)
	}
	for _, l := range []Local{
		{PodCIDR: testLocal.PodCIDR, NodeIP: testLocal.NodeIP, Link: "eth1"},
		{Node: "n", NodeIP: testLocal.NodeIP, Link: "eth1"},
		{Node: "n", PodCIDR: testLocal.PodCIDR, Link: "eth1"},
		{Node: "n", PodCIDR: testLocal.PodCIDR, NodeIP: testLocal.NodeIP},
	} {
		if err := checkLocal(l); err == nil {
			t.Errorf("checkLocal(%+v): no error", l)
		}
	}
}

func assertState(t *testing.T, got, want state) {
	t.Helper()
	if !reflect.DeepEqual(got.routes, want.routes) {
		t.Errorf("routes:\n got %+v\nwant %+v", got.routes, want.routes)
	}
	if !reflect.DeepEqual(got.neighs, want.neighs) {
		t.Errorf("neighbours:\n got %+v\nwant %+v", got.neighs, want.neighs)
	}
	if !reflect.DeepEqual(got.fdb, want.fdb) {
		t.Errorf("fdb:\n got %+v\nwant %+v", got.fdb, want.fdb)
	}
}

// TestDesiredForeign: a remote whose pod subnet a foreign route already
// goes to is refused, with a reason naming the route and the fix, and
// gets nothing (no route, neighbour or FDB entry); the others are
// programmed. A remote refused for a reason of its own keeps that reason:
// one claiming this node's subnet is not told to delete cni0's route.
func TestDesiredForeign(t *testing.T) {
	n2, n3, n5 := remote(2, "192.168.56.12", false), remote(3, "192.168.56.13", false), remote(5, "192.168.56.15", false)
	n2.PodCIDR = netip.MustParsePrefix("10.244.2.7/24") // as published, unmasked
	self := Remote{Node: "x", PodCIDR: testLocal.PodCIDR, NodeIP: netip.MustParseAddr("192.168.56.30"), VTEPMAC: VTEPMAC("x")}
	foreign := foreignRoutes{
		netip.MustParsePrefix("10.244.2.0/24"): {desc: "via 192.168.56.99 dev eth1 proto boot"},
		netip.MustParsePrefix("10.244.5.0/24"): {desc: "dev docker1 proto kernel", connected: true},
		netip.MustParsePrefix("10.244.1.0/24"): {desc: "dev cni0 proto kernel", connected: true},
	}
	const reason2 = "a route to 10.244.2.0/24 not made by podnet exists (via 192.168.56.99 dev eth1 proto boot); delete it to let podnet route node-2"
	const reason5 = "a route to 10.244.5.0/24 not made by podnet exists (dev docker1 proto kernel); remove the address it is for to let podnet route node-5"
	for name, desired := range map[string]desiredFunc{"vxlan": desiredVXLAN, "host-gw": desiredHostGW, "hybrid": desiredHybrid} {
		t.Run(name, func(t *testing.T) {
			got := desired(testNode(), []Remote{n2, n3, n5, self}, foreign)
			if len(got.routes) != 1 || got.routes[0].dst != n3.PodCIDR {
				t.Errorf("routes = %+v, want only node-3's", got.routes)
			}
			for _, n := range got.neighs {
				if n.ip != n3.PodCIDR.Addr() {
					t.Errorf("neighbour %+v for a refused remote", n)
				}
			}
			for _, e := range got.fdb {
				if e.dst != n3.NodeIP {
					t.Errorf("FDB entry %+v for a refused remote", e)
				}
			}
			if got.refused["node-2"] != reason2 {
				t.Errorf("refused[node-2] = %q\nwant %q", got.refused["node-2"], reason2)
			}
			if got.refused["node-5"] != reason5 {
				t.Errorf("refused[node-5] = %q\nwant %q", got.refused["node-5"], reason5)
			}
			if r := got.refused["x"]; !strings.Contains(r, "overlaps this node's") {
				t.Errorf("refused[x] = %q, want its own reason (this node's subnet)", r)
			}
			if len(got.refused) != 3 {
				t.Errorf("refused = %v, want node-2, node-5 and x", got.refused)
			}
		})
	}
	// Without the foreign routes, node-2 and node-5 are routed.
	if got := desiredHostGW(testNode(), []Remote{n2, n3, n5}, nil); len(got.routes) != 3 || len(got.refused) != 0 {
		t.Errorf("no foreign routes: %+v", got)
	}
}

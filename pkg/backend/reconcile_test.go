package backend

import (
	"errors"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Unit tests of reconcile on fakeDataplane (apply_test.go): routes podnet
// did not make, and the VTEP an overlay backend left behind. No root.

// Links of the fake node: eth1, cni0 and podnet's VTEP.
var (
	testEth1  = &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "eth1", Index: testUnderlay}}
	testCNI0  = &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "cni0", Index: 5}}
	testVTEPs = &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: VXLANDevice, Index: testVTEP}, VxlanId: VNI, Port: VXLANPort, SrcAddr: net.IPv4(192, 168, 56, 11), VtepDevIndex: testUnderlay}
)

func mustRoute(dst, gw string, link int, proto netlink.RouteProtocol) netlink.Route {
	r := netlink.Route{Dst: ipNet(netip.MustParsePrefix(dst)), LinkIndex: link, Protocol: proto}
	if gw != "" {
		r.Gw = net.ParseIP(gw).To4()
	}
	return r
}

// foreignOnly is every route of the fake that podnet did not make.
func foreignOnly(f *fakeDataplane) []netlink.Route {
	var out []netlink.Route
	for _, r := range f.routes {
		if r.Protocol != RouteProtocol {
			out = append(out, r)
		}
	}
	return out
}

func hostGWNode() node {
	n := testNode()
	n.vtep = 0
	return n
}

// TestReconcileForeignRoute: a route podnet did not make, to exactly a
// remote's pod subnet, is neither overwritten nor deleted; that remote is
// refused naming it, the others are programmed, and once the route is gone
// the next Sync programs the remote. A shorter foreign prefix, and routes
// to the same subnet in other tables (the kernel's local table, a policy
// routing table), conflict with nothing.
func TestReconcileForeignRoute(t *testing.T) {
	n2, n3 := remote(2, "192.168.56.12", false), remote(3, "192.168.56.13", false)
	const reason = "a route to 10.244.2.0/24 not made by podnet exists (via 192.168.56.99 dev eth1 proto boot); delete it to let podnet route node-2"
	exact := mustRoute("10.244.2.0/24", "192.168.56.99", testUnderlay, unix.RTPROT_BOOT)
	shorter := mustRoute("10.244.0.0/16", "192.168.56.99", testUnderlay, unix.RTPROT_STATIC)
	local := mustRoute("10.244.3.0/24", "", 1, unix.RTPROT_KERNEL)
	local.Table, local.Type = unix.RT_TABLE_LOCAL, unix.RTN_LOCAL
	policy := mustRoute("10.244.3.0/24", "192.168.56.99", testUnderlay, unix.RTPROT_STATIC)
	policy.Table = 100
	connected := mustRoute("10.244.1.0/24", "", testCNI0.Index, unix.RTPROT_KERNEL)
	for _, tc := range []struct {
		name    string
		n       node
		desired desiredFunc
		added   int // for node-3, then node-2
	}{
		{"vxlan", testNode(), desiredVXLAN, 3},
		{"host-gw", hostGWNode(), desiredHostGW, 1},
		{"hybrid", testNode(), desiredHybrid, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeDataplane{routes: []netlink.Route{exact, shorter, local, policy, connected}, links: []netlink.Link{testEth1, testCNI0}}
			if tc.n.vtep != 0 {
				f.links = append(f.links, testVTEPs)
			}
			before, links := foreignOnly(f), slices.Clone(f.links)
			res, err := reconcile(f, tc.n, []Remote{n2, n3}, tc.desired)
			if err != nil || res.Added != tc.added || res.Removed != 0 {
				t.Fatalf("reconcile: %+v, %v; want %d added (node-3)", res, err, tc.added)
			}
			if len(res.Refused) != 1 || res.Refused["node-2"] != reason {
				t.Errorf("refused = %v\nwant node-2: %q", res.Refused, reason)
			}
			for _, c := range f.calls {
				if strings.Contains(c, "10.244.2.") || strings.Contains(c, VTEPMAC("node-2").String()) {
					t.Errorf("%s: touches node-2, which is refused", c)
				}
			}
			// Route.String omits the protocol and metric: compare fields.
			if after := foreignOnly(f); !reflect.DeepEqual(after, before) || !reflect.DeepEqual(f.links, links) {
				t.Errorf("foreign routes or links changed:\n%+v\nwas\n%+v", after, before)
			}
			// Stable: nothing to do while the route is there.
			f.calls = nil
			if res, err := reconcile(f, tc.n, []Remote{n2, n3}, tc.desired); err != nil || len(f.calls) != 0 || res.Refused["node-2"] != reason {
				t.Errorf("second reconcile: %+v, %v, %v", res, err, f.calls)
			}
			// Its author deletes it: node-2 is programmed.
			f.routes = slices.DeleteFunc(f.routes, func(r netlink.Route) bool {
				return r.Dst.String() == exact.Dst.String() && tableOf(r) == unix.RT_TABLE_MAIN
			})
			res, err = reconcile(f, tc.n, []Remote{n2, n3}, tc.desired)
			if err != nil || res.Added != tc.added || len(res.Refused) != 0 {
				t.Errorf("after the foreign route went: %+v, %v; want node-2 programmed", res, err)
			}
			want := tc.desired(tc.n, []Remote{n2, n3}, nil)
			again := &fakeDataplane{}
			again.load(want)
			var podnet, wantRoutes []string
			for _, r := range f.routes {
				if r.Protocol == RouteProtocol {
					podnet = append(podnet, r.String())
				}
			}
			for _, r := range again.routes {
				wantRoutes = append(wantRoutes, r.String())
			}
			slices.Sort(podnet)
			slices.Sort(wantRoutes)
			if !slices.Equal(podnet, wantRoutes) {
				t.Errorf("podnet routes %v\nwant %v", podnet, wantRoutes)
			}
		})
	}
}

// TestReconcileForeignTakesOver: an operator replaces podnet's route to
// node-2 (`ip route replace`, proto static), or adds one beside it with a
// metric. podnet does not fight back: node-2 is refused, podnet's own
// objects for it (its route, neighbour, FDB entry) are deleted as stale,
// and the foreign route stays as it is.
func TestReconcileForeignTakesOver(t *testing.T) {
	n2, n3 := remote(2, "192.168.56.12", false), remote(3, "192.168.56.13", false)
	for _, tc := range []struct {
		name    string
		foreign netlink.Route
		replace bool // the foreign route replaced podnet's
		removed int
		desc    string
	}{
		{"replaced", mustRoute("10.244.2.0/24", "192.168.56.99", testUnderlay, unix.RTPROT_STATIC), true, 2, "via 192.168.56.99 dev eth1 proto static"},
		{"beside with a metric", func() netlink.Route {
			r := mustRoute("10.244.2.0/24", "192.168.56.99", testUnderlay, unix.RTPROT_STATIC)
			r.Priority = 100
			return r
		}(), false, 3, "via 192.168.56.99 dev eth1 proto static metric 100"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeDataplane{links: []netlink.Link{testEth1, testVTEPs}}
			f.load(desiredVXLAN(testNode(), []Remote{n2, n3}, nil))
			if tc.replace {
				if err := f.RouteReplace(&tc.foreign); err != nil {
					t.Fatal(err)
				}
			} else {
				f.routes = append(f.routes, tc.foreign)
			}
			f.calls = nil
			res, err := reconcile(f, testNode(), []Remote{n2, n3}, desiredVXLAN)
			if err != nil || res.Added != 0 || res.Removed != tc.removed {
				t.Fatalf("reconcile: %+v, %v; want 0 added, %d removed (node-2's objects)", res, err, tc.removed)
			}
			if r := res.Refused["node-2"]; !strings.Contains(r, "("+tc.desc+")") {
				t.Errorf("refused[node-2] = %q, want it to name %q", r, tc.desc)
			}
			if fo := foreignOnly(f); len(fo) != 1 || !reflect.DeepEqual(fo[0], tc.foreign) {
				t.Errorf("foreign routes %v, want only %v, unchanged", fo, tc.foreign)
			}
			for _, c := range f.calls {
				if !strings.HasPrefix(c, "delete") || strings.Contains(c, "10.244.3.") {
					t.Errorf("%s: want only deletes of node-2's objects", c)
				}
			}
		})
	}
}

// TestApplyNeverOverwritesForeign: a foreign route created after
// listForeign looked (so the state still wants its destination) survives:
// a route podnet does not hold is added, which the kernel refuses, never
// replaced; the error names it, and stale objects are kept.
func TestApplyNeverOverwritesForeign(t *testing.T) {
	n2, n3, n4 := remote(2, "192.168.56.12", true), remote(3, "192.168.56.13", true), remote(4, "192.168.56.14", true)
	foreign := mustRoute("10.244.2.0/24", "192.168.56.99", testUnderlay, unix.RTPROT_BOOT)
	f := &fakeDataplane{routes: []netlink.Route{foreign}}
	f.load(desiredHostGW(testNode(), []Remote{n4}, nil))
	res, err := apply(f, 0, desiredHostGW(testNode(), []Remote{n2, n3}, nil))
	if !errors.Is(err, unix.EEXIST) || !strings.Contains(err.Error(), "add route 10.244.2.0/24 via 192.168.56.12: a route to 10.244.2.0/24 not made by podnet is in the way") {
		t.Fatalf("err = %v", err)
	}
	if res.Added != 1 || res.Removed != 0 || len(f.routes) != 3 || !reflect.DeepEqual(f.routes[0], foreign) {
		t.Errorf("%+v, routes %v: want the foreign route as it was, node-3's added, node-4's kept", res, f.routes)
	}
	for _, c := range f.calls {
		if strings.HasPrefix(c, "replace") {
			t.Errorf("%s: podnet holds no route there to replace", c)
		}
	}
}

func TestDescribeRoute(t *testing.T) {
	f := &fakeDataplane{links: []netlink.Link{testEth1, testCNI0}}
	black := mustRoute("10.244.2.0/24", "", 0, unix.RTPROT_STATIC)
	black.Type = unix.RTN_BLACKHOLE
	multi := mustRoute("10.244.2.0/24", "", 0, unix.RTPROT_BIRD)
	multi.MultiPath = []*netlink.NexthopInfo{{LinkIndex: testUnderlay, Gw: net.IPv4(192, 168, 56, 98)}, {LinkIndex: 42, Gw: net.IPv4(192, 168, 56, 97)}}
	metric := mustRoute("10.244.2.0/24", "", testCNI0.Index, unix.RTPROT_KERNEL)
	metric.Priority = 425
	for _, tc := range []struct {
		r    netlink.Route
		want string
	}{
		{mustRoute("10.244.2.0/24", "192.168.56.99", testUnderlay, unix.RTPROT_BOOT), "via 192.168.56.99 dev eth1 proto boot"},
		{mustRoute("10.244.2.0/24", "10.244.2.0", testVTEP, 200), "via 10.244.2.0 dev if7 proto 200"},
		{black, "blackhole proto static"},
		{multi, "nexthop via 192.168.56.98 dev eth1 nexthop via 192.168.56.97 dev if42 proto bird"},
		{metric, "dev cni0 proto kernel metric 425"},
	} {
		if got := describeRoute(f, tc.r); got != tc.want {
			t.Errorf("describeRoute = %q, want %q", got, tc.want)
		}
	}
}

// TestListForeign: only main-table routes of another protocol to exactly
// a remote's pod subnet; nothing is listed without a remote.
func TestListForeign(t *testing.T) {
	n2, n3 := remote(2, "192.168.56.12", false), remote(3, "192.168.56.13", false)
	inOther := mustRoute("10.244.3.0/24", "192.168.56.99", testUnderlay, unix.RTPROT_STATIC)
	inOther.Table = 100
	connected := mustRoute("10.244.2.0/24", "", testCNI0.Index, unix.RTPROT_KERNEL)
	f := &fakeDataplane{links: []netlink.Link{testEth1, testCNI0}, routes: []netlink.Route{
		connected, inOther,
		*route{dst: n3.PodCIDR, gw: n3.NodeIP, link: testUnderlay}.netlink(), // podnet's
		mustRoute("10.244.0.0/16", "192.168.56.99", testUnderlay, unix.RTPROT_STATIC),
		mustRoute("10.244.3.128/25", "192.168.56.99", testUnderlay, unix.RTPROT_STATIC),
	}}
	got, err := listForeign(f, []Remote{n2, n3})
	want := foreignRoutes{n2.PodCIDR: {desc: "dev cni0 proto kernel", connected: true}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("listForeign = %v, %v; want %v", got, err, want)
	}
	if got, err := listForeign(f, nil); err != nil || len(got) != 0 {
		t.Errorf("listForeign without remotes = %v, %v", got, err)
	}
}

// TestReconcileHostGWDropsVTEP: a node that ran vxlan and now runs
// host-gw. The first Sync replaces the route to node-2 in place, deletes
// the route to node-3 (on another segment: refused), and deletes podnet's
// VTEP (and so its neighbours and FDB entries) last. A device named
// podnet.1 that podnet did not make, or any other VXLAN device, stays; and
// the VTEP stays while a write fails (a remote may still use it).
func TestReconcileHostGWDropsVTEP(t *testing.T) {
	n2, n3 := remote(2, "192.168.56.12", false), remote(3, "192.168.57.13", false)
	vxlanState := func(vtep netlink.Link, others ...netlink.Link) *fakeDataplane {
		f := &fakeDataplane{links: append([]netlink.Link{testEth1, vtep}, others...)}
		f.load(desiredVXLAN(testNode(), []Remote{n2, n3}, nil))
		return f
	}
	f := vxlanState(testVTEPs)
	res, err := reconcile(f, hostGWNode(), []Remote{n2, n3}, desiredHostGW)
	if err != nil || res.Added != 1 || res.Removed != 2 {
		t.Fatalf("reconcile: %+v, %v; want node-2's route replaced, node-3's and the VTEP removed", res, err)
	}
	want := []string{"replace route 10.244.2.0/24 via 192.168.56.12 dev 3", "delete route 10.244.3.0/24 via 10.244.3.0", "delete link " + VXLANDevice}
	if !slices.Equal(f.calls, want) {
		t.Errorf("calls:\n%s\nwant\n%s", strings.Join(f.calls, "\n"), strings.Join(want, "\n"))
	}
	if len(f.neighs) != 0 || len(f.links) != 1 || len(f.routes) != 1 || f.routes[0].LinkIndex != testUnderlay {
		t.Errorf("after: links %v, neighs %v, routes %v", f.links, f.neighs, f.routes)
	}
	if res, err := reconcile(f, hostGWNode(), []Remote{n2, n3}, desiredHostGW); err != nil || res.Added+res.Removed != 0 {
		t.Errorf("second reconcile: %+v, %v", res, err)
	}

	notOurs := map[string]netlink.Link{
		"dummy":    &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: VXLANDevice, Index: testVTEP}},
		"VNI 42":   &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: VXLANDevice, Index: testVTEP}, VxlanId: 42, Port: VXLANPort},
		"port":     &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: VXLANDevice, Index: testVTEP}, VxlanId: VNI, Port: 4789},
		"learning": &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: VXLANDevice, Index: testVTEP}, VxlanId: VNI, Port: VXLANPort, Learning: true},
	}
	for name, l := range notOurs {
		t.Run("not ours/"+name, func(t *testing.T) {
			flannel := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "flannel.1", Index: 9}, VxlanId: VNI, Port: VXLANPort}
			f := vxlanState(l, flannel)
			if _, err := reconcile(f, hostGWNode(), []Remote{n2, n3}, desiredHostGW); err != nil {
				t.Fatal(err)
			}
			if len(f.links) != 3 || slices.Contains(f.calls, "delete link "+VXLANDevice) {
				t.Errorf("deleted a device podnet did not make: calls %v, links %v", f.calls, f.links)
			}
		})
	}
	t.Run("write fails", func(t *testing.T) {
		f := vxlanState(testVTEPs)
		f.failReplace = map[string]error{"10.244.2.0/24": unix.ENETUNREACH}
		if _, err := reconcile(f, hostGWNode(), []Remote{n2, n3}, desiredHostGW); !errors.Is(err, unix.ENETUNREACH) {
			t.Fatalf("err = %v", err)
		}
		if len(f.links) != 2 || len(f.routes) != 2 {
			t.Errorf("VTEP or its routes gone after a failed write: calls %v", f.calls)
		}
	})
}

func TestVTEPOurs(t *testing.T) {
	ours := *testVTEPs
	ours.SrcAddr, ours.VtepDevIndex = net.IPv4(192, 168, 56, 42), 99 // another address, another underlay: still podnet's
	if !VTEPOurs(&ours) {
		t.Errorf("podnet's VTEP on another underlay not recognised")
	}
	for name, mod := range map[string]func(*netlink.Vxlan){
		"name":     func(v *netlink.Vxlan) { v.Name = "flannel.1" },
		"VNI":      func(v *netlink.Vxlan) { v.VxlanId = 2 },
		"port":     func(v *netlink.Vxlan) { v.Port = 4789 },
		"learning": func(v *netlink.Vxlan) { v.Learning = true },
	} {
		v := ours
		mod(&v)
		if VTEPOurs(&v) {
			t.Errorf("a VXLAN device with another %s taken for podnet's", name)
		}
	}
	if VTEPOurs(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: VXLANDevice}}) {
		t.Error("a dummy named podnet.1 taken for podnet's VTEP")
	}
}

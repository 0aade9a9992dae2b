package backend

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Unit tests of apply (the diff and its order) on fakeDataplane, and of
// what the backends do without the kernel. No root.

// fakeDataplane is an in-memory kernel for apply: routes (the main table
// unless Table says otherwise), neighbours and FDB entries per link, and
// links, with the kernel's add, replace and delete semantics — a replace
// overwrites whatever route has the destination and metric, whoever made
// it — and a log of every call that changes something.
type fakeDataplane struct {
	routes []netlink.Route
	neighs []netlink.Neigh // FAMILY_V4 and AF_BRIDGE
	links  []netlink.Link
	calls  []string
	lists  int
	// failReplace makes RouteAdd and RouteReplace of these destinations fail.
	failReplace map[string]error
	// interrupt makes the next n NeighList calls return ErrDumpInterrupted.
	interrupt int
}

// tableOf is a route's table, the main one when unset.
func tableOf(r netlink.Route) int {
	if r.Table == 0 {
		return unix.RT_TABLE_MAIN
	}
	return r.Table
}

// sameKey is the kernel's identity of an IPv4 route: table, destination,
// TOS and metric.
func sameKey(a, b netlink.Route) bool {
	return tableOf(a) == tableOf(b) && a.Dst.String() == b.Dst.String() && a.Tos == b.Tos && a.Priority == b.Priority
}

// RouteListFiltered lists the main table, or with RT_FILTER_TABLE the
// filter's table (any when unset), as netlink does.
func (f *fakeDataplane) RouteListFiltered(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	var out []netlink.Route
	for _, r := range f.routes {
		switch {
		case mask&netlink.RT_FILTER_TABLE == 0 && tableOf(r) != unix.RT_TABLE_MAIN:
		case mask&netlink.RT_FILTER_TABLE != 0 && filter.Table != 0 && tableOf(r) != filter.Table:
		case mask&netlink.RT_FILTER_PROTOCOL != 0 && r.Protocol != filter.Protocol:
		default:
			out = append(out, r)
		}
	}
	return out, nil
}

func (f *fakeDataplane) RouteAdd(r *netlink.Route) error {
	f.calls = append(f.calls, fmt.Sprintf("add route %s via %s dev %d", r.Dst, r.Gw, r.LinkIndex))
	if err := f.failReplace[r.Dst.String()]; err != nil {
		return err
	}
	for _, h := range f.routes {
		if sameKey(h, *r) {
			return unix.EEXIST
		}
	}
	f.routes = append(f.routes, *r)
	return nil
}

func (f *fakeDataplane) RouteReplace(r *netlink.Route) error {
	f.calls = append(f.calls, fmt.Sprintf("replace route %s via %s dev %d", r.Dst, r.Gw, r.LinkIndex))
	if err := f.failReplace[r.Dst.String()]; err != nil {
		return err
	}
	for i, h := range f.routes {
		if sameKey(h, *r) {
			f.routes[i] = *r
			return nil
		}
	}
	f.routes = append(f.routes, *r)
	return nil
}

// RouteDel deletes the first route with the key and, where the request
// names them, the gateway and protocol.
func (f *fakeDataplane) RouteDel(r *netlink.Route) error {
	f.calls = append(f.calls, fmt.Sprintf("delete route %s via %s", r.Dst, r.Gw))
	for i, h := range f.routes {
		if sameKey(h, *r) && (r.Gw == nil || h.Gw.Equal(r.Gw)) && (r.Protocol == 0 || h.Protocol == r.Protocol) {
			f.routes = append(f.routes[:i], f.routes[i+1:]...)
			return nil
		}
	}
	return unix.ESRCH
}

func (f *fakeDataplane) LinkByIndex(index int) (netlink.Link, error) {
	for _, l := range f.links {
		if l.Attrs().Index == index {
			return l, nil
		}
	}
	return nil, unix.ENODEV
}

func (f *fakeDataplane) LinkByName(name string) (netlink.Link, error) {
	for _, l := range f.links {
		if l.Attrs().Name == name {
			return l, nil
		}
	}
	return nil, fmt.Errorf("link %s: %w", name, unix.ENODEV)
}

// LinkDel deletes a link and, as the kernel does, its neighbours, FDB
// entries and the routes through it.
func (f *fakeDataplane) LinkDel(l netlink.Link) error {
	f.calls = append(f.calls, "delete link "+l.Attrs().Name)
	idx := l.Attrs().Index
	for i, h := range f.links {
		if h.Attrs().Index == idx {
			f.links = append(f.links[:i], f.links[i+1:]...)
			f.routes = slices.DeleteFunc(f.routes, func(r netlink.Route) bool { return r.LinkIndex == idx })
			f.neighs = slices.DeleteFunc(f.neighs, func(n netlink.Neigh) bool { return n.LinkIndex == idx })
			return nil
		}
	}
	return unix.ENODEV
}

func (f *fakeDataplane) NeighList(link, family int) ([]netlink.Neigh, error) {
	f.lists++
	if f.interrupt > 0 {
		f.interrupt--
		return nil, netlink.ErrDumpInterrupted
	}
	var out []netlink.Neigh
	for _, n := range f.neighs {
		if (link == 0 || n.LinkIndex == link) && n.Family == family {
			out = append(out, n)
		}
	}
	return out, nil
}

// same is the kernel's identity of a neighbour (link and address) or an
// FDB entry (link, MAC and, when the delete names one, destination).
func same(a, b netlink.Neigh, dst bool) bool {
	if a.LinkIndex != b.LinkIndex || a.Family != b.Family {
		return false
	}
	if a.Family == unix.AF_BRIDGE {
		return a.HardwareAddr.String() == b.HardwareAddr.String() && (!dst || a.IP.Equal(b.IP))
	}
	return a.IP.Equal(b.IP)
}

func (f *fakeDataplane) NeighSet(n *netlink.Neigh) error {
	f.calls = append(f.calls, fmt.Sprintf("set %s", describe(*n)))
	for i, h := range f.neighs {
		if same(h, *n, false) {
			f.neighs[i] = *n
			return nil
		}
	}
	f.neighs = append(f.neighs, *n)
	return nil
}

func (f *fakeDataplane) NeighDel(n *netlink.Neigh) error {
	f.calls = append(f.calls, fmt.Sprintf("delete %s", describe(*n)))
	for i, h := range f.neighs {
		if same(h, *n, true) {
			f.neighs = append(f.neighs[:i], f.neighs[i+1:]...)
			return nil
		}
	}
	return unix.ENOENT
}

func describe(n netlink.Neigh) string {
	if n.Family == unix.AF_BRIDGE {
		return fmt.Sprintf("fdb %s dst %s dev %d", n.HardwareAddr, n.IP, n.LinkIndex)
	}
	return fmt.Sprintf("neigh %s lladdr %s dev %d", n.IP, n.HardwareAddr, n.LinkIndex)
}

// load puts s into the fake as the kernel would list it.
func (f *fakeDataplane) load(s state) {
	for _, r := range s.routes {
		f.routes = append(f.routes, *r.netlink())
	}
	for _, n := range s.neighs {
		f.neighs = append(f.neighs, *n.netlink(testVTEP))
	}
	for _, e := range s.fdb {
		f.neighs = append(f.neighs, *e.netlink(testVTEP))
	}
}

// firstDelete is the index of the first delete call (len if none); every
// call before it must be a write.
func firstDelete(calls []string) int {
	for i, c := range calls {
		if strings.HasPrefix(c, "delete") {
			for _, later := range calls[i:] {
				if !strings.HasPrefix(later, "delete") {
					return -1
				}
			}
			return i
		}
	}
	return len(calls)
}

func TestApplyFromEmptyThenIdempotent(t *testing.T) {
	f := &fakeDataplane{}
	want := desiredVXLAN(testNode(), []Remote{remote(2, "192.168.56.12", false), remote(3, "192.168.56.13", false)}, nil)
	res, err := apply(f, testVTEP, want)
	if err != nil || res.Added != 6 || res.Removed != 0 {
		t.Fatalf("first apply: %+v, %v; want 6 added", res, err)
	}
	// In the order a packet uses them: FDB, neighbour, route.
	kinds := ""
	for _, c := range f.calls {
		kinds += strings.Fields(c)[1][:1]
	}
	if kinds != "ffnnrr" {
		t.Errorf("write order %q, want FDB entries, then neighbours, then routes:\n%s", kinds, strings.Join(f.calls, "\n"))
	}
	f.calls = nil
	res, err = apply(f, testVTEP, want)
	if err != nil || res.Added != 0 || res.Removed != 0 || len(f.calls) != 0 {
		t.Errorf("second apply changed something: %+v, %v, %v", res, err, f.calls)
	}
}

// TestApplyStaleLast: a node goes and another comes in one sync; every
// write comes before every delete, and deletes go route, neighbour, FDB.
func TestApplyStaleLast(t *testing.T) {
	n2, n3, n4 := remote(2, "192.168.56.12", false), remote(3, "192.168.56.13", false), remote(4, "192.168.56.14", false)
	f := &fakeDataplane{}
	f.load(desiredVXLAN(testNode(), []Remote{n2, n3}, nil))
	res, err := apply(f, testVTEP, desiredVXLAN(testNode(), []Remote{n2, n4}, nil))
	if err != nil || res.Added != 3 || res.Removed != 3 {
		t.Fatalf("apply: %+v, %v; want 3 added (node-4), 3 removed (node-3)", res, err)
	}
	i := firstDelete(f.calls)
	if i != 3 {
		t.Fatalf("calls (writes must all precede deletes):\n%s", strings.Join(f.calls, "\n"))
	}
	dels := strings.Join(f.calls[i:], "\n")
	for j, w := range []string{"delete route 10.244.3.0/24", "delete neigh 10.244.3.0", "delete fdb " + VTEPMAC("node-3").String() + " dst 192.168.56.13"} {
		if !strings.HasPrefix(f.calls[i+j], w) {
			t.Errorf("delete %d = %q, want %q…; all:\n%s", j, f.calls[i+j], w, dels)
		}
	}
}

// TestApplyOwnsOnlyPodnet: routes of other protocols and neighbours and
// FDB entries on other devices are neither listed for deletion nor
// touched, even when podnet wants nothing; host-gw lists no neighbours.
func TestApplyOwnsOnlyPodnet(t *testing.T) {
	foreignRoute := netlink.Route{Dst: ipNet(netip.MustParsePrefix("10.99.0.0/16")), Gw: net.IPv4(192, 168, 56, 12), LinkIndex: testUnderlay, Protocol: unix.RTPROT_STATIC}
	foreignNeigh := netlink.Neigh{LinkIndex: testUnderlay, Family: netlink.FAMILY_V4, IP: net.IPv4(192, 168, 56, 99), HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, 0x99}, State: netlink.NUD_PERMANENT}
	foreignFDB := netlink.Neigh{LinkIndex: 9, Family: unix.AF_BRIDGE, HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, 0x98}, State: netlink.NUD_PERMANENT}
	for _, tc := range []struct {
		name string
		vtep int
		want state
	}{
		{"vxlan", testVTEP, desiredVXLAN(testNode(), nil, nil)},
		{"host-gw", 0, desiredHostGW(testNode(), nil, nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeDataplane{routes: []netlink.Route{foreignRoute}, neighs: []netlink.Neigh{foreignNeigh, foreignFDB}}
			res, err := apply(f, tc.vtep, tc.want)
			if err != nil || res.Added+res.Removed != 0 || len(f.calls) != 0 {
				t.Errorf("apply touched foreign state: %+v, %v, %v", res, err, f.calls)
			}
			if len(f.routes) != 1 || len(f.neighs) != 2 {
				t.Errorf("foreign state changed: %+v %+v", f.routes, f.neighs)
			}
			if tc.vtep == 0 && f.lists != 0 {
				t.Errorf("host-gw listed neighbours %d times: it has no VTEP", f.lists)
			}
		})
	}
}

// TestApplyReplaceInPlace: a remote whose VTEP MAC, address or next hop
// changed is rewritten in place; nothing it still needs is deleted after.
func TestApplyReplaceInPlace(t *testing.T) {
	n2 := remote(2, "192.168.56.12", false)
	old := n2
	old.VTEPMAC = net.HardwareAddr{0x0e, 0x58, 1, 2, 3, 4}
	old.NodeIP = netip.MustParseAddr("192.168.56.42")
	f := &fakeDataplane{}
	f.load(desiredVXLAN(testNode(), []Remote{old}, nil))
	f.routes[0].Gw = net.IPv4(10, 244, 2, 9) // and a wrong next hop
	res, err := apply(f, testVTEP, desiredVXLAN(testNode(), []Remote{n2}, nil))
	if err != nil {
		t.Fatal(err)
	}
	again := &fakeDataplane{}
	again.load(desiredVXLAN(testNode(), []Remote{n2}, nil))
	if fmt.Sprint(f.routes) != fmt.Sprint(again.routes) || len(f.neighs) != 2 {
		t.Errorf("after apply:\n%v\n%v\nwant\n%v\n%v", f.routes, f.neighs, again.routes, again.neighs)
	}
	for _, c := range f.calls {
		if strings.HasPrefix(c, "delete route") || strings.HasPrefix(c, "delete neigh") {
			t.Errorf("%s: a wanted destination is replaced, never deleted", c)
		}
	}
	if res.Added != 3 || res.Removed != 1 {
		t.Errorf("result %+v, want 3 written, 1 removed (the old MAC's FDB entry)", res)
	}
}

// TestApplyHybridMove: a remote moving from the overlay to a direct route
// gets its new route before its neighbour and FDB entry go.
func TestApplyHybridMove(t *testing.T) {
	n2 := remote(2, "192.168.57.12", false)
	f := &fakeDataplane{}
	f.load(desiredHybrid(testNode(), []Remote{n2}, nil))
	n2.NodeIP = netip.MustParseAddr("192.168.56.12") // now on this segment
	res, err := apply(f, testVTEP, desiredHybrid(testNode(), []Remote{n2}, nil))
	if err != nil || res.Added != 1 || res.Removed != 2 {
		t.Fatalf("%+v, %v; want 1 route written, neighbour and FDB entry removed", res, err)
	}
	want := []string{"replace route 10.244.2.0/24 via 192.168.56.12 dev 3", "delete neigh 10.244.2.0", "delete fdb"}
	for i, w := range want {
		if i >= len(f.calls) || !strings.HasPrefix(f.calls[i], w) {
			t.Fatalf("calls:\n%s\nwant prefixes %q", strings.Join(f.calls, "\n"), want)
		}
	}
}

// TestApplyWriteErrorKeepsStale: one failed write does not stop the
// others, is reported naming the object, and keeps every stale object
// (which might still carry traffic) until a sync succeeds.
func TestApplyWriteErrorKeepsStale(t *testing.T) {
	n2, n3, n4 := remote(2, "192.168.56.12", true), remote(3, "192.168.56.13", true), remote(4, "192.168.56.14", true)
	f := &fakeDataplane{failReplace: map[string]error{"10.244.3.0/24": unix.ENETUNREACH}}
	f.load(desiredHostGW(testNode(), []Remote{n4}, nil))
	res, err := apply(f, 0, desiredHostGW(testNode(), []Remote{n2, n3}, nil))
	if err == nil || !strings.Contains(err.Error(), "add route 10.244.3.0/24 via 192.168.56.13") || !errors.Is(err, unix.ENETUNREACH) {
		t.Fatalf("err = %v", err)
	}
	if res.Added != 1 || res.Removed != 0 || len(f.routes) != 2 {
		t.Errorf("%+v, routes %v: want node-2's added and node-4's kept", res, f.routes)
	}
}

func TestListNeighsRetriesAndRefusesLinkZero(t *testing.T) {
	f := &fakeDataplane{interrupt: 2, neighs: []netlink.Neigh{{LinkIndex: testVTEP, Family: netlink.FAMILY_V4, IP: net.IPv4(10, 244, 2, 0)}}}
	l, err := listNeighs(f, testVTEP, netlink.FAMILY_V4)
	if err != nil || len(l) != 1 || f.lists != 3 {
		t.Errorf("listNeighs = %v, %v after %d lists; want 1 entry after 3", l, err, f.lists)
	}
	f = &fakeDataplane{interrupt: 100}
	if _, err := listNeighs(f, testVTEP, netlink.FAMILY_V4); !errors.Is(err, netlink.ErrDumpInterrupted) || f.lists != maxAttempts {
		t.Errorf("always interrupted: %v after %d lists", err, f.lists)
	}
	// Index 0 would list every device's neighbours.
	f = &fakeDataplane{}
	if _, err := listNeighs(f, 0, netlink.FAMILY_V4); err == nil || f.lists != 0 {
		t.Errorf("link 0: %v, %d lists", err, f.lists)
	}
}

// TestSyncBeforeSetup: without a VTEP index Sync must not guess (index 0
// would make every neighbour on the node look stale); it fails before it
// opens netlink, so this needs no root.
func TestSyncBeforeSetup(t *testing.T) {
	for _, name := range []string{"vxlan", "host-gw", "hybrid"} {
		b, err := New(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Sync([]Remote{remote(2, "192.168.56.12", false)}); !errors.Is(err, errNotSetUp) || !strings.HasPrefix(err.Error(), name+":") {
			t.Errorf("%s: Sync before Setup: %v", name, err)
		}
	}
}

func TestSetupBadLocal(t *testing.T) {
	for _, name := range []string{"vxlan", "host-gw", "hybrid"} {
		b, _ := New(name)
		if _, err := b.Setup(Local{Node: "node-1", Link: "eth1"}); err == nil || !strings.Contains(err.Error(), "pod subnet") {
			t.Errorf("%s: Setup without a pod subnet: %v", name, err)
		}
	}
}

func TestNew(t *testing.T) {
	for name, want := range map[string]Backend{"vxlan": &VXLAN{}, "host-gw": &HostGW{}, "hybrid": &Hybrid{}} {
		b, err := New(name)
		if err != nil || fmt.Sprintf("%T", b) != fmt.Sprintf("%T", want) {
			t.Errorf("New(%q) = %T, %v", name, b, err)
		}
	}
	if _, err := New("bgp-someday"); err == nil || !strings.Contains(err.Error(), "vxlan, host-gw or hybrid") {
		t.Errorf("New(unknown) = %v", err)
	}
}

func TestVTEPAdoptable(t *testing.T) {
	under := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "eth1", Index: testUnderlay, MTU: 1500}}
	want := vtepLink(testLocal, under)
	if want.MTU != 1450 || want.VxlanId != 1 || want.Port != 8472 || want.Learning || !want.UDPCSum || want.HardwareAddr.String() != pinnedNode1MAC {
		t.Errorf("vtepLink = %+v", want)
	}
	have := func(mod func(*netlink.Vxlan)) netlink.Link {
		v := *want
		v.MTU, v.HardwareAddr = 1400, net.HardwareAddr{2, 0, 0, 0, 0, 1} // fixed in place, not by re-creation
		v.SrcAddr = net.IPv4(192, 168, 56, 11)                           // as the kernel gives it back
		if mod != nil {
			mod(&v)
		}
		return &v
	}
	if !vtepAdoptable(have(nil), want) {
		t.Error("a matching VTEP (other MTU and MAC) must be adopted")
	}
	for name, mod := range map[string]func(*netlink.Vxlan){
		"VNI":      func(v *netlink.Vxlan) { v.VxlanId = 2 },
		"port":     func(v *netlink.Vxlan) { v.Port = 4789 },
		"local":    func(v *netlink.Vxlan) { v.SrcAddr = net.IPv4(192, 168, 56, 99) },
		"underlay": func(v *netlink.Vxlan) { v.VtepDevIndex = 99 },
		"learning": func(v *netlink.Vxlan) { v.Learning = true },
	} {
		if vtepAdoptable(have(mod), want) {
			t.Errorf("a VTEP with another %s must be re-created", name)
		}
	}
	if vtepAdoptable(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: VXLANDevice}}, want) {
		t.Error("a non-VXLAN device named podnet.1 must be re-created")
	}
}

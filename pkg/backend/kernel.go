package backend

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// This file makes the kernel hold a desired state: list what podnet owns
// now and the routes others hold to the remotes' pod subnets, compare
// (diffRoutes, diffNeighs, diffFDB: pure), write what is missing or
// different, then delete what is stale.

// dataplane is the part of netlink a Sync uses. netlinksafe.Handle is one;
// the tests have an in-memory fake.
type dataplane interface {
	RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error)
	RouteAdd(route *netlink.Route) error
	RouteReplace(route *netlink.Route) error
	RouteDel(route *netlink.Route) error
	NeighList(linkIndex, family int) ([]netlink.Neigh, error)
	NeighSet(neigh *netlink.Neigh) error
	NeighDel(neigh *netlink.Neigh) error
	LinkByIndex(index int) (netlink.Link, error)
	LinkByName(name string) (netlink.Link, error)
	LinkDel(link netlink.Link) error
}

// maxAttempts bounds retries of a netlink dump the kernel interrupted
// (NLM_F_DUMP_INTR), as netlinksafe does.
const maxAttempts = 5

// syncState opens netlink in the calling thread's namespace and reconciles.
func syncState(n node, remotes []Remote, desired desiredFunc) (Result, error) {
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return Result{}, fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close()
	return reconcile(h, n, remotes, desired)
}

// reconcile is one Sync: it looks for foreign routes to the remotes' pod
// subnets (each refuses its remote), computes the desired state and
// applies it. A node without a VTEP (host-gw) then deletes the VTEP an
// overlay backend left on it — last of all, once every route that pointed
// into it has been replaced or deleted, so that a remote that stays never
// loses its route, not even for the time between Setup and Sync.
func reconcile(dp dataplane, n node, remotes []Remote, desired desiredFunc) (Result, error) {
	foreign, err := listForeign(dp, remotes)
	if err != nil {
		return Result{}, err
	}
	res, err := apply(dp, n.vtep, desired(n, remotes, foreign))
	if err != nil || n.vtep != 0 {
		return res, err
	}
	dropped, err := dropStaleVTEP(dp)
	if dropped {
		res.Removed++
	}
	return res, err
}

// listForeign returns the routes in the main table, not made by podnet,
// whose destination is exactly a remote's pod subnet (see foreignRoutes).
func listForeign(dp dataplane, remotes []Remote) (foreignRoutes, error) {
	wanted := map[netip.Prefix]bool{}
	for _, r := range remotes {
		if r.PodCIDR.IsValid() && r.PodCIDR.Addr().Is4() {
			wanted[r.PodCIDR.Masked()] = true
		}
	}
	if len(wanted) == 0 {
		return nil, nil
	}
	routes, err := dp.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes of the main table: %w", err)
	}
	foreign := foreignRoutes{}
	for _, r := range routes {
		dst := prefixOf(r.Dst)
		if r.Protocol == RouteProtocol || !wanted[dst] || (r.Table != 0 && r.Table != unix.RT_TABLE_MAIN) {
			continue
		}
		if _, seen := foreign[dst]; !seen { // several (other metrics): the first names the conflict
			foreign[dst] = foreignRoute{desc: describeRoute(dp, r), connected: r.Protocol == unix.RTPROT_KERNEL}
		}
	}
	return foreign, nil
}

// describeRoute shows r as `ip route` would, without its destination:
// "via 192.168.56.99 dev eth1 proto boot".
func describeRoute(dp dataplane, r netlink.Route) string {
	var f []string
	if r.Type != 0 && r.Type != unix.RTN_UNICAST {
		f = append(f, routeTypeName(r.Type))
	}
	if r.Gw != nil {
		f = append(f, "via", r.Gw.String())
	}
	if r.LinkIndex > 0 {
		f = append(f, "dev", linkName(dp, r.LinkIndex))
	}
	for _, nh := range r.MultiPath {
		f = append(f, "nexthop")
		if nh.Gw != nil {
			f = append(f, "via", nh.Gw.String())
		}
		if nh.LinkIndex > 0 {
			f = append(f, "dev", linkName(dp, nh.LinkIndex))
		}
	}
	f = append(f, "proto", r.Protocol.String())
	if r.Priority != 0 {
		f = append(f, "metric", strconv.Itoa(r.Priority))
	}
	return strings.Join(f, " ")
}

func routeTypeName(t int) string {
	switch t {
	case unix.RTN_LOCAL:
		return "local"
	case unix.RTN_BROADCAST:
		return "broadcast"
	case unix.RTN_BLACKHOLE:
		return "blackhole"
	case unix.RTN_UNREACHABLE:
		return "unreachable"
	case unix.RTN_PROHIBIT:
		return "prohibit"
	case unix.RTN_THROW:
		return "throw"
	}
	return fmt.Sprintf("type %d", t)
}

// linkName names an interface for a message; its index will do if the
// lookup fails.
func linkName(dp dataplane, index int) string {
	if l, err := dp.LinkByIndex(index); err == nil {
		return l.Attrs().Name
	}
	return fmt.Sprintf("if%d", index)
}

// apply makes podnet's objects in the kernel exactly want: its routes
// (protocol RouteProtocol, main table) and, when vtep is not 0, every
// neighbour and FDB entry on the VTEP (learning is off: all of them are
// podnet's). Nothing else is listed, so nothing else is deleted (and a
// delete names protocol RouteProtocol, which the kernel matches), and a
// route is only ever replaced over podnet's own (routeWrite).
//
// Order matters. Everything wanted is written first, in the order a packet
// uses it (FDB entry, neighbour, route), so that a route never points at a
// VTEP address the kernel cannot resolve, and a remote that stays never
// lacks its route. Stale objects go last, in the reverse order, and only
// when every write succeeded: a remote moving from the overlay to a direct
// route (hybrid) keeps its neighbour and FDB entry until its new route is
// in place.
func apply(dp dataplane, vtep int, want state) (Result, error) {
	res := Result{Refused: want.refused}
	haveRoutes, err := dp.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return res, fmt.Errorf("list podnet routes (proto %d): %w", RouteProtocol, err)
	}
	var haveNeighs, haveFDB []netlink.Neigh
	if vtep != 0 {
		if haveNeighs, err = listNeighs(dp, vtep, netlink.FAMILY_V4); err != nil {
			return res, fmt.Errorf("list neighbours of %s: %w", VXLANDevice, err)
		}
		if haveFDB, err = listNeighs(dp, vtep, unix.AF_BRIDGE); err != nil {
			return res, fmt.Errorf("list fdb of %s: %w", VXLANDevice, err)
		}
	}
	writeRoutes, staleRoutes := diffRoutes(want.routes, haveRoutes)
	writeNeighs, staleNeighs := diffNeighs(want.neighs, haveNeighs)
	writeFDB, staleFDB := diffFDB(want.fdb, haveFDB)

	var errs []error
	for _, e := range writeFDB {
		if err := dp.NeighSet(e.netlink(vtep)); err != nil {
			errs = append(errs, fmt.Errorf("fdb %s dst %s on %s: %w", e.mac, e.dst, VXLANDevice, err))
			continue
		}
		res.Added++
	}
	for _, n := range writeNeighs {
		if err := dp.NeighSet(n.netlink(vtep)); err != nil {
			errs = append(errs, fmt.Errorf("neighbour %s lladdr %s on %s: %w", n.ip, n.mac, VXLANDevice, err))
			continue
		}
		res.Added++
	}
	for _, w := range writeRoutes {
		if err := w.write(dp); err != nil {
			errs = append(errs, err)
			continue
		}
		res.Added++
	}
	if len(errs) > 0 {
		return res, fmt.Errorf("%w (stale objects kept until a sync succeeds)", errors.Join(errs...))
	}

	for _, r := range staleRoutes {
		if err := dp.RouteDel(&r); err != nil {
			if !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("delete stale route %s via %s: %w", prefixOf(r.Dst), r.Gw, err))
			}
			continue
		}
		res.Removed++
	}
	for _, n := range staleNeighs {
		if err := dp.NeighDel(&n); err != nil {
			if !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete stale neighbour %s on %s: %w", n.IP, VXLANDevice, err))
			}
			continue
		}
		res.Removed++
	}
	for _, n := range staleFDB {
		if err := dp.NeighDel(&n); err != nil {
			if !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete stale fdb %s dst %s on %s: %w", n.HardwareAddr, n.IP, VXLANDevice, err))
			}
			continue
		}
		res.Removed++
	}
	return res, errors.Join(errs...)
}

// listNeighs lists the neighbours (FAMILY_V4) or FDB entries (AF_BRIDGE) of
// one link, retrying an interrupted dump. A link index of 0 would list
// every device's, which nobody here may touch.
func listNeighs(dp dataplane, link, family int) ([]netlink.Neigh, error) {
	if link <= 0 {
		return nil, fmt.Errorf("no link index")
	}
	for attempt := 1; ; attempt++ {
		l, err := dp.NeighList(link, family)
		if errors.Is(err, netlink.ErrDumpInterrupted) && attempt < maxAttempts {
			continue
		}
		return l, err
	}
}

// routeWrite is a wanted route and how to write it: over podnet's own
// route to that destination (replace), or where podnet has none (add).
// Only a route podnet made is ever replaced: an add fails (EEXIST) where
// anyone else's route to the destination is, so even a foreign route
// created after listForeign looked is never overwritten.
type routeWrite struct {
	route
	replace bool
}

func (w routeWrite) write(dp dataplane) error {
	if w.replace {
		if err := dp.RouteReplace(w.netlink()); err != nil {
			return fmt.Errorf("replace route %s via %s: %w", w.dst, w.gw, err)
		}
		return nil
	}
	err := dp.RouteAdd(w.netlink())
	if errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add route %s via %s: a route to %s not made by podnet is in the way (the next sync names it): %w", w.dst, w.gw, w.dst, err)
	}
	if err != nil {
		return fmt.Errorf("add route %s via %s: %w", w.dst, w.gw, err)
	}
	return nil
}

// diffRoutes returns the wanted routes the kernel lacks or holds otherwise,
// and podnet's routes (have) that nothing wants. A podnet route to a wanted
// destination is replaced in place, so it is not stale; a podnet route with
// a metric is, since podnet never writes one.
func diffRoutes(want []route, have []netlink.Route) (write []routeWrite, stale []netlink.Route) {
	current := map[netip.Prefix]netlink.Route{}
	for _, h := range have {
		if h.Priority == 0 {
			current[prefixOf(h.Dst)] = h
		}
	}
	wanted := map[netip.Prefix]bool{}
	for _, w := range want {
		wanted[w.dst] = true
		h, ok := current[w.dst]
		if ok && w.matches(h) {
			continue
		}
		write = append(write, routeWrite{route: w, replace: ok})
	}
	for _, h := range have {
		if h.Priority != 0 || !wanted[prefixOf(h.Dst)] {
			stale = append(stale, h)
		}
	}
	return write, stale
}

// diffNeighs compares the VTEP's neighbours. Neighbours are keyed by
// address alone (a delete would remove the entry whatever its MAC), so an
// address that is wanted is rewritten in place, never deleted.
func diffNeighs(want []neigh, have []netlink.Neigh) (write []neigh, stale []netlink.Neigh) {
	current := map[netip.Addr]netlink.Neigh{}
	for _, h := range have {
		current[addrOf(h.IP)] = h
	}
	wanted := map[netip.Addr]bool{}
	for _, w := range want {
		wanted[w.ip] = true
		if h, ok := current[w.ip]; ok && h.State&netlink.NUD_PERMANENT != 0 && macEqual(h.HardwareAddr, w.mac) {
			continue
		}
		write = append(write, w)
	}
	for _, h := range have {
		if !wanted[addrOf(h.IP)] {
			stale = append(stale, h)
		}
	}
	return write, stale
}

// diffFDB compares the VTEP's FDB. An entry is a MAC and a destination
// (a VXLAN FDB entry can have several, listed one by one, and a delete
// names one), so anything but an exact match is stale; a wanted MAC whose
// destination changed is rewritten (NeighSet replaces it) and its old
// destination, if still there, deleted.
func diffFDB(want []fdbEntry, have []netlink.Neigh) (write []fdbEntry, stale []netlink.Neigh) {
	type key struct {
		mac string
		dst netip.Addr
	}
	current := map[key]netlink.Neigh{}
	for _, h := range have {
		current[key{h.HardwareAddr.String(), addrOf(h.IP)}] = h
	}
	wanted := map[key]bool{}
	for _, w := range want {
		k := key{w.mac.String(), w.dst}
		wanted[k] = true
		if h, ok := current[k]; ok && h.State&netlink.NUD_PERMANENT != 0 {
			continue
		}
		write = append(write, w)
	}
	for _, h := range have {
		if !wanted[key{h.HardwareAddr.String(), addrOf(h.IP)}] {
			stale = append(stale, h)
		}
	}
	return write, stale
}

// matches reports whether the kernel route h already is r.
func (r route) matches(h netlink.Route) bool {
	onlink := h.Flags&int(netlink.FLAG_ONLINK) != 0
	return h.LinkIndex == r.link && addrOf(h.Gw) == r.gw && onlink == r.onlink && len(h.MultiPath) == 0
}

func (r route) netlink() *netlink.Route {
	nr := &netlink.Route{LinkIndex: r.link, Dst: ipNet(r.dst), Gw: r.gw.AsSlice(), Protocol: RouteProtocol}
	if r.onlink {
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return nr
}

func (n neigh) netlink(vtep int) *netlink.Neigh {
	return &netlink.Neigh{LinkIndex: vtep, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		Type: unix.RTN_UNICAST, IP: n.ip.AsSlice(), HardwareAddr: n.mac}
}

func (e fdbEntry) netlink(vtep int) *netlink.Neigh {
	return &netlink.Neigh{LinkIndex: vtep, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
		Flags: netlink.NTF_SELF, IP: e.dst.AsSlice(), HardwareAddr: e.mac}
}

func macEqual(a, b net.HardwareAddr) bool { return a.String() == b.String() }

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(addrOf(n.IP), ones)
}

// underlay looks up the underlay interface of local and the network
// (segment) of local.NodeIP on it.
func underlay(h netlinksafe.Handle, local Local) (netlink.Link, netip.Prefix, error) {
	l, err := h.LinkByName(local.Link)
	if err != nil {
		return nil, netip.Prefix{}, fmt.Errorf("look up underlay %s: %w", local.Link, err)
	}
	var addrs []netlink.Addr
	for attempt := 1; ; attempt++ {
		addrs, err = h.AddrList(l, netlink.FAMILY_V4)
		if !errors.Is(err, netlink.ErrDumpInterrupted) || attempt == maxAttempts {
			break
		}
	}
	if err != nil {
		return nil, netip.Prefix{}, fmt.Errorf("list addresses of %s: %w", local.Link, err)
	}
	for _, a := range addrs {
		if p := prefixOf(a.IPNet); p.Addr() == local.NodeIP {
			return l, p.Masked(), nil
		}
	}
	return nil, netip.Prefix{}, fmt.Errorf("underlay %s does not hold the node address %s", local.Link, local.NodeIP)
}

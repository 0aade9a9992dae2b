package podnetd

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/pkg/backend"
	"github.com/podnet/podnet/pkg/wire"
)

// cleanupRoutes deletes every route carrying podnet's protocol number, in
// every table and both families: the number is podnet's mark, so each such
// route is podnet's wherever it is.
func cleanupRoutes(h netlinksafe.Handle, rep *CleanupReport) error {
	var errs []error
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := h.RouteListFiltered(fam, &netlink.Route{Protocol: backend.RouteProtocol, Table: unix.RT_TABLE_UNSPEC},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil {
			errs = append(errs, fmt.Errorf("list routes of proto %d: %w", backend.RouteProtocol, err))
			continue
		}
		for _, r := range routes {
			desc := describeCleanupRoute(h, r)
			if err := h.RouteDel(&r); err != nil {
				if !errors.Is(err, unix.ESRCH) {
					errs = append(errs, fmt.Errorf("delete route %s: %w", desc, err))
				}
				continue
			}
			rep.removed("route %s", desc)
		}
	}
	return errors.Join(errs...)
}

// describeCleanupRoute shows a route as `ip route` would, with its table.
func describeCleanupRoute(h netlinksafe.Handle, r netlink.Route) string {
	f := []string{"default"}
	if r.Dst != nil {
		f[0] = r.Dst.String()
	}
	if r.Gw != nil {
		f = append(f, "via", r.Gw.String())
	}
	if r.LinkIndex > 0 {
		name := fmt.Sprintf("if%d", r.LinkIndex)
		if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
			name = l.Attrs().Name
		}
		f = append(f, "dev", name)
	}
	f = append(f, "proto", fmt.Sprint(int(r.Protocol)))
	switch r.Table {
	case unix.RT_TABLE_MAIN, 0:
		f = append(f, "table main")
	default:
		f = append(f, "table", fmt.Sprint(r.Table))
	}
	return strings.Join(f, " ")
}

// cleanupVTEP deletes the VXLAN device podnet.1 if it is the one podnet's
// backends make (VNI 1, port 8472, learning off: backend.VTEPOurs, the
// backends' own test before they delete a stale VTEP); its neighbour and
// FDB entries go with it.
func cleanupVTEP(h netlinksafe.Handle, rep *CleanupReport) error {
	l, err := h.LinkByName(backend.VXLANDevice)
	var nf netlink.LinkNotFoundError
	switch {
	case errors.As(err, &nf) || errors.Is(err, unix.ENODEV):
		return nil
	case err != nil:
		return fmt.Errorf("look up %s: %w", backend.VXLANDevice, err)
	}
	if !backend.VTEPOurs(l) {
		rep.kept("device %s: not the VTEP podnet makes (a %s, not VXLAN with VNI %d, port %d, learning off); remove it by hand if it is podnet's",
			backend.VXLANDevice, l.Type(), backend.VNI, backend.VXLANPort)
		return nil
	}
	if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", backend.VXLANDevice, err)
	}
	rep.removed("VXLAN device %s (VNI %d, port %d) with its neighbour and FDB entries", backend.VXLANDevice, backend.VNI, backend.VXLANPort)
	return nil
}

// cleanupPodState removes the bridge and the reservation store where no
// pod is left, and returns the pods that are (their host veths and live
// reservations), for the plugin binary's decision.
func cleanupPodState(h netlinksafe.Handle, cfg CleanupConfig, nw podnetNetwork, rep *CleanupReport) ([]string, error) {
	links, err := h.LinkList()
	if err != nil {
		rep.kept("bridge %s and reservation store: the links could not be listed, so no pod is known to be gone", nw.Bridge)
		return sortedValues(unknownPods(err)), fmt.Errorf("list links: %w", err)
	}
	names := map[string]bool{}
	pods := map[string]string{} // host veth (or reservation) -> what to call it
	for _, l := range links {
		names[l.Attrs().Name] = true
		if l.Type() == "veth" && l.Attrs().Group == wire.Group(nw.Name) {
			pods[l.Attrs().Name] = "veth " + l.Attrs().Name
		}
	}
	errs := []error{cleanupBridge(h, links, nw.Bridge, rep)}
	live, err := cleanupStore(cfg, nw, names, rep)
	errs = append(errs, err)
	for k, v := range live {
		pods[k] = v
	}
	return sortedValues(pods), errors.Join(errs...)
}

// cleanupBridge deletes the pod bridge if no port is left on it and it is
// the one podnet's plugin made: a bridge of that name whose MAC is the
// plugin's gateway MAC for one of its addresses (wire.GatewayMAC). A
// bridge with ports keeps its pods connected on this node, so it stays.
func cleanupBridge(h netlinksafe.Handle, links []netlink.Link, name string, rep *CleanupReport) error {
	var br netlink.Link
	for _, l := range links {
		if l.Attrs().Name == name {
			br = l
		}
	}
	if br == nil {
		return nil
	}
	if br.Type() != "bridge" {
		rep.kept("%s: a %s, not the bridge podnet's plugin makes", name, br.Type())
		return nil
	}
	var ports []string
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			ports = append(ports, l.Attrs().Name)
		}
	}
	if len(ports) > 0 {
		sort.Strings(ports)
		rep.kept("bridge %s: %d ports still attached (%s): the pods behind them keep their addresses and reach each other here, "+
			"but no longer other nodes; delete them (kubectl drain the node) and run the cleanup again", name, len(ports), strings.Join(ports, ", "))
		return nil
	}
	ours, err := bridgeOurs(h, br)
	if err != nil {
		return err
	}
	if !ours {
		rep.kept("bridge %s: its MAC %s is not the one podnet's plugin gives it (0a:58 and its gateway address); `ip link del %s` if it is podnet's",
			name, br.Attrs().HardwareAddr, name)
		return nil
	}
	if err := h.LinkDel(br); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete bridge %s: %w", name, err)
	}
	rep.removed("bridge %s (no ports left)", name)
	return nil
}

// bridgeOurs says whether br carries podnet's gateway MAC for one of its
// addresses.
func bridgeOurs(h netlinksafe.Handle, br netlink.Link) (bool, error) {
	var addrs []netlink.Addr
	var err error
	for range 5 {
		if addrs, err = h.AddrList(br, netlink.FAMILY_ALL); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return false, fmt.Errorf("list addresses of %s: %w", br.Attrs().Name, err)
	}
	for _, a := range addrs {
		p, ok := wire.PrefixOf(a.IPNet)
		if ok && wire.GatewayMAC([]netip.Prefix{p}).String() == br.Attrs().HardwareAddr.String() {
			return true, nil
		}
	}
	return false, nil
}

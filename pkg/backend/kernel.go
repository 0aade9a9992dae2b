package backend

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	a, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

// linkAddr returns the link's first IPv4 prefix (its segment).
func linkAddr(h netlinksafe.Handle, l netlink.Link, ip netip.Addr) (netip.Prefix, error) {
	addrs, err := h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
	}
	for _, a := range addrs {
		if p := prefixOf(a.IPNet); p.Addr() == ip {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("%s does not hold %s", l.Attrs().Name, ip)
}

// syncRoutes makes podnet's routes exactly want (keyed by destination):
// replace every wanted route first, then delete podnet routes no longer
// wanted — so traffic to a remaining node never lacks a route.
func syncRoutes(h netlinksafe.Handle, want map[netip.Prefix]*netlink.Route) (added, removed int, err error) {
	have, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return 0, 0, fmt.Errorf("list podnet routes: %w", err)
	}
	current := map[netip.Prefix]netlink.Route{}
	for _, r := range have {
		current[prefixOf(r.Dst)] = r
	}
	for dst, r := range want {
		r.Protocol = RouteProtocol
		if c, ok := current[dst]; ok && sameRoute(c, *r) {
			continue
		}
		if err := h.RouteReplace(r); err != nil {
			return added, removed, fmt.Errorf("add route %s via %s: %w", dst, r.Gw, err)
		}
		added++
	}
	for dst, r := range current {
		if _, ok := want[dst]; ok {
			continue
		}
		if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return added, removed, fmt.Errorf("delete stale route %s: %w", dst, err)
		}
		removed++
	}
	return added, removed, nil
}

func sameRoute(a, b netlink.Route) bool {
	return a.LinkIndex == b.LinkIndex && a.Gw.Equal(b.Gw) && a.Flags&int(netlink.FLAG_ONLINK) == b.Flags&int(netlink.FLAG_ONLINK)
}

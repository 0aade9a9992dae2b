package wire

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrDrift wraps every difference Verify finds between what is and what
// should be.
var ErrDrift = errors.New("attachment drifted")

func drift(format string, a ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, a...), ErrDrift)
}

// Verify checks that the attachment p is in place as Attach made it: the pod
// interface with podMAC (the MAC the runtime was given), MTU, addresses and
// routes; the host end on the bridge and peered with the pod interface.
func (Netlink) Verify(p Pod, podMAC net.HardwareAddr) error {
	podNS, err := openNetNS(p.NetNS)
	if err != nil {
		return err
	}
	defer podNS.Close()
	h, err := netlinksafe.NewHandleAt(netns.NsHandle(podNS.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink in %s: %w", p.NetNS, err)
	}
	defer h.Close()
	pl, err := h.LinkByName(p.IfName)
	if err != nil {
		return drift("interface %s is missing from %s", p.IfName, p.NetNS)
	}
	pa := pl.Attrs()
	if pl.Type() != "veth" {
		return drift("%s in %s is a %s, not a veth", p.IfName, p.NetNS, pl.Type())
	}
	if podMAC != nil && !bytes.Equal(pa.HardwareAddr, podMAC) {
		return drift("%s has MAC %s, expected %s", p.IfName, pa.HardwareAddr, podMAC)
	}
	if pa.MTU != p.MTU {
		return drift("%s has MTU %d, expected %d", p.IfName, pa.MTU, p.MTU)
	}
	if pa.Flags&net.FlagUp == 0 {
		return drift("%s in %s is down", p.IfName, p.NetNS)
	}
	addrs, err := addrList(h, pl)
	if err != nil {
		return fmt.Errorf("list addresses of %s in %s: %w", p.IfName, p.NetNS, err)
	}
	have := map[netip.Prefix]bool{}
	for _, a := range addrs {
		if pf, ok := PrefixOf(a.IPNet); ok {
			have[pf] = true
		}
	}
	for _, want := range p.Addrs {
		if !have[want] {
			return drift("%s in %s lacks address %s", p.IfName, p.NetNS, want)
		}
	}
	routes, err := h.RouteList(pl, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list routes in %s: %w", p.NetNS, err)
	}
	for _, want := range p.Routes {
		if !hasRoute(routes, want) {
			gw := "on-link"
			if want.Gw.IsValid() {
				gw = "via " + want.Gw.String()
			}
			return drift("route %s %s is missing in %s", want.Dst, gw, p.NetNS)
		}
	}
	return verifyHost(p, pa.Index)
}

func verifyHost(p Pod, podIndex int) error {
	name := HostName(p.ContainerID, p.IfName)
	hl, err := netlinksafe.LinkByName(name)
	if err != nil {
		return drift("host end %s of %s is missing", name, p.IfName)
	}
	br, err := netlinksafe.LinkByName(p.Bridge)
	if err != nil {
		return drift("bridge %s is missing", p.Bridge)
	}
	ha := hl.Attrs()
	if ha.MasterIndex != br.Attrs().Index {
		return drift("host end %s is not attached to bridge %s", name, p.Bridge)
	}
	if ha.Flags&net.FlagUp == 0 {
		return drift("host end %s is down", name)
	}
	if ha.ParentIndex != podIndex {
		return drift("host end %s is not the peer of %s in %s", name, p.IfName, p.NetNS)
	}
	if ha.Group != Group(p.Network) || ha.Alias != Alias(p.Network, p.ContainerID, p.IfName) {
		return drift("host end %s carries group %#x and alias %q, not podnet's for this attachment", name, ha.Group, ha.Alias)
	}
	return nil
}

func hasRoute(routes []netlink.Route, want Route) bool {
	for _, r := range routes {
		dst := netip.Prefix{}
		if r.Dst != nil {
			dst, _ = PrefixOf(r.Dst)
		} else if want.Dst.Bits() == 0 {
			dst = want.Dst // the kernel reports a default route with no Dst
		}
		if dst != want.Dst {
			continue
		}
		gw, _ := netip.AddrFromSlice(r.Gw)
		if gw.Unmap() == want.Gw || (!want.Gw.IsValid() && r.Gw == nil) {
			return true
		}
	}
	return false
}

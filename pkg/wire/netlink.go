package wire

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Netlink is the real kernel, driven through netlink from the node's
// network namespace (the namespace the plugin runs in).
type Netlink struct{}

// EnsureBridge creates the bridge if missing (safe against concurrent
// plugins), sets it up, gives it its gateway addresses and turns on
// forwarding for the families it serves.
func (Netlink) EnsureBridge(b Bridge) (BridgeLink, error) {
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return BridgeLink{}, fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close()
	br, err := bridgeByName(h, b.Name)
	if errors.Is(err, errNotFound) {
		la := netlink.NewLinkAttrs()
		la.Name = b.Name
		la.HardwareAddr = GatewayMAC(b.Gateways)
		la.Flags = net.FlagUp
		err = h.LinkAdd(&netlink.Bridge{LinkAttrs: la})
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return BridgeLink{}, fmt.Errorf("create bridge %s: %w", b.Name, err)
		}
		br, err = bridgeByName(h, b.Name) // another plugin may have won the race
	}
	if err != nil {
		return BridgeLink{}, err
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(br); err != nil {
			return BridgeLink{}, fmt.Errorf("set bridge %s up: %w", b.Name, err)
		}
	}
	have, err := addrSet(h, br)
	if err != nil {
		return BridgeLink{}, fmt.Errorf("list addresses of %s: %w", b.Name, err)
	}
	v4, v6 := false, false
	for _, gw := range b.Gateways {
		v4, v6 = v4 || gw.Addr().Is4(), v6 || gw.Addr().Is6()
		if have[gw] {
			continue
		}
		a := &netlink.Addr{IPNet: ipNet(gw)}
		if err := h.AddrAdd(br, a); err != nil && !errors.Is(err, unix.EEXIST) {
			return BridgeLink{}, fmt.Errorf("add address %s to %s: %w", gw, b.Name, err)
		}
	}
	if v4 {
		if err := ensureSysctl("net/ipv4/ip_forward", "1"); err != nil {
			return BridgeLink{}, err
		}
		// Bridged pod-to-pod packets pass netfilter's inet hooks: what
		// NetworkPolicy on one node and Service replies on one bridge
		// need. Only where br_netfilter is there (it loads as a module
		// elsewhere; podnetd warns when it is missing).
		if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err == nil {
			if err := ensureSysctl("net/bridge/bridge-nf-call-iptables", "1"); err != nil {
				return BridgeLink{}, err
			}
		}
	}
	if v6 {
		if err := ensureSysctl("net/ipv6/conf/all/forwarding", "1"); err != nil {
			return BridgeLink{}, err
		}
	}
	return BridgeLink{Index: br.Attrs().Index, MAC: br.Attrs().HardwareAddr}, nil
}

var errNotFound = errors.New("not found")

func bridgeByName(h netlinksafe.Handle, name string) (*netlink.Bridge, error) {
	l, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, errNotFound
		}
		return nil, fmt.Errorf("look up bridge %s: %w", name, err)
	}
	br, ok := l.(*netlink.Bridge)
	if !ok {
		return nil, fmt.Errorf("%s (a %s) %w", name, l.Type(), ErrNotBridge)
	}
	return br, nil
}

// BridgeStatus says whether an ADD could attach to the bridge: nil when it
// is a usable bridge or does not exist yet (ADD creates it).
func (Netlink) BridgeStatus(name string) (up bool, err error) {
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return false, fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close()
	br, err := bridgeByName(h, name)
	if errors.Is(err, errNotFound) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return br.Attrs().Flags&net.FlagUp != 0, nil
}

// addrList is AddrList retried while the kernel reports the dump was
// interrupted (netlinksafe has no handle variant of it).
func addrList(h netlinksafe.Handle, l netlink.Link) ([]netlink.Addr, error) {
	var addrs []netlink.Addr
	var err error
	for range 5 {
		if addrs, err = h.AddrList(l, netlink.FAMILY_ALL); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return addrs, err
}

func addrSet(h netlinksafe.Handle, l netlink.Link) (map[netip.Prefix]bool, error) {
	addrs, err := addrList(h, l)
	if err != nil {
		return nil, err
	}
	out := map[netip.Prefix]bool{}
	for _, a := range addrs {
		if p, ok := PrefixOf(a.IPNet); ok {
			out[p] = true
		}
	}
	return out, nil
}

// PrefixOf converts a netlink address to a prefix (IPv4-mapped unmapped).
func PrefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// ensureSysctl writes v to /proc/sys/<key> unless it already holds v (the
// read is cheaper than the write, and leaves the file alone when set).
func ensureSysctl(key, v string) error {
	p := filepath.Join("/proc/sys", key)
	if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == v {
		return nil
	}
	if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
		return fmt.Errorf("set %s=%s: %w", strings.ReplaceAll(key, "/", "."), v, err)
	}
	return nil
}

// openNetNS opens a pod namespace, telling a missing path apart.
func openNetNS(path string) (ns.NetNS, error) {
	n, err := ns.GetNS(path)
	if err != nil {
		var nx ns.NSPathNotExistErr
		if errors.As(err, &nx) {
			return nil, fmt.Errorf("open %s: %w", path, ErrNetNSNotFound)
		}
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	return n, nil
}

// Attach wires one pod interface: the veth pair is created with its peer
// directly in the pod namespace (never moved, so the pod never holds a
// half-configured interface under another name), the host end joins the
// bridge, then the pod end gets its addresses, routes and sysctls.
//
// Order matters for crash safety: everything Attach creates hangs off the
// host end, whose name and group follow from the attachment and are set by
// the creating message itself, so a plugin killed at any step leaves only
// objects that DEL (by name) and GC (by group and name) find.
//
// Cost matters too (a runtime waits for every ADD): one netlink socket for
// the node side, one namespace switch for the whole pod side, and the
// leftover check only when creation says the name is taken.
func (Netlink) Attach(p Pod) (Attached, error) {
	out := Attached{HostName: HostName(p.ContainerID, p.IfName), PodMAC: PodMAC(p.Addrs)}
	out.HostMAC = hostMAC(out.HostName)
	podNS, err := openNetNS(p.NetNS)
	if err != nil {
		return out, err
	}
	defer podNS.Close()
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return out, fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close()
	brIndex := p.BridgeIndex
	if brIndex == 0 {
		br, err := h.LinkByName(p.Bridge)
		if err != nil {
			return out, fmt.Errorf("look up bridge %s: %w", p.Bridge, err)
		}
		brIndex = br.Attrs().Index
	}
	la := netlink.NewLinkAttrs()
	la.Name = out.HostName
	la.MTU = p.MTU
	la.HardwareAddr = out.HostMAC
	la.Group = Group(p.Network)
	veth := &netlink.Veth{LinkAttrs: la, PeerName: p.IfName, PeerMTU: uint32(p.MTU),
		PeerHardwareAddr: out.PodMAC, PeerNamespace: netlink.NsFd(int(podNS.Fd()))}
	err = h.LinkAdd(veth)
	if errors.Is(err, unix.EEXIST) {
		// Either a leftover of an earlier, interrupted ADD of this same
		// attachment holds the host name (delete it, with its pod end, and
		// try again), or the pod already has an interface of that name.
		if derr := deleteLink(h, out.HostName); derr != nil {
			return out, derr
		}
		if err = h.LinkAdd(veth); errors.Is(err, unix.EEXIST) {
			return out, fmt.Errorf("%s in %s: %w", p.IfName, p.NetNS, ErrIfaceExists)
		}
	}
	if err != nil {
		return out, fmt.Errorf("create veth %s with peer %s in %s: %w", out.HostName, p.IfName, p.NetNS, err)
	}
	// The kernel ignores an alias in the creating message; set it now.
	if err := h.LinkSetAlias(veth, Alias(p.Network, p.ContainerID, p.IfName)); err != nil {
		return out, fmt.Errorf("set alias of %s: %w", out.HostName, err)
	}
	if err := h.LinkSetMasterByIndex(veth, brIndex); err != nil {
		return out, fmt.Errorf("attach %s to %s: %w", out.HostName, p.Bridge, err)
	}
	if p.Hairpin {
		if err := h.LinkSetHairpin(veth, true); err != nil {
			return out, fmt.Errorf("set hairpin on %s: %w", out.HostName, err)
		}
	}
	if err := h.LinkSetUp(veth); err != nil {
		return out, fmt.Errorf("set %s up: %w", out.HostName, err)
	}
	if err := podNS.Do(func(ns.NetNS) error { return configurePod(p) }); err != nil {
		return out, err
	}
	return out, nil
}

// configurePod runs inside the pod namespace.
func configurePod(p Pod) error {
	// DAD off before any address exists and before up (which starts DAD for
	// the link-local address): the pod's addresses are unique by
	// construction, and DAD would hold them "tentative" for a second or more.
	if err := disableDAD(p.IfName); err != nil {
		return err
	}
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink in %s: %w", p.NetNS, err)
	}
	defer h.Close()
	l, err := h.LinkByName(p.IfName)
	if err != nil {
		return fmt.Errorf("look up %s in %s: %w", p.IfName, p.NetNS, err)
	}
	for _, a := range p.Addrs {
		na := &netlink.Addr{IPNet: ipNet(a)}
		if a.Addr().Is6() {
			na.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(l, na); err != nil {
			return fmt.Errorf("add address %s to %s: %w", a, p.IfName, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up in %s: %w", p.IfName, p.NetNS, err)
	}
	for _, r := range p.Routes {
		nr := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(r.Dst)}
		if r.Gw.IsValid() {
			nr.Gw = r.Gw.AsSlice()
		} else {
			nr.Scope = netlink.SCOPE_LINK
		}
		if err := h.RouteAdd(nr); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add route %s via %s in %s: %w", r.Dst, r.Gw, p.NetNS, err)
		}
	}
	return nil
}

// disableDAD must run inside the pod namespace. A kernel without IPv6 has
// no such file, and then there is nothing to disable.
func disableDAD(ifName string) error {
	p := "/proc/sys/net/ipv6/conf/" + ifName + "/accept_dad"
	if _, err := os.Stat(p); err != nil {
		return nil
	}
	if err := os.WriteFile(p, []byte("0"), 0o644); err != nil {
		return fmt.Errorf("disable IPv6 DAD on %s: %w", ifName, err)
	}
	return nil
}

// deleteLink deletes a link by name; a missing link is no error.
func deleteLink(h netlinksafe.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// withHandle runs fn with a netlink handle in the current namespace.
func withHandle(fn func(h netlinksafe.Handle) error) error {
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close()
	return fn(h)
}

// Detach removes an attachment's veth pair by its host name; deleting one
// end deletes the other, with the pod end's addresses and routes. It needs
// no namespace, so it works after the pod namespace is gone, and deleting
// what is already gone is no error.
func (Netlink) Detach(containerID, ifName string) error {
	return withHandle(func(h netlinksafe.Handle) error { return deleteLink(h, HostName(containerID, ifName)) })
}

// HostLinks lists the host veths in network's link group.
func (Netlink) HostLinks(network string) ([]HostLink, error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []HostLink
	for _, l := range links {
		if l.Type() != "veth" || l.Attrs().Group != Group(network) {
			continue
		}
		hl, ok := ParseAlias(l.Attrs().Alias)
		if ok && hl.Network != network {
			continue // another network whose group hash collides
		}
		hl.Name, hl.Network = l.Attrs().Name, network
		out = append(out, hl)
	}
	return out, nil
}

// DeleteHostLink deletes a host veth (and so its pod end) by name.
func (Netlink) DeleteHostLink(name string) error {
	return withHandle(func(h netlinksafe.Handle) error { return deleteLink(h, name) })
}

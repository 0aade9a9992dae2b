package backend

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// VXLAN device parameters: flannel's, so the seeds' `ip -d link`, `ip neigh`
// and `bridge fdb` views read the same (the device is podnet's: podnet.1).
const (
	VXLANDevice = "podnet.1"
	VNI         = 1
	VXLANPort   = 8472
	// VXLANOverhead is what encapsulation costs: outer IPv4 20, UDP 8,
	// VXLAN 8, inner Ethernet 14.
	VXLANOverhead = 50
)

// VXLAN is the overlay backend: one VTEP per node, and for every other node
// a route to its pod subnet via its VTEP address (the subnet's network
// address, on-link), a permanent neighbour entry giving that address the
// remote VTEP's MAC, and an FDB entry sending that MAC to the remote node.
// Learning is off: the control plane (Node annotations) is the only source.
type VXLAN struct {
	local Local
	link  int // ifindex of the VTEP
}

// VTEPMAC is the VTEP's MAC, derived from the node name: stable across
// restarts and re-creations, so peers' FDB and neighbour entries stay right.
func VTEPMAC(node string) net.HardwareAddr {
	h := sha256.Sum256([]byte("podnet-vtep/" + node))
	return net.HardwareAddr{0x0e, 0x58, h[0], h[1], h[2], h[3]}
}

// Setup creates (or adopts, after a restart) the VTEP and gives it the
// pod subnet's network address, as flannel gives flannel.1.
func (v *VXLAN) Setup(local Local) (Facts, error) {
	v.local = local
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return Facts{}, fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close()
	under, err := h.LinkByName(local.Link)
	if err != nil {
		return Facts{}, fmt.Errorf("look up underlay %s: %w", local.Link, err)
	}
	mtu := under.Attrs().MTU - VXLANOverhead
	mac := VTEPMAC(local.Node)
	want := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: VXLANDevice, MTU: mtu, HardwareAddr: mac},
		VxlanId: VNI, VtepDevIndex: under.Attrs().Index, SrcAddr: local.NodeIP.AsSlice(),
		Port: VXLANPort, Learning: false, UDPCSum: true}
	l, err := h.LinkByName(VXLANDevice)
	if err == nil {
		if vx, ok := l.(*netlink.Vxlan); !ok || vx.VxlanId != VNI || vx.Port != VXLANPort || !vx.SrcAddr.Equal(want.SrcAddr) || vx.VtepDevIndex != want.VtepDevIndex {
			// Ours by name, but not as we want it: re-create.
			if err := h.LinkDel(l); err != nil {
				return Facts{}, fmt.Errorf("replace %s: %w", VXLANDevice, err)
			}
			l = nil
		}
	} else {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return Facts{}, fmt.Errorf("look up %s: %w", VXLANDevice, err)
		}
		l = nil
	}
	if l == nil {
		if err := h.LinkAdd(want); err != nil {
			return Facts{}, fmt.Errorf("create %s (VNI %d, port %d, local %s): %w", VXLANDevice, VNI, VXLANPort, local.NodeIP, err)
		}
		if l, err = h.LinkByName(VXLANDevice); err != nil {
			return Facts{}, fmt.Errorf("look up %s: %w", VXLANDevice, err)
		}
	}
	if l.Attrs().MTU != mtu {
		if err := h.LinkSetMTU(l, mtu); err != nil {
			return Facts{}, fmt.Errorf("set MTU of %s: %w", VXLANDevice, err)
		}
	}
	addr := netip.PrefixFrom(local.PodCIDR.Masked().Addr(), 32)
	if err := h.AddrReplace(l, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return Facts{}, fmt.Errorf("address %s on %s: %w", addr, VXLANDevice, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return Facts{}, fmt.Errorf("set %s up: %w", VXLANDevice, err)
	}
	v.link = l.Attrs().Index
	return Facts{MTU: mtu, Annotations: map[string]string{
		AnnotationBackend: "vxlan", AnnotationPublicIP: local.NodeIP.String(), AnnotationVTEPMAC: mac.String()}}, nil
}

// Sync programs route, neighbour and FDB entry per remote.
func (v *VXLAN) Sync(remotes []Remote) (Result, error) {
	return syncOverlay(v.link, nil, remotes)
}

// syncOverlay programs the overlay for remotes, next to the direct routes
// given (hybrid), in one pass: neighbour and FDB entries first, then the
// routes that use them, stale objects last.
func syncOverlay(link int, direct map[netip.Prefix]*netlink.Route, remotes []Remote) (Result, error) {
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return Result{}, fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close()
	res := Result{Refused: map[string]string{}}
	routes := map[netip.Prefix]*netlink.Route{}
	for k, r := range direct {
		routes[k] = r
	}
	var entries []vtepEntry
	for _, r := range remotes {
		if r.VTEPMAC == nil {
			res.Refused[r.Node] = "it has not published a VTEP MAC (" + AnnotationVTEPMAC + ") yet"
			continue
		}
		gw := r.PodCIDR.Masked().Addr()
		routes[r.PodCIDR.Masked()] = &netlink.Route{LinkIndex: link, Dst: ipNet(r.PodCIDR.Masked()),
			Gw: gw.AsSlice(), Flags: int(netlink.FLAG_ONLINK)}
		entries = append(entries, vtepEntry{vtepIP: gw, mac: r.VTEPMAC, nodeIP: r.NodeIP})
	}
	n, err := syncVTEPEntries(h, link, entries)
	if err != nil {
		return res, err
	}
	a, d, err := syncRoutes(h, routes)
	res.Added, res.Removed = a+n, d
	return res, err
}

type vtepEntry struct {
	vtepIP netip.Addr
	mac    net.HardwareAddr
	nodeIP netip.Addr
}

// syncVTEPEntries makes the VTEP's permanent neighbours and FDB entries
// exactly those of entries. Everything on the VTEP is podnet's.
func syncVTEPEntries(h netlinksafe.Handle, link int, entries []vtepEntry) (int, error) {
	changed := 0
	wantNeigh, wantFDB := map[netip.Addr]string{}, map[string]netip.Addr{}
	for _, e := range entries {
		wantNeigh[e.vtepIP], wantFDB[e.mac.String()] = e.mac.String(), e.nodeIP
		if err := h.NeighSet(&netlink.Neigh{LinkIndex: link, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST,
			IP: e.vtepIP.AsSlice(), HardwareAddr: e.mac}); err != nil {
			return changed, fmt.Errorf("neighbour %s lladdr %s on %s: %w", e.vtepIP, e.mac, VXLANDevice, err)
		}
		if err := h.NeighSet(&netlink.Neigh{LinkIndex: link, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
			Flags: netlink.NTF_SELF, IP: e.nodeIP.AsSlice(), HardwareAddr: e.mac}); err != nil {
			return changed, fmt.Errorf("fdb %s dst %s on %s: %w", e.mac, e.nodeIP, VXLANDevice, err)
		}
	}
	neighs, err := h.NeighList(link, netlink.FAMILY_V4)
	if err != nil {
		return changed, fmt.Errorf("list neighbours of %s: %w", VXLANDevice, err)
	}
	for _, n := range neighs {
		ip, _ := netip.AddrFromSlice(n.IP)
		if mac, ok := wantNeigh[ip.Unmap()]; ok && mac == n.HardwareAddr.String() {
			continue
		}
		if err := h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			return changed, fmt.Errorf("delete stale neighbour %s: %w", n.IP, err)
		}
		changed++
	}
	fdb, err := h.NeighList(link, unix.AF_BRIDGE)
	if err != nil {
		return changed, fmt.Errorf("list fdb of %s: %w", VXLANDevice, err)
	}
	for _, n := range fdb {
		dst, _ := netip.AddrFromSlice(n.IP)
		if want, ok := wantFDB[n.HardwareAddr.String()]; ok && want == dst.Unmap() {
			continue
		}
		if err := h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			return changed, fmt.Errorf("delete stale fdb %s dst %s: %w", n.HardwareAddr, n.IP, err)
		}
		changed++
	}
	return changed, nil
}

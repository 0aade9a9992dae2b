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
	n node
}

// errNotSetUp is what Sync says before a successful Setup: it must not
// guess which device is the VTEP.
var errNotSetUp = errors.New("sync before a successful Setup")

// VTEPMAC is the VTEP's MAC, derived from the node name: stable across
// restarts and re-creations, so peers' FDB and neighbour entries stay right.
// 0x0e in the first byte makes it a locally administered unicast address.
func VTEPMAC(node string) net.HardwareAddr {
	h := sha256.Sum256([]byte("podnet-vtep/" + node))
	return net.HardwareAddr{0x0e, 0x58, h[0], h[1], h[2], h[3]}
}

// Setup creates (or adopts, after a restart) the VTEP and gives it the
// pod subnet's network address, as flannel gives flannel.1.
func (v *VXLAN) Setup(local Local) (Facts, error) {
	n, mtu, err := setupOverlay(local)
	if err != nil {
		return Facts{}, err
	}
	v.n = n
	return overlayFacts("vxlan", local, mtu), nil
}

// Sync programs route, neighbour and FDB entry per remote.
func (v *VXLAN) Sync(remotes []Remote) (Result, error) {
	if v.n.vtep == 0 {
		return Result{}, fmt.Errorf("vxlan: %w", errNotSetUp)
	}
	return syncState(v.n, remotes, desiredVXLAN)
}

func overlayFacts(backend string, local Local, mtu int) Facts {
	return Facts{MTU: mtu, Annotations: map[string]string{AnnotationBackend: backend,
		AnnotationPublicIP: local.NodeIP.String(), AnnotationVTEPMAC: VTEPMAC(local.Node).String()}}
}

// setupOverlay finds the underlay and sets up the VTEP on it; it returns
// the node as Sync needs it and the VTEP's MTU.
func setupOverlay(local Local) (node, int, error) {
	if err := checkLocal(local); err != nil {
		return node{}, 0, err
	}
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return node{}, 0, fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close()
	under, segment, err := underlay(h, local)
	if err != nil {
		return node{}, 0, err
	}
	vtep, mtu, err := setupVTEP(h, local, under)
	if err != nil {
		return node{}, 0, err
	}
	return node{local: local, segment: segment, underlay: under.Attrs().Index, vtep: vtep}, mtu, nil
}

// vtepLink is the VTEP this node wants on the underlay under.
func vtepLink(local Local, under netlink.Link) *netlink.Vxlan {
	return &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: VXLANDevice, MTU: under.Attrs().MTU - VXLANOverhead, HardwareAddr: VTEPMAC(local.Node)},
		VxlanId:   VNI, VtepDevIndex: under.Attrs().Index, SrcAddr: local.NodeIP.AsSlice(),
		Port: VXLANPort, Learning: false, UDPCSum: true}
}

// vtepAdoptable reports whether an existing link named VXLANDevice can be
// kept. Re-creating the VTEP drops every flow through it (and every FDB
// and neighbour entry), so only a device that disagrees with its peers on
// the wire (VNI, port, local address, underlay) or learns entries (all
// entries on the VTEP are podnet's) is replaced; MTU, MAC and address are
// corrected in place.
func vtepAdoptable(have netlink.Link, want *netlink.Vxlan) bool {
	vx, ok := have.(*netlink.Vxlan)
	return ok && VTEPOurs(have) && vx.SrcAddr.Equal(want.SrcAddr) && vx.VtepDevIndex == want.VtepDevIndex
}

// VTEPOurs reports whether l is a VTEP podnet made, on whatever underlay
// and address: named VXLANDevice, a VXLAN device with podnet's VNI and
// port, learning off. Only such a device is podnet's to delete.
func VTEPOurs(l netlink.Link) bool {
	vx, ok := l.(*netlink.Vxlan)
	return ok && l.Attrs().Name == VXLANDevice && vx.VxlanId == VNI && vx.Port == VXLANPort && !vx.Learning
}

// dropStaleVTEP deletes the VTEP an overlay backend (vxlan, hybrid) left on
// a node that now runs without one (host-gw), with its neighbour and FDB
// entries, and says whether it did. A device of that name that podnet did
// not make (another type, VNI or port) is left alone, as is every device
// of another name.
func dropStaleVTEP(dp dataplane) (bool, error) {
	l, err := dp.LinkByName(VXLANDevice)
	var nf netlink.LinkNotFoundError
	switch {
	case errors.As(err, &nf) || errors.Is(err, unix.ENODEV):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("look up %s: %w", VXLANDevice, err)
	case !VTEPOurs(l):
		return false, nil
	}
	if err := dp.LinkDel(l); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return false, nil
		}
		return false, fmt.Errorf("delete %s (left by an overlay backend): %w", VXLANDevice, err)
	}
	return true, nil
}

// setupVTEP creates or adopts the VTEP and returns its index and MTU.
func setupVTEP(h netlinksafe.Handle, local Local, under netlink.Link) (int, int, error) {
	want := vtepLink(local, under)
	l, err := h.LinkByName(VXLANDevice)
	var nf netlink.LinkNotFoundError
	switch {
	case err == nil && !vtepAdoptable(l, want):
		if err := h.LinkDel(l); err != nil {
			return 0, 0, fmt.Errorf("replace %s (not the VTEP this node needs): %w", VXLANDevice, err)
		}
		l = nil
	case errors.As(err, &nf):
		l = nil
	case err != nil:
		return 0, 0, fmt.Errorf("look up %s: %w", VXLANDevice, err)
	}
	if l == nil {
		if err := h.LinkAdd(want); err != nil {
			return 0, 0, fmt.Errorf("create %s (VNI %d, port %d, local %s): %w", VXLANDevice, VNI, VXLANPort, local.NodeIP, err)
		}
		if l, err = h.LinkByName(VXLANDevice); err != nil {
			return 0, 0, fmt.Errorf("look up %s: %w", VXLANDevice, err)
		}
	}
	if l.Attrs().MTU != want.MTU {
		if err := h.LinkSetMTU(l, want.MTU); err != nil {
			return 0, 0, fmt.Errorf("set MTU of %s to %d: %w", VXLANDevice, want.MTU, err)
		}
	}
	// Peers' neighbour entries name this MAC (from the annotation).
	if !macEqual(l.Attrs().HardwareAddr, want.HardwareAddr) {
		if err := h.LinkSetHardwareAddr(l, want.HardwareAddr); err != nil {
			return 0, 0, fmt.Errorf("set MAC of %s to %s: %w", VXLANDevice, want.HardwareAddr, err)
		}
	}
	if err := vtepAddress(h, l, netip.PrefixFrom(local.PodCIDR.Masked().Addr(), 32)); err != nil {
		return 0, 0, err
	}
	if err := h.LinkSetUp(l); err != nil {
		return 0, 0, fmt.Errorf("set %s up: %w", VXLANDevice, err)
	}
	return l.Attrs().Index, want.MTU, nil
}

// vtepAddress makes addr the VTEP's only IPv4 address (a node whose pod
// subnet changed keeps no old one).
func vtepAddress(h netlinksafe.Handle, l netlink.Link, addr netip.Prefix) error {
	if err := h.AddrReplace(l, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("address %s on %s: %w", addr, VXLANDevice, err)
	}
	have, err := h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", VXLANDevice, err)
	}
	for _, a := range have {
		if p := prefixOf(a.IPNet); p != addr {
			if err := h.AddrDel(l, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return fmt.Errorf("delete old address %s of %s: %w", p, VXLANDevice, err)
			}
		}
	}
	return nil
}

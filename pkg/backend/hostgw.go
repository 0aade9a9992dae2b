package backend

import (
	"fmt"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"golang.org/x/sys/unix"
)

// HostGW routes each remote pod subnet via the remote node's address on the
// underlay. It only works between nodes on one L2 segment; a remote on
// another segment is refused (reported), never routed into a black hole.
//
// A node switched to host-gw from vxlan or hybrid still holds podnet's
// VTEP and the routes into it. Setup leaves them, so that they carry
// traffic until the first successful Sync, which replaces each route in
// place (one RouteReplace: no moment without a route), deletes the stale
// ones, and deletes the VTEP last (reconcile).
type HostGW struct {
	n node
}

// Setup finds the underlay; host-gw has no node-local device.
func (g *HostGW) Setup(local Local) (Facts, error) {
	if err := checkLocal(local); err != nil {
		return Facts{}, err
	}
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return Facts{}, fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close()
	l, segment, err := underlay(h, local)
	if err != nil {
		return Facts{}, err
	}
	g.n = node{local: local, segment: segment, underlay: l.Attrs().Index}
	return Facts{MTU: l.Attrs().MTU, Annotations: map[string]string{AnnotationBackend: "host-gw", AnnotationPublicIP: local.NodeIP.String()}}, nil
}

// Sync programs a route per remote on this segment.
func (g *HostGW) Sync(remotes []Remote) (Result, error) {
	if g.n.underlay == 0 {
		return Result{}, fmt.Errorf("host-gw: %w", errNotSetUp)
	}
	// No VTEP: host-gw owns routes only, and deletes the VTEP an overlay
	// backend left once they are in place (reconcile).
	return syncState(g.n, remotes, desiredHostGW)
}

// Hybrid routes directly to nodes on this segment and through VXLAN to
// the others.
type Hybrid struct {
	n node
}

func (y *Hybrid) Setup(local Local) (Facts, error) {
	n, mtu, err := setupOverlay(local)
	if err != nil {
		return Facts{}, err
	}
	y.n = n
	return overlayFacts("hybrid", local, mtu), nil
}

func (y *Hybrid) Sync(remotes []Remote) (Result, error) {
	if y.n.vtep == 0 {
		return Result{}, fmt.Errorf("hybrid: %w", errNotSetUp)
	}
	return syncState(y.n, remotes, desiredHybrid)
}

package backend

import (
	"fmt"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// HostGW routes each remote pod subnet via the remote node's address on the
// underlay. It only works between nodes on one L2 segment; a remote on
// another segment is refused (reported), never routed into a black hole.
type HostGW struct {
	local   Local
	link    int
	segment netip.Prefix
	mtu     int
}

func (g *HostGW) Setup(local Local) (Facts, error) {
	g.local = local
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return Facts{}, fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByName(local.Link)
	if err != nil {
		return Facts{}, fmt.Errorf("look up underlay %s: %w", local.Link, err)
	}
	if g.segment, err = linkAddr(h, l, local.NodeIP); err != nil {
		return Facts{}, err
	}
	g.link, g.mtu = l.Attrs().Index, l.Attrs().MTU
	return Facts{MTU: g.mtu, Annotations: map[string]string{AnnotationBackend: "host-gw", AnnotationPublicIP: local.NodeIP.String()}}, nil
}

// routes returns host-gw routes for the remotes on this segment and the
// refusal reasons for the others.
func (g *HostGW) routes(remotes []Remote) (map[netip.Prefix]*netlink.Route, map[string]string) {
	want, refused := map[netip.Prefix]*netlink.Route{}, map[string]string{}
	for _, r := range remotes {
		if !g.segment.Contains(r.NodeIP) {
			refused[r.Node] = fmt.Sprintf("host-gw needs nodes on one L2 segment: %s is not in %s (use the vxlan or hybrid backend)", r.NodeIP, g.segment.Masked())
			continue
		}
		want[r.PodCIDR.Masked()] = &netlink.Route{LinkIndex: g.link, Dst: ipNet(r.PodCIDR.Masked()), Gw: r.NodeIP.AsSlice()}
	}
	return want, refused
}

func (g *HostGW) Sync(remotes []Remote) (Result, error) {
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return Result{}, fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close()
	want, refused := g.routes(remotes)
	a, d, err := syncRoutes(h, want)
	return Result{Added: a, Removed: d, Refused: refused}, err
}

// Hybrid routes directly to nodes on this segment and through VXLAN to
// the others.
type Hybrid struct {
	gw HostGW
	vx VXLAN
}

func (y *Hybrid) Setup(local Local) (Facts, error) {
	if _, err := y.gw.Setup(local); err != nil {
		return Facts{}, err
	}
	f, err := y.vx.Setup(local)
	f.Annotations[AnnotationBackend] = "hybrid"
	return f, err
}

func (y *Hybrid) Sync(remotes []Remote) (Result, error) {
	direct, _ := y.gw.routes(remotes)
	var far []Remote
	for _, r := range remotes {
		if _, ok := direct[r.PodCIDR.Masked()]; !ok {
			far = append(far, r)
		}
	}
	return syncOverlay(y.vx.link, direct, far)
}

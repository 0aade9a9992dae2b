package backend

import (
	"fmt"
	"net"
	"net/netip"
	"sort"
)

// This file computes what the kernel should hold, from the node, its
// remotes and the routes others hold to their pod subnets: pure functions,
// no netlink. Sync hands their answer to apply (kernel.go), which compares
// it with what the kernel holds now.

// node is what a backend knows about this node once Setup has run.
type node struct {
	local    Local
	segment  netip.Prefix // the underlay network holding local.NodeIP
	underlay int          // ifindex of local.Link
	vtep     int          // ifindex of the VTEP (vxlan, hybrid); 0 for host-gw
}

// state is the whole of podnet's kernel state on one node: a route per
// reachable remote, and (overlay) a neighbour and an FDB entry on the VTEP.
type state struct {
	routes []route
	neighs []neigh    // on the VTEP
	fdb    []fdbEntry // on the VTEP
	// refused maps a remote node to why it gets no route.
	refused map[string]string
}

// desiredFunc is a backend's desired state: desiredVXLAN, desiredHostGW or
// desiredHybrid.
type desiredFunc func(n node, remotes []Remote, foreign foreignRoutes) state

// foreignRoutes are the main-table routes podnet did not make (protocol
// other than RouteProtocol) whose destination is exactly a remote's pod
// subnet, by that destination (masked). Podnet never overwrites nor deletes
// one: the remote is refused until its author removes it.
//
// Only an exact destination conflicts, since a route replace would
// overwrite that route. A foreign route to a shorter prefix (10.244.0.0/16)
// or a longer one inside the subnet coexists with podnet's, and the longest
// prefix decides, as its author meant; routes in other tables (the kernel's
// local table, policy routing tables) are not podnet's business either.
type foreignRoutes map[netip.Prefix]foreignRoute

// foreignRoute is one such route as `ip route` would show it (without its
// destination), and whether the kernel made it for an address on this node.
type foreignRoute struct {
	desc      string
	connected bool
}

// route is one route podnet owns (always protocol RouteProtocol, main table).
type route struct {
	dst    netip.Prefix
	gw     netip.Addr
	link   int
	onlink bool
}

// neigh is a permanent neighbour on the VTEP: a remote VTEP address and
// its MAC.
type neigh struct {
	ip  netip.Addr
	mac net.HardwareAddr
}

// fdbEntry sends frames for a remote VTEP's MAC to that node's address.
type fdbEntry struct {
	mac net.HardwareAddr
	dst netip.Addr
}

// desiredVXLAN is flannel's triple per remote: a route to its pod subnet
// via the subnet's network address (its VTEP address) on-link on the VTEP,
// a neighbour giving that address the remote VTEP's MAC, and an FDB entry
// sending that MAC to the remote node.
func desiredVXLAN(n node, remotes []Remote, foreign foreignRoutes) state {
	ok, s := admit(n.local, remotes, foreign)
	for _, r := range ok {
		s.overlay(n, r)
	}
	return s
}

// desiredHostGW routes each remote pod subnet via the remote node's
// address on the underlay; a remote outside this node's segment has no
// next hop here and is refused, never routed into a black hole.
func desiredHostGW(n node, remotes []Remote, foreign foreignRoutes) state {
	ok, s := admit(n.local, remotes, foreign)
	for _, r := range ok {
		if !n.segment.Contains(r.NodeIP) {
			s.refused[r.Node] = fmt.Sprintf("host-gw needs nodes on one L2 segment: %s is not in %s (use the vxlan or hybrid backend)", r.NodeIP, n.segment.Masked())
			continue
		}
		s.direct(n, r)
	}
	return s
}

// desiredHybrid routes directly (host-gw) to remotes on this node's
// segment and through the overlay (vxlan) to the others.
func desiredHybrid(n node, remotes []Remote, foreign foreignRoutes) state {
	ok, s := admit(n.local, remotes, foreign)
	for _, r := range ok {
		if n.segment.Contains(r.NodeIP) {
			s.direct(n, r)
		} else {
			s.overlay(n, r)
		}
	}
	return s
}

func (s *state) direct(n node, r Remote) {
	s.routes = append(s.routes, route{dst: r.PodCIDR.Masked(), gw: r.NodeIP, link: n.underlay})
}

func (s *state) overlay(n node, r Remote) {
	if len(r.VTEPMAC) != 6 {
		s.refused[r.Node] = "it has not published a VTEP MAC (" + AnnotationVTEPMAC + ") yet"
		return
	}
	vtepIP := r.PodCIDR.Masked().Addr()
	s.routes = append(s.routes, route{dst: r.PodCIDR.Masked(), gw: vtepIP, link: n.vtep, onlink: true})
	s.neighs = append(s.neighs, neigh{ip: vtepIP, mac: r.VTEPMAC})
	s.fdb = append(s.fdb, fdbEntry{mac: r.VTEPMAC, dst: r.NodeIP})
}

// admit returns the remotes a backend can route to, sorted by node name,
// and a state whose refused map holds the others with the reason: a pod
// subnet or address that is not IPv4, the node itself, a pod subnet
// overlapping this node's or an earlier (by name) remote's — routing one
// would hijack the other's traffic — or a pod subnet that a foreign route
// already goes to.
func admit(local Local, remotes []Remote, foreign foreignRoutes) ([]Remote, state) {
	s := state{refused: map[string]string{}}
	sorted := append([]Remote(nil), remotes...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Node < sorted[j].Node })
	var ok []Remote
	for _, r := range sorted {
		if reason := refuse(local, ok, r, foreign); reason != "" {
			s.refused[r.Node] = reason
			continue
		}
		ok = append(ok, r)
	}
	return ok, s
}

// refuse says why r cannot be routed, or "". The foreign route comes last:
// a remote claiming this node's own subnet must be told so, not told to
// delete the connected route of cni0.
func refuse(local Local, admitted []Remote, r Remote, foreign foreignRoutes) string {
	switch {
	case r.Node == local.Node:
		return "it is this node"
	case !r.PodCIDR.IsValid() || !r.PodCIDR.Addr().Is4():
		return fmt.Sprintf("its pod subnet %q is not an IPv4 prefix", r.PodCIDR)
	case !r.NodeIP.Is4():
		return fmt.Sprintf("its node address %q is not an IPv4 address", r.NodeIP)
	case r.NodeIP == local.NodeIP:
		return fmt.Sprintf("its node address %s is this node's", r.NodeIP)
	case r.PodCIDR.Overlaps(local.PodCIDR):
		return fmt.Sprintf("its pod subnet %s overlaps this node's %s", r.PodCIDR, local.PodCIDR)
	}
	for _, o := range admitted {
		if r.PodCIDR.Overlaps(o.PodCIDR) {
			return fmt.Sprintf("its pod subnet %s overlaps node %s's %s", r.PodCIDR, o.Node, o.PodCIDR)
		}
	}
	if f, ok := foreign[r.PodCIDR.Masked()]; ok {
		fix := "delete it"
		if f.connected {
			fix = "remove the address it is for"
		}
		return fmt.Sprintf("a route to %s not made by podnet exists (%s); %s to let podnet route %s", r.PodCIDR.Masked(), f.desc, fix, r.Node)
	}
	return ""
}

// checkLocal rejects a Local that Setup cannot program.
func checkLocal(local Local) error {
	switch {
	case local.Node == "":
		return fmt.Errorf("local node: no name")
	case !local.PodCIDR.IsValid() || !local.PodCIDR.Addr().Is4():
		return fmt.Errorf("node %s: pod subnet %q is not an IPv4 prefix", local.Node, local.PodCIDR)
	case !local.NodeIP.Is4():
		return fmt.Errorf("node %s: node address %q is not an IPv4 address", local.Node, local.NodeIP)
	case local.Link == "":
		return fmt.Errorf("node %s: no underlay interface", local.Node)
	}
	return nil
}

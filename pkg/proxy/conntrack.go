package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Conntrack hygiene for UDP. A UDP "connection" lives in conntrack as
// long as its client keeps sending, with the endpoint chosen by its first
// packet. When that endpoint goes away, the flow would keep sending into
// the void (TCP notices by itself: resets, timeouts). So after a sync:
//
//   - flows to a Service address (and NodePorts) DNATed to an endpoint
//     that is no longer used are deleted: their next packet is a new flow,
//     which picks a live endpoint;
//   - flows to a Service address that were never DNATed (sent before the
//     Service had endpoints, or before it existed) are deleted when it gets
//     endpoints: a DNS client started before CoreDNS would otherwise never
//     reach it.

// FlowFilter selects UDP conntrack entries by their original destination
// and by where they were DNATed.
type FlowFilter struct {
	// Dst is the original destination address; the zero Addr is any (the
	// NodePort of a removed endpoint, on whatever node address).
	Dst     netip.Addr
	DstPort uint16
	// Endpoint is where the flow was DNATed to; the zero AddrPort selects
	// flows that were not DNATed at all.
	Endpoint netip.AddrPort
}

func (f FlowFilter) String() string {
	ep := "not NATed"
	if f.Endpoint.IsValid() {
		ep = "to " + f.Endpoint.String()
	}
	dst := "*" // any address
	if f.Dst.IsValid() {
		dst = f.Dst.String()
	}
	return fmt.Sprintf("udp %s:%d %s", dst, f.DstPort, ep)
}

// Conntrack deletes conntrack entries. The Proxier calls it after a
// successful sync; errors are logged, not fatal.
type Conntrack interface {
	// DeleteFlows deletes the UDP entries matching any filter and returns
	// how many it deleted.
	DeleteFlows(filters []FlowFilter) (int, error)
}

// NewConntrack returns the netlink implementation for fam, which acts in
// the network namespace of the calling thread.
func NewConntrack(fam Family) Conntrack {
	nf := netlink.InetFamily(unix.AF_INET)
	if fam.NFT == IPv6.NFT {
		nf = netlink.InetFamily(unix.AF_INET6)
	}
	return &netlinkConntrack{family: nf}
}

type netlinkConntrack struct{ family netlink.InetFamily }

// DeleteFlows dumps the conntrack table once and deletes the matching
// entries (one netlink request each), whatever the number of filters.
func (c *netlinkConntrack) DeleteFlows(filters []FlowFilter) (int, error) {
	if len(filters) == 0 {
		return 0, nil
	}
	n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, c.family, newFlowIndex(filters))
	if err != nil {
		return int(n), fmt.Errorf("delete %d UDP conntrack filters: %w", len(filters), err)
	}
	return int(n), nil
}

// flowIndex matches a flow against many filters in O(1): it implements
// netlink.CustomConntrackFilter.
type flowIndex struct {
	byDst  map[netip.AddrPort][]FlowFilter // filters with a destination address
	byPort map[uint16][]FlowFilter         // NodePort filters (any address)
}

func newFlowIndex(filters []FlowFilter) *flowIndex {
	ix := &flowIndex{byDst: map[netip.AddrPort][]FlowFilter{}, byPort: map[uint16][]FlowFilter{}}
	for _, f := range filters {
		if f.Dst.IsValid() {
			k := netip.AddrPortFrom(f.Dst, f.DstPort)
			ix.byDst[k] = append(ix.byDst[k], f)
		} else {
			ix.byPort[f.DstPort] = append(ix.byPort[f.DstPort], f)
		}
	}
	return ix
}

// MatchConntrackFlow says whether flow is a UDP flow one filter selects.
func (ix *flowIndex) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	if flow.Forward.Protocol != unix.IPPROTO_UDP {
		return false
	}
	dst, ok := addrOf(flow.Forward.DstIP)
	if !ok {
		return false
	}
	for _, f := range ix.byDst[netip.AddrPortFrom(dst, flow.Forward.DstPort)] {
		if f.matches(flow, dst) {
			return true
		}
	}
	for _, f := range ix.byPort[flow.Forward.DstPort] {
		if f.matches(flow, dst) {
			return true
		}
	}
	return false
}

// matches checks where flow was DNATed: the source of its reply direction
// is the endpoint, or for a flow not DNATed, its original destination.
func (f FlowFilter) matches(flow *netlink.ConntrackFlow, dst netip.Addr) bool {
	src, ok := addrOf(flow.Reverse.SrcIP)
	if !ok {
		return false
	}
	reply := netip.AddrPortFrom(src, flow.Reverse.SrcPort)
	if !f.Endpoint.IsValid() {
		return reply == netip.AddrPortFrom(dst, flow.Forward.DstPort)
	}
	return reply == f.Endpoint
}

func addrOf(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}

// FakeConntrack records the filters it is given, for tests.
type FakeConntrack struct {
	mu    sync.Mutex
	Calls [][]FlowFilter
	Err   error
}

// DeleteFlows records filters; it deletes nothing and returns Err.
func (f *FakeConntrack) DeleteFlows(filters []FlowFilter) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Calls = append(f.Calls, append([]FlowFilter(nil), filters...))
	return 0, f.Err
}

// Filters is every filter recorded so far.
func (f *FakeConntrack) Filters() []FlowFilter {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []FlowFilter
	for _, c := range f.Calls {
		out = append(out, c...)
	}
	return out
}

// staleFlows computes the UDP flows to delete after a sync from the
// changed ports as written before (old) and now (cur).
func staleFlows(changed []ServicePortName, old, cur map[ServicePortName]*portState, n Node) []FlowFilter {
	var out []FlowFilter
	for _, name := range changed {
		if name.Protocol != UDP {
			continue
		}
		o, c := old[name], cur[name]
		keep := map[netip.AddrPort]bool{}
		if c != nil {
			for _, e := range c.objs.endpoints {
				keep[netip.AddrPortFrom(e.IP, e.Port)] = true
			}
		}
		if o != nil {
			for _, e := range o.objs.endpoints {
				if ep := netip.AddrPortFrom(e.IP, e.Port); !keep[ep] {
					out = append(out, portFlows(o.sp, []netip.Addr{{}}, ep)...)
				}
			}
		}
		if c != nil && len(c.objs.endpoints) > 0 && (o == nil || len(o.objs.endpoints) == 0) {
			out = append(out, portFlows(c.sp, n.IPs, netip.AddrPort{})...)
		}
	}
	return out
}

// portFlows are the filters for the flows of sp's destinations that were
// DNATed to ep (or not NATed, for the zero ep). NodePort flows match on
// nodeIPs (the zero Addr: any address).
func portFlows(sp *ServicePort, nodeIPs []netip.Addr, ep netip.AddrPort) []FlowFilter {
	var out []FlowFilter
	for _, a := range append(append([]netip.Addr{sp.ClusterIP}, sp.ExternalIPs...), sp.LoadBalancerIPs...) {
		out = append(out, FlowFilter{Dst: a, DstPort: sp.Port, Endpoint: ep})
	}
	if sp.NodePort != 0 {
		for _, a := range nodeIPs {
			out = append(out, FlowFilter{Dst: a, DstPort: sp.NodePort, Endpoint: ep})
		}
	}
	return out
}

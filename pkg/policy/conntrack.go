package policy

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Tightening cuts. The table accepts established and related packets
// first, so a policy change alone would leave every connection it now
// forbids open until it ends. After a sync that rewrote some pods'
// chains, the Enforcer deletes the conntrack entries of those pods that
// the new policy forbids: the next packet of such a flow is a new one
// (conntrack picks up a TCP stream mid-way as new), and the table drops
// it. Flows the policy still allows are not touched, so loosening never
// breaks one.

// Flow is a conntrack entry as the policy sees it: the original source,
// and the destination after the Service proxy's DNAT (the reply's source).
type Flow struct {
	Src, Dst netip.Addr
	Proto    uint8
	Port     uint16 // destination port after DNAT; 0 for ICMP
}

func (f Flow) String() string {
	return fmt.Sprintf("%s -> %s %d/%d", f.Src, f.Dst, f.Proto, f.Port)
}

// Conntrack deletes the conntrack entries forbid returns true for, and
// says how many. The node's own connections (from one of its addresses)
// are never passed: the table does not police them either.
type Conntrack interface {
	Cut(forbid func(Flow) bool) (int, error)
}

// NewConntrack is the netlink implementation, acting in the network
// namespace of the calling thread.
func NewConntrack() Conntrack { return netlinkConntrack{} }

type netlinkConntrack struct{}

func (netlinkConntrack) Cut(forbid func(Flow) bool) (int, error) {
	local := map[netip.Addr]bool{}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return 0, fmt.Errorf("list the node's addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			local[ip.Unmap()] = true
		}
	}
	n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, netlink.InetFamily(unix.AF_INET), flowMatch{forbid, local})
	if err != nil {
		return int(n), fmt.Errorf("delete conntrack entries the policy now forbids: %w", err)
	}
	return int(n), nil
}

type flowMatch struct {
	forbid func(Flow) bool
	local  map[netip.Addr]bool
}

func (m flowMatch) MatchConntrackFlow(f *netlink.ConntrackFlow) bool {
	src, ok1 := addrOf(f.Forward.SrcIP)
	dst, ok2 := addrOf(f.Reverse.SrcIP) // after DNAT
	if !ok1 || !ok2 || m.local[src] {
		return false
	}
	fl := Flow{Src: src, Dst: dst, Proto: f.Forward.Protocol}
	if fl.Proto != 1 {
		fl.Port = f.Reverse.SrcPort
	}
	return m.forbid(fl)
}

func addrOf(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}

// FakeConntrack holds flows in memory, for tests.
type FakeConntrack struct {
	Flows []Flow
	Cuts  int // calls
}

func (f *FakeConntrack) Cut(forbid func(Flow) bool) (int, error) {
	f.Cuts++
	kept, n := f.Flows[:0], 0
	for _, fl := range f.Flows {
		if forbid(fl) {
			n++
			continue
		}
		kept = append(kept, fl)
	}
	f.Flows = kept
	return n, nil
}

// allows says whether al lets the other end other exchange proto/port.
func (al *Allowed) allows(other netip.Addr, proto uint8, port uint16) bool {
	if inSpans(other, al.Any) {
		return true
	}
	if proto == 1 {
		return false
	}
	for _, e := range al.Ports {
		if uint8(e.Proto) == proto && !other.Less(e.Addrs.First) && !e.Addrs.Last.Less(other) &&
			port >= e.Ports.First && port <= e.Ports.Last {
			return true
		}
	}
	return false
}

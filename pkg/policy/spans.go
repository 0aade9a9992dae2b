package policy

import (
	"net/netip"
	"slices"
	"strconv"
)

// Proto is the IP protocol number a port applies to.
type Proto uint8

// The protocols NetworkPolicy ports name.
const (
	TCP  Proto = 6
	UDP  Proto = 17
	SCTP Proto = 132
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case SCTP:
		return "sctp"
	}
	return "proto-" + strconv.Itoa(int(p))
}

// Span is an inclusive range of addresses of one family.
type Span struct{ First, Last netip.Addr }

func (s Span) String() string {
	if s.First == s.Last {
		return s.First.String()
	}
	return s.First.String() + "-" + s.Last.String()
}

// PortSpan is an inclusive range of ports.
type PortSpan struct{ First, Last uint16 }

// AllPorts is every port of a protocol (a port entry with a protocol and
// no port).
var AllPorts = PortSpan{0, 65535}

// Element is one element of a pod's allow set: the addresses of the other
// end, a protocol and the destination ports.
type Element struct {
	Addrs Span
	Proto Proto
	Ports PortSpan
}

// spanOf is the addresses of a prefix.
func spanOf(p netip.Prefix) Span {
	p = p.Masked()
	first := p.Addr()
	last := first.As16()
	bits := p.Bits()
	if first.Is4() {
		bits += 96
	}
	for i := bits; i < 128; i++ {
		last[i/8] |= 1 << (7 - i%8)
	}
	l := netip.AddrFrom16(last)
	if first.Is4() {
		l = l.Unmap()
	}
	return Span{first, l}
}

// everything is every address of both families (a rule with no peers).
var everything = []Span{spanOf(netip.MustParsePrefix("0.0.0.0/0")), spanOf(netip.MustParsePrefix("::/0"))}

// minus is s without the spans in cut (which may lie partly or wholly
// outside it, or be of the other family).
func minus(s Span, cut []Span) []Span {
	out := []Span{s}
	for _, c := range cut {
		if c.First.Is4() != s.First.Is4() {
			continue
		}
		var next []Span
		for _, o := range out {
			if c.Last.Less(o.First) || o.Last.Less(c.First) {
				next = append(next, o)
				continue
			}
			if o.First.Less(c.First) {
				next = append(next, Span{o.First, c.First.Prev()})
			}
			if c.Last.Less(o.Last) {
				next = append(next, Span{c.Last.Next(), o.Last})
			}
		}
		out = next
	}
	return out
}

// mergeSpans sorts spans and joins those that overlap or touch.
func mergeSpans(spans []Span) []Span {
	s := slices.Clone(spans)
	slices.SortFunc(s, func(a, b Span) int { return a.First.Compare(b.First) })
	var out []Span
	for _, x := range s {
		if n := len(out); n > 0 && out[n-1].First.Is4() == x.First.Is4() && !adjacentOrAfter(out[n-1].Last, x.First) {
			if out[n-1].Last.Less(x.Last) {
				out[n-1].Last = x.Last
			}
			continue
		}
		out = append(out, x)
	}
	return out
}

// adjacentOrAfter reports whether b starts after a+1: a gap between them.
func adjacentOrAfter(a, b netip.Addr) bool {
	n := a.Next()
	return n.IsValid() && n.Less(b)
}

func mergePorts(ports []PortSpan) []PortSpan {
	p := slices.Clone(ports)
	slices.SortFunc(p, func(a, b PortSpan) int { return int(a.First) - int(b.First) })
	var out []PortSpan
	for _, x := range p {
		if n := len(out); n > 0 && int(x.First) <= int(out[n-1].Last)+1 {
			out[n-1].Last = max(out[n-1].Last, x.Last)
			continue
		}
		out = append(out, x)
	}
	return out
}

// disjoint turns elements that may overlap into disjoint ones covering the
// same (address, protocol, port) points, sorted: nftables refuses
// overlapping elements in an interval set. Per protocol the address line
// is cut at every boundary; each piece gets the union of the ports of the
// elements covering it, and neighbouring pieces with the same ports are
// joined again.
func disjoint(els []Element) []Element {
	byProto := map[Proto][]Element{}
	for _, e := range els {
		byProto[e.Proto] = append(byProto[e.Proto], e)
	}
	protos := make([]Proto, 0, len(byProto))
	for p := range byProto {
		protos = append(protos, p)
	}
	slices.Sort(protos)
	var out []Element
	for _, p := range protos {
		for _, v4 := range []bool{true, false} {
			out = append(out, disjointFamily(byProto[p], p, v4)...)
		}
	}
	return out
}

func disjointFamily(all []Element, proto Proto, v4 bool) []Element {
	var els []Element
	var cuts []netip.Addr // where a piece starts
	for _, e := range all {
		if e.Addrs.First.Is4() != v4 {
			continue
		}
		els = append(els, e)
		cuts = append(cuts, e.Addrs.First)
		if n := e.Addrs.Last.Next(); n.IsValid() {
			cuts = append(cuts, n)
		}
	}
	slices.SortFunc(cuts, netip.Addr.Compare)
	cuts = slices.Compact(cuts)
	type piece struct {
		span  Span
		ports []PortSpan
	}
	var pieces []piece
	for i, first := range cuts {
		last := lastOfFamily(v4)
		if i+1 < len(cuts) {
			last = cuts[i+1].Prev()
		}
		var ports []PortSpan
		for _, e := range els {
			if !first.Less(e.Addrs.First) && !e.Addrs.Last.Less(first) { // e covers the piece
				ports = append(ports, e.Ports)
			}
		}
		if len(ports) == 0 {
			continue
		}
		ports = mergePorts(ports)
		if n := len(pieces); n > 0 && pieces[n-1].span.Last.Next() == first && slices.Equal(pieces[n-1].ports, ports) {
			pieces[n-1].span.Last = last
			continue
		}
		pieces = append(pieces, piece{Span{first, last}, ports})
	}
	var out []Element
	for _, pc := range pieces {
		for _, ps := range pc.ports {
			out = append(out, Element{Addrs: pc.span, Proto: proto, Ports: ps})
		}
	}
	return out
}

func lastOfFamily(v4 bool) netip.Addr {
	if v4 {
		return netip.AddrFrom4([4]byte{255, 255, 255, 255})
	}
	return netip.AddrFrom16([16]byte{0: 0xff, 1: 0xff, 2: 0xff, 3: 0xff, 4: 0xff, 5: 0xff, 6: 0xff, 7: 0xff,
		8: 0xff, 9: 0xff, 10: 0xff, 11: 0xff, 12: 0xff, 13: 0xff, 14: 0xff, 15: 0xff})
}

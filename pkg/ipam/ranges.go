// Package ipam is podnet's built-in address manager: it parses host-local's
// "ranges" configuration, hands out one address per range set to each
// attachment (container ID + interface name), and keeps the reservations in a
// Store — on disk, crash-safe and locked, for the plugin; in memory for tests.
package ipam

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"net/netip"
)

// Range is one contiguous pool of addresses inside a subnet.
type Range struct {
	Subnet  netip.Prefix
	Start   netip.Addr // first address that may be handed out
	End     netip.Addr // last address that may be handed out
	Gateway netip.Addr // never handed out; the bridge's address
}

// RangeSet is a list of ranges of one address family; an attachment gets one
// address from each range set (host-local's semantics).
type RangeSet []Range

// RangeConf is one range as written in the network configuration, in
// host-local's format.
type RangeConf struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart,omitempty"`
	RangeEnd   string `json:"rangeEnd,omitempty"`
	Gateway    string `json:"gateway,omitempty"`
}

// ConfigError is a configuration mistake; Hint says how to fix it.
type ConfigError struct {
	Msg  string
	Hint string
}

func (e *ConfigError) Error() string { return e.Msg }

func cfgErr(hint, format string, a ...any) error {
	return &ConfigError{Msg: fmt.Sprintf(format, a...), Hint: hint}
}

// ParseRangeSets validates host-local style range sets and fills in defaults:
// the gateway defaults to the subnet's first address, the range to every
// address of the subnet but the network address, the gateway and (IPv4) the
// broadcast address.
func ParseRangeSets(confs [][]RangeConf) ([]RangeSet, error) {
	if len(confs) == 0 {
		return nil, cfgErr(`add "ranges": [[{"subnet": "10.244.1.0/24"}]] to the ipam section`,
			"ipam: no address ranges configured")
	}
	var sets []RangeSet
	families := map[bool]int{}
	for i, sc := range confs {
		if len(sc) == 0 {
			return nil, cfgErr("remove the empty list or put a range in it", "ipam: range set %d is empty", i)
		}
		var set RangeSet
		for j, rc := range sc {
			r, err := parseRange(rc)
			if err != nil {
				return nil, err
			}
			if j > 0 && r.Subnet.Addr().Is4() != set[0].Subnet.Addr().Is4() {
				return nil, cfgErr("put IPv4 and IPv6 ranges in separate range sets",
					"ipam: range set %d mixes IPv4 (%s) and IPv6 (%s)", i, set[0].Subnet, r.Subnet)
			}
			for _, o := range set {
				if r.Start.Compare(o.End) <= 0 && o.Start.Compare(r.End) <= 0 {
					return nil, cfgErr("make the ranges of one set disjoint",
						"ipam: ranges %s-%s and %s-%s overlap", o.Start, o.End, r.Start, r.End)
				}
			}
			set = append(set, r)
		}
		v4 := set[0].Subnet.Addr().Is4()
		if prev, dup := families[v4]; dup {
			return nil, cfgErr("use one range set per address family; list more ranges inside that set instead",
				"ipam: range sets %d and %d are both %s", prev, i, familyName(v4))
		}
		families[v4] = i
		sets = append(sets, set)
	}
	return sets, nil
}

func familyName(v4 bool) string {
	if v4 {
		return "IPv4"
	}
	return "IPv6"
}

func parseRange(rc RangeConf) (Range, error) {
	var r Range
	if rc.Subnet == "" {
		return r, cfgErr(`give each range a "subnet", e.g. "10.244.1.0/24"`, "ipam: range has no subnet")
	}
	p, err := netip.ParsePrefix(rc.Subnet)
	if err != nil {
		return r, cfgErr(`write the subnet in CIDR form, e.g. "10.244.1.0/24"`, "ipam: subnet %q is not a subnet: %v", rc.Subnet, err)
	}
	if p.Addr().Zone() != "" || p.Addr().Is4In6() {
		return r, cfgErr("write the subnet without zone or IPv4-in-IPv6 form", "ipam: subnet %q is not a plain subnet", rc.Subnet)
	}
	if p.Masked() != p {
		return r, cfgErr(fmt.Sprintf("did you mean %q?", p.Masked().String()),
			"ipam: subnet %q is not a subnet: it has host bits set", rc.Subnet)
	}
	r.Subnet = p
	first, last := bounds(p)
	// Usable: not the network address; for IPv4 not the broadcast address.
	lo, hi := first.Next(), last
	if p.Addr().Is4() {
		hi = last.Prev()
	}
	if !lo.IsValid() || !hi.IsValid() || lo.Compare(hi) > 0 {
		return r, cfgErr("use a subnet with room for a gateway and pods, e.g. a /24",
			"ipam: subnet %s is too small to hold any pod address", p)
	}
	parse := func(field, s string, def netip.Addr) (netip.Addr, error) {
		if s == "" {
			return def, nil
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return a, cfgErr(fmt.Sprintf("write %s as a plain address inside %s", field, p), "ipam: %s %q is not an IP address", field, s)
		}
		if !p.Contains(a) || a.Compare(lo) < 0 || a.Compare(hi) > 0 {
			return a, cfgErr(fmt.Sprintf("pick %s between %s and %s", field, lo, hi), "ipam: %s %s is not a usable address of %s", field, a, p)
		}
		return a, nil
	}
	if r.Gateway, err = parse("gateway", rc.Gateway, lo); err != nil {
		return r, err
	}
	if r.Start, err = parse("rangeStart", rc.RangeStart, lo); err != nil {
		return r, err
	}
	if r.End, err = parse("rangeEnd", rc.RangeEnd, hi); err != nil {
		return r, err
	}
	if r.Start.Compare(r.End) > 0 {
		return r, cfgErr("swap rangeStart and rangeEnd", "ipam: rangeStart %s is after rangeEnd %s", r.Start, r.End)
	}
	if r.Size() == 0 {
		return r, cfgErr("widen the range (or the subnet) so it holds an address besides the gateway",
			"ipam: range %s-%s of %s holds no address but the gateway %s", r.Start, r.End, p, r.Gateway)
	}
	return r, nil
}

// bounds returns the first and last address of a prefix.
func bounds(p netip.Prefix) (netip.Addr, netip.Addr) {
	first := p.Masked().Addr()
	b := first.AsSlice()
	bits := p.Bits()
	for i := range b {
		for bit := 0; bit < 8; bit++ {
			if i*8+bit >= bits {
				b[i] |= 0x80 >> bit
			}
		}
	}
	last, _ := netip.AddrFromSlice(b)
	return first, last
}

// ParseReserved parses addresses or CIDRs that must never be handed out.
func ParseReserved(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, cfgErr(`write each reserved entry as an address ("10.244.1.2") or a CIDR ("10.244.1.240/28")`,
				"ipam: reserved entry %q is neither an address nor a CIDR", s)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// Size is the number of addresses a range can hand out before reservations,
// saturating at MaxUint64 for huge IPv6 ranges.
func (r Range) Size() uint64 {
	n := r.count()
	if !n.IsUint64() {
		return math.MaxUint64
	}
	return n.Uint64()
}

// count is Size without saturation.
func (r Range) count() *big.Int {
	s, e := new(big.Int).SetBytes(r.Start.AsSlice()), new(big.Int).SetBytes(r.End.AsSlice())
	n := new(big.Int).Sub(e, s)
	n.Add(n, big.NewInt(1))
	if r.Gateway.Compare(r.Start) >= 0 && r.Gateway.Compare(r.End) <= 0 {
		n.Sub(n, big.NewInt(1))
	}
	return n
}

// Contains reports whether the range may hand out a.
func (r Range) Contains(a netip.Addr) bool {
	return a.Compare(r.Start) >= 0 && a.Compare(r.End) <= 0 && a != r.Gateway
}

// Family is "IPv4" or "IPv6".
func (s RangeSet) Family() string { return familyName(s[0].Subnet.Addr().Is4()) }

// ErrExhausted is returned when a range set has no free address.
var ErrExhausted = errors.New("no free address")

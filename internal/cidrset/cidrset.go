// Package cidrset reduces lists of CIDR prefixes to what an nftables
// interval set accepts: nft refuses overlapping elements ("conflicting
// intervals specified"), and two prefixes either nest or are disjoint, so
// dropping duplicates and every prefix another one covers is exactly what
// makes a list acceptable, without changing the addresses it matches.
package cidrset

import (
	"net/netip"
	"slices"
)

// Minimal returns ps without duplicates and without any prefix another one
// covers, sorted by address, so equal inputs give equal outputs. The
// prefixes must be masked and of one family; ps is reordered.
func Minimal(ps []netip.Prefix) []netip.Prefix {
	// Widest first, so a prefix is checked against every wider one kept.
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if a.Bits() != b.Bits() {
			return a.Bits() - b.Bits()
		}
		return a.Addr().Compare(b.Addr())
	})
	var kept []netip.Prefix
	for _, p := range ps {
		if !slices.ContainsFunc(kept, func(k netip.Prefix) bool { return k.Contains(p.Addr()) }) {
			kept = append(kept, p)
		}
	}
	slices.SortFunc(kept, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return kept
}

package masq

import (
	"fmt"
	"net/netip"
	"slices"
)

// splitFamilies validates ps and returns its IPv4 and IPv6 prefixes as nft
// interval-set elements: masked (10.244.1.7/16 is 10.244.0.0/16), without
// duplicates, and without any prefix that another one in the list already
// covers. nft refuses overlapping elements in an interval set ("conflicting
// intervals specified"), and two CIDRs either nest or are disjoint, so
// dropping the covered ones is exactly what makes the list acceptable.
// The result is sorted, so equal configs give equal transactions.
func splitFamilies(what string, ps []netip.Prefix) (v4, v6 []string, err error) {
	var four, six []netip.Prefix
	for _, p := range ps {
		switch {
		case !p.IsValid():
			return nil, nil, fmt.Errorf("%s %q: not a valid prefix", what, p.String())
		case p.Addr().Is4In6():
			return nil, nil, fmt.Errorf("%s %s: IPv4-mapped IPv6 prefix; write it as IPv4", what, p)
		case p.Addr().Is4():
			four = append(four, p.Masked())
		default:
			six = append(six, p.Masked())
		}
	}
	return elements(four), elements(six), nil
}

// elements drops prefixes covered by another and formats the rest.
func elements(ps []netip.Prefix) []string {
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
	out := make([]string, len(kept))
	for i, p := range kept {
		out[i] = p.String()
	}
	return out
}

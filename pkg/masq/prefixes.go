package masq

import (
	"fmt"
	"net/netip"

	"github.com/podnet/podnet/internal/cidrset"
)

// splitFamilies validates ps and returns its IPv4 and IPv6 prefixes as nft
// interval-set elements: masked (10.244.1.7/16 is 10.244.0.0/16) and
// reduced by cidrset.Minimal, sorted so equal configs give equal
// transactions.
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
	kept := cidrset.Minimal(ps)
	out := make([]string, len(kept))
	for i, p := range kept {
		out[i] = p.String()
	}
	return out
}

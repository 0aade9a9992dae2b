package proxy

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"sigs.k8s.io/knftables"
)

// TableName is the nftables table the proxy owns, one per address family
// ("ip podnet-proxy", later "ip6 podnet-proxy"). Nothing else in podnet
// writes it, and the proxy writes nothing else.
const TableName = "podnet-proxy"

// Family is everything that differs between the IPv4 and the IPv6 proxy:
// the nftables family of the table, the words of the rules, and which
// addresses of the API objects belong to it. A Proxier, a State and the
// model that builds it are each for one Family; dual stack is two of each.
type Family struct {
	// IPFamily is the Kubernetes name (Service.spec.clusterIPs, ipFamilies).
	IPFamily corev1.IPFamily
	// AddressType is the EndpointSlice address type of this family.
	AddressType discoveryv1.AddressType
	// NFT is the nftables table family.
	NFT knftables.Family
	// IP is the nft payload keyword ("ip daddr", "ip6 saddr").
	IP string
	// AddrType is the nft data type of one address ("ipv4_addr").
	AddrType string
	// Loopback is never a NodePort destination (as in kube-proxy).
	Loopback netip.Prefix
	// ICMPReject is the reject statement for what is not TCP.
	ICMPReject string
}

// IPv4 is the family the lab and podnet's tests run.
var IPv4 = Family{
	IPFamily:    corev1.IPv4Protocol,
	AddressType: discoveryv1.AddressTypeIPv4,
	NFT:         knftables.IPv4Family,
	IP:          "ip",
	AddrType:    "ipv4_addr",
	Loopback:    netip.MustParsePrefix("127.0.0.0/8"),
	ICMPReject:  "reject with icmp type port-unreachable",
}

// IPv6 is the second family, for dual-stack clusters. The model and the
// rules are written for it too, but only IPv4 runs in the lab today.
var IPv6 = Family{
	IPFamily:    corev1.IPv6Protocol,
	AddressType: discoveryv1.AddressTypeIPv6,
	NFT:         knftables.IPv6Family,
	IP:          "ip6",
	AddrType:    "ipv6_addr",
	Loopback:    netip.MustParsePrefix("::1/128"),
	ICMPReject:  "reject with icmpv6 type port-unreachable",
}

// has says whether a belongs to the family (4-in-6 addresses do not).
func (f Family) has(a netip.Addr) bool {
	if f.IPFamily == corev1.IPv4Protocol {
		return a.Is4()
	}
	return a.Is6() && !a.Is4In6()
}

// parseAddr parses s as an address of the family; ok is false for
// anything else, including an address of the other family.
func (f Family) parseAddr(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil || !f.has(a) || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a, true
}

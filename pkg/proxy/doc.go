// Package proxy owns podnet's Service proxy, which replaces kube-proxy:
// the nftables table "ip podnet-proxy" (and "ip6 podnet-proxy" once IPv6
// runs) and nothing else, the conntrack hygiene of UDP Services, and the
// health-check node ports of externalTrafficPolicy: Local Services.
//
// It has three layers:
//
//   - the model (Build): from Services, EndpointSlices and a few facts
//     about the node, the desired State of every Service port — addresses,
//     NodePort, traffic policies, affinity and endpoints with their
//     conditions. Pure, and where the Kubernetes rules live (terminating
//     endpoints only when no ready one exists, Local policies, headless
//     and ExternalName Services not proxied);
//   - the rendering: each Service port's own chains, affinity sets and
//     verdict-map elements, as plain data;
//   - the Proxier: writes the table through knftables. A full sync
//     rewrites it whole in one transaction, reconciled against the
//     kernel; a partial sync writes only the objects of the ports whose
//     rendering changed since the last successful sync.
//
// A packet finds its Service with one verdict-map lookup (address,
// protocol and port; or protocol and port for NodePorts) and its endpoint
// with one numgen lookup, so the cost of a new connection does not grow
// with the number of Services or endpoints. docs/proxy.md describes the
// table, the order of its hooks, the masquerade policy and the syncs.
//
// The layout, as `nft list table ip podnet-proxy` shows it (abridged):
//
//	table ip podnet-proxy {
//		map service-ips { type ipv4_addr . inet_proto . inet_service : verdict
//			elements = { 10.96.0.10 . udp . 53 : goto svc-…-kube-system/kube-dns/udp/dns, … } }
//		map service-nodeports { type inet_proto . inet_service : verdict }
//		map no-endpoint-services { … elements = { 10.96.5.5 . tcp . 80 : goto reject-chain } }
//		map no-endpoint-nodeports { type inet_proto . inet_service : verdict }
//		chain filter-prerouting { type filter hook prerouting priority -110; ct state new jump endpoints-check }
//		chain filter-output { type filter hook output priority -110; ct state new jump endpoints-check }
//		chain nat-prerouting { type nat hook prerouting priority -100; jump services }
//		chain nat-output { type nat hook output priority -100; jump services }
//		chain nat-postrouting { type nat hook postrouting priority 100; jump masquerading }
//		chain services {
//			ip daddr . meta l4proto . th dport vmap @service-ips
//			fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
//		}
//		chain svc-…-default/web/tcp/http {
//			ip daddr 10.96.0.20 ip saddr != @cluster-cidrs jump mark-for-masquerade
//			numgen random mod 2 vmap { 0 : goto ep-…__10.244.1.5/8080, 1 : goto ep-…__10.244.2.7/8080 }
//		}
//		chain ep-…-default/web/tcp/http__10.244.1.5/8080 {
//			ip saddr 10.244.1.5 jump mark-for-masquerade
//			meta l4proto tcp dnat to 10.244.1.5:8080
//		}
//		…
//	}
package proxy

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
//     map elements, as plain data;
//   - the Proxier: writes the table through knftables. A full sync
//     rewrites it whole in one transaction, reconciled against the
//     kernel; a partial sync writes only the objects of the ports whose
//     rendering changed since the last successful sync.
//
// A packet finds its Service with one verdict-map lookup (address,
// protocol and port; or protocol and port for NodePorts) and its endpoint
// with one numgen draw and one map lookup, so the cost of a new
// connection grows neither with the number of Services nor with their
// endpoints. docs/proxy.md describes the table, the order of its hooks,
// the masquerade policy, the syncs, and why the endpoint choice is a
// shared data map rather than kube-proxy's anonymous verdict map per
// Service (the kernel's cost of the latter is quadratic).
//
// The layout, as `nft list table ip podnet-proxy` shows it (abridged):
//
//	table ip podnet-proxy {
//		set cluster-cidrs { type ipv4_addr; flags interval; elements = { 10.244.0.0/16 } }
//		set pod-cidrs { type ipv4_addr; flags interval; elements = { 10.244.1.0/24 } }
//		set hairpin { type ipv4_addr . ipv4_addr; elements = { 10.244.1.2 . 10.244.1.2 } }
//		map service-ips { type ipv4_addr . inet_proto . inet_service : verdict
//			elements = { 10.96.0.10 . tcp . 80 : goto svc-SUSTUHLJ-default/web/tcp/http,
//				     198.51.100.15 . tcp . 80 : goto ext-4Z6N3DUC-default/local/tcp/http } }
//		map service-nodeports { type inet_proto . inet_service : verdict
//			elements = { tcp . 30080 : goto ext-SUSTUHLJ-default/web/tcp/http } }
//		map no-endpoint-services { … elements = { 10.96.0.11 . tcp . 80 : goto reject-chain } }
//		map no-endpoint-nodeports { … elements = { tcp . 30082 : goto reject-chain } }
//		map pick-tcp-14 { typeof numgen random mod 1 : ip daddr . tcp dport
//			elements = { 2 : 10.244.1.2 . 8080, 3 : 10.244.1.3 . 8080, … } }
//		chain filter-prerouting { type filter hook prerouting priority -110; ct state new jump endpoints-check }
//		chain filter-output { type filter hook output priority -110; ct state new jump endpoints-check }
//		chain nat-prerouting { type nat hook prerouting priority -100; jump services }
//		chain nat-output { type nat hook output priority -100; jump services }
//		chain nat-postrouting { type nat hook postrouting priority 100; jump masquerading }
//		chain endpoints-check {
//			ip daddr . meta l4proto . th dport vmap @no-endpoint-services
//			fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports
//		}
//		chain services {
//			ip daddr . meta l4proto . th dport vmap @service-ips
//			fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
//		}
//		chain reject-chain { meta l4proto tcp reject with tcp reset; reject with icmp type port-unreachable }
//		chain masquerading {
//			ct status dnat ip saddr . ip daddr @hairpin jump mark-for-masquerade
//			meta mark & 0x00004000 == 0x00000000 return
//			meta mark set meta mark ^ 0x00004000
//			masquerade fully-random
//		}
//		chain svc-SUSTUHLJ-default/web/tcp/http {
//			ip daddr 10.96.0.10 ip saddr != @cluster-cidrs jump mark-for-masquerade
//			meta l4proto tcp dnat ip addr . port to numgen random mod 2 offset 2 map @pick-tcp-14
//		}
//		chain ext-SUSTUHLJ-default/web/tcp/http { jump mark-for-masquerade; goto svc-SUSTUHLJ-default/web/tcp/http }
//		chain ext-4Z6N3DUC-default/local/tcp/http {
//			ip saddr @pod-cidrs goto svc-4Z6N3DUC-default/local/tcp/http
//			fib saddr type local jump mark-for-masquerade
//			fib saddr type local goto svc-4Z6N3DUC-default/local/tcp/http
//			goto loc-4Z6N3DUC-default/local/tcp/http
//		}
//		…
//	}
package proxy

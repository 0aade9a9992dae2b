// Package antispoof makes every pod send only from its own addresses, and
// the node accept VXLAN only from the cluster's nodes. NetworkPolicy by
// address is void without it: a pod that adds another pod's IP to its
// eth0 would otherwise pass every rule that trusts that IP.
//
// Two tables, both podnet's own, written through knftables transactions:
//
//   - "bridge podnet-antispoof": a prerouting chain that sees every frame
//     entering the pod bridge from a pod's veth (the veths carry podnet's
//     link group, wire.Group, so no other bridge port is touched). A frame
//     passes only if it is IPv4 whose (veth, source MAC, source IP) is in
//     the set "pods", or ARP whose sender MAC and sender IP, with the veth,
//     are in it too. Everything else from a pod's veth is dropped before
//     it is bridged or routed: forged sources, ARP replies claiming
//     another pod's address, and IPv6 (the cluster is IPv4; a link-local
//     IPv6 path between pods of one bridge would bypass NetworkPolicy,
//     which matches IPv4). A veth not yet in the set sends nothing: podnetd
//     adds a pod before the plugin's ADD returns (package announce), so a
//     pod is closed until its entry is in, never open.
//   - "inet podnet-antispoof": an input chain that drops VXLAN (UDP to the
//     VTEP's port) from any source but the Nodes' addresses, before the
//     kernel decapsulates it.
//
// Drops are counted (named counters, by kind) and logged to NFLOG group
// LogGroup, rate-limited, with a prefix naming the table's rule.
package antispoof

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"sigs.k8s.io/knftables"
)

// TableName is the name of both tables (families bridge and inet).
const TableName = "podnet-antispoof"

// LogGroup is the NFLOG group of the drop log (the policy engine's is 7).
const LogGroup = 8

// Log prefixes: which rule dropped a logged packet.
const (
	PortPrefix  = "podnet-spoof"       // a frame from a pod's veth
	VXLANPrefix = "podnet-spoof-vxlan" // VXLAN from a stranger
)

// Kinds of drop, the names of the tables' counters.
const (
	KindIPv4  = "ipv4"  // IPv4 from a source IP or MAC that is not the pod's
	KindARP   = "arp"   // ARP claiming an address or MAC that is not the pod's
	KindIPv6  = "ipv6"  // IPv6 (not logged: the cluster is IPv4)
	KindOther = "other" // any other ethertype (VLAN tags, raw frames)
	KindVXLAN = "vxlan" // VXLAN from an address that is not a Node's
)

const (
	portsSet  = "pods"
	nodesSet  = "nodes"
	portChain = "prerouting"
	vxChain   = "input"
	logRate   = "limit rate 10/second burst 20 packets"
)

// counterName is the named counter of a kind of drop (the kinds
// themselves are nft keywords).
func counterName(kind string) string { return counterPrefix + kind }

const counterPrefix = "dropped-"

// Port is a pod's veth and the addresses its pod may send from.
type Port struct {
	// Name is the host end of the pod's veth (a port of the pod bridge).
	Name string
	MAC  net.HardwareAddr
	IPs  []netip.Addr // IPv4 only (the cluster is IPv4)
	// Pod names the pod ("namespace/name"), for logs; may be empty.
	Pod string
}

// Guard writes the two tables.
type Guard struct {
	bridge, inet knftables.Interface
	group        uint32
	// portsUp and vxUp say that this process wrote the table's skeleton:
	// until then (and after a failure) a sync writes the whole table.
	portsUp, vxUp bool
}

// New returns a Guard writing through bridge (bound to knftables.BridgeFamily,
// TableName) and inet (knftables.InetFamily, TableName), for the pod veths
// of link group group.
func New(bridge, inet knftables.Interface, group uint32) *Guard {
	return &Guard{bridge: bridge, inet: inet, group: group}
}

// NewTables returns the nft interfaces for the two tables.
func NewTables() (bridge, inet knftables.Interface, err error) {
	if bridge, err = knftables.New(knftables.BridgeFamily, TableName); err != nil {
		return nil, nil, fmt.Errorf("nftables (bridge family) for anti-spoofing: %w", err)
	}
	if inet, err = knftables.New(knftables.InetFamily, TableName); err != nil {
		return nil, nil, fmt.Errorf("nftables for anti-spoofing: %w", err)
	}
	return bridge, inet, nil
}

// SyncPorts makes the pods set hold exactly these ports' (veth, MAC, IP)
// triples, and reports how many elements it added and deleted. The first
// sync of a process (and the first after a failure) writes the whole table
// in one transaction — skeleton, set flushed and refilled — so a podnetd
// that restarts leaves no moment in which a pod is open or cut off; later
// syncs change only the elements that differ from what the kernel holds.
func (g *Guard) SyncPorts(ctx context.Context, ports []Port) (int, error) {
	want := map[string][]string{}
	for _, p := range ports {
		if p.Name == "" || len(p.MAC) != 6 {
			continue
		}
		for _, ip := range p.IPs {
			if ip.Is4() {
				k := []string{p.Name, p.MAC.String(), ip.String()}
				want[strings.Join(k, " . ")] = k
			}
		}
	}
	tx := g.bridge.NewTransaction()
	changed := 0
	if !g.portsUp {
		g.portSkeleton(tx)
		tx.Flush(&knftables.Set{Name: portsSet})
		for _, k := range want {
			tx.Add(&knftables.Element{Set: portsSet, Key: k})
		}
		changed = len(want)
	} else {
		have, err := g.bridge.ListElements(ctx, "set", portsSet)
		if err != nil {
			g.portsUp = false
			return 0, fmt.Errorf("list the anti-spoofing set: %w", err)
		}
		seen := map[string]bool{}
		for _, e := range have {
			k := strings.Join(normKey(e.Key), " . ")
			seen[k] = true
			if _, ok := want[k]; !ok {
				tx.Delete(&knftables.Element{Set: portsSet, Key: e.Key})
				changed++
			}
		}
		for k, v := range want {
			if !seen[k] {
				tx.Add(&knftables.Element{Set: portsSet, Key: v})
				changed++
			}
		}
	}
	if tx.NumOperations() == 0 {
		return 0, nil
	}
	if err := g.bridge.Run(ctx, tx); err != nil {
		g.portsUp = false
		return 0, fmt.Errorf("write the anti-spoofing table (bridge %s): %w", TableName, err)
	}
	g.portsUp = true
	return changed, nil
}

// normKey makes a listed element's key comparable with ours (nft prints
// MACs in lower case and may quote interface names).
func normKey(k []string) []string {
	out := make([]string, len(k))
	for i, s := range k {
		out[i] = strings.ToLower(strings.Trim(s, `"`))
	}
	return out
}

func (g *Guard) portSkeleton(tx *knftables.Transaction) {
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("podnet: pods send only from their own addresses")})
	tx.Add(&knftables.Set{Name: portsSet, Type: "ifname . ether_addr . ipv4_addr",
		Comment: knftables.PtrTo("pod veth . pod MAC . pod IP")})
	for _, k := range []string{KindIPv4, KindARP, KindIPv6, KindOther} {
		tx.Add(&knftables.Counter{Name: counterName(k)})
	}
	tx.Add(&knftables.Chain{Name: portChain, Type: knftables.PtrTo(knftables.FilterType),
		Hook: knftables.PtrTo(knftables.PreroutingHook), Priority: knftables.PtrTo(knftables.DNATPriority)})
	tx.Flush(&knftables.Chain{Name: portChain})
	for _, r := range portRules(g.group) {
		tx.Add(&knftables.Rule{Chain: portChain, Rule: r})
	}
}

// portRules are the prerouting chain's rules, in order.
func portRules(group uint32) []string {
	return []string{
		// Only frames from podnet's pod veths: every other port is someone else's.
		fmt.Sprintf("meta iifgroup != %#x accept", group),
		"ether type ip iifname . ether saddr . ip saddr @" + portsSet + " accept",
		"ether type arp iifname . ether saddr . arp saddr ip @" + portsSet +
			" iifname . arp saddr ether . arp saddr ip @" + portsSet + " accept",
		"ether type ip6 counter name " + counterName(KindIPv6) + " drop",
		fmt.Sprintf("ether type { ip, arp } %s log prefix %q group %d", logRate, PortPrefix, LogGroup),
		"ether type ip counter name " + counterName(KindIPv4) + " drop",
		"ether type arp counter name " + counterName(KindARP) + " drop",
		"counter name " + counterName(KindOther) + " drop",
	}
}

// SyncVXLAN makes the node accept VXLAN on UDP port only from nodes; port
// 0 (a backend without VXLAN) deletes the table. Like SyncPorts, the first
// sync writes the whole table and later ones only the set's changes.
func (g *Guard) SyncVXLAN(ctx context.Context, port int, nodes []netip.Addr) error {
	if port == 0 {
		g.vxUp = false
		return deleteTable(ctx, g.inet)
	}
	want := map[string]bool{}
	for _, n := range nodes {
		if n.Is4() {
			want[n.String()] = true
		}
	}
	tx := g.inet.NewTransaction()
	if !g.vxUp {
		tx.Add(&knftables.Table{Comment: knftables.PtrTo("podnet: VXLAN only from the cluster's nodes")})
		tx.Add(&knftables.Set{Name: nodesSet, Type: "ipv4_addr", Comment: knftables.PtrTo("the Nodes' addresses")})
		tx.Add(&knftables.Counter{Name: counterName(KindVXLAN)})
		tx.Add(&knftables.Chain{Name: vxChain, Type: knftables.PtrTo(knftables.FilterType),
			Hook: knftables.PtrTo(knftables.InputHook), Priority: knftables.PtrTo(knftables.FilterPriority + "-10")})
		tx.Flush(&knftables.Chain{Name: vxChain})
		for _, r := range vxlanRules(port) {
			tx.Add(&knftables.Rule{Chain: vxChain, Rule: r})
		}
		tx.Flush(&knftables.Set{Name: nodesSet})
		for ip := range want {
			tx.Add(&knftables.Element{Set: nodesSet, Key: []string{ip}})
		}
	} else {
		have, err := g.inet.ListElements(ctx, "set", nodesSet)
		if err != nil {
			g.vxUp = false
			return fmt.Errorf("list the VXLAN peers set: %w", err)
		}
		seen := map[string]bool{}
		for _, e := range have {
			seen[e.Key[0]] = true
			if !want[e.Key[0]] {
				tx.Delete(&knftables.Element{Set: nodesSet, Key: e.Key})
			}
		}
		for ip := range want {
			if !seen[ip] {
				tx.Add(&knftables.Element{Set: nodesSet, Key: []string{ip}})
			}
		}
	}
	if tx.NumOperations() == 0 {
		return nil
	}
	if err := g.inet.Run(ctx, tx); err != nil {
		g.vxUp = false
		return fmt.Errorf("write the VXLAN filter (inet %s): %w", TableName, err)
	}
	g.vxUp = true
	return nil
}

func vxlanRules(port int) []string {
	return []string{
		fmt.Sprintf("udp dport %d ip saddr != @%s %s log prefix %q group %d", port, nodesSet, logRate, VXLANPrefix, LogGroup),
		fmt.Sprintf("udp dport %d ip saddr != @%s counter name %s drop", port, nodesSet, counterName(KindVXLAN)),
	}
}

// Drops reads the tables' counters: packets dropped, by kind.
func (g *Guard) Drops(ctx context.Context) (map[string]uint64, error) {
	out := map[string]uint64{}
	var errs []error
	for _, nft := range []knftables.Interface{g.bridge, g.inet} {
		cs, err := nft.ListCounters(ctx)
		if err != nil {
			if !knftables.IsNotFound(err) {
				errs = append(errs, err)
			}
			continue
		}
		for _, c := range cs {
			if c == nil {
				continue // knftables.Fake lists nil counters
			}
			if k, ok := strings.CutPrefix(c.Name, counterPrefix); ok && c.Packets != nil {
				out[k] += *c.Packets
			}
		}
	}
	return out, errors.Join(errs...)
}

// Kinds lists the kinds of drop, for metrics.
func Kinds() []string { return []string{KindIPv4, KindARP, KindIPv6, KindOther, KindVXLAN} }

// Cleanup deletes both tables, if they exist: every pod may then send
// from any address. A nil interface is skipped.
func Cleanup(ctx context.Context, bridge, inet knftables.Interface) error {
	return errors.Join(deleteTable(ctx, bridge), deleteTable(ctx, inet))
}

func deleteTable(ctx context.Context, nft knftables.Interface) error {
	if nft == nil {
		return nil
	}
	tx := nft.NewTransaction()
	tx.Delete(&knftables.Table{})
	if err := nft.Run(ctx, tx); err != nil && !knftables.IsNotFound(err) {
		return fmt.Errorf("delete table %s: %w", TableName, err)
	}
	return nil
}

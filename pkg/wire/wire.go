// Package wire owns the kernel side of a pod's attachment to the node: the
// node bridge (cni0) with its gateway addresses, and the veth pair whose pod
// end is created directly inside the pod's network namespace, with its
// addresses, routes, MTU and sysctls. It only touches objects it can prove
// are its own: bridges by configured name, host veths by their link group
// (see Group) and name.
package wire

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash/fnv"
	"net"
	"net/netip"
	"strings"
)

// Bridge is the desired node bridge.
type Bridge struct {
	Name string
	// Gateways are the bridge's addresses with their subnet's prefix length,
	// e.g. 10.244.1.1/24.
	Gateways []netip.Prefix
}

// BridgeLink is what EnsureBridge found or made.
type BridgeLink struct {
	Index int
	MAC   net.HardwareAddr
}

// Route is a route inside the pod; an invalid Gw means on-link.
type Route struct {
	Dst netip.Prefix
	Gw  netip.Addr
}

// Pod is the desired attachment of one pod interface.
type Pod struct {
	Network     string // CNI network name, recorded in the host veth's alias
	ContainerID string
	IfName      string
	NetNS       string // path of the pod's network namespace
	Bridge      string
	BridgeIndex int // from EnsureBridge; 0 means look the bridge up by name
	MTU         int
	Hairpin     bool
	Addrs       []netip.Prefix // pod addresses with the subnet's prefix length
	Routes      []Route
}

// Attached describes what Attach made.
type Attached struct {
	HostName string
	HostMAC  net.HardwareAddr
	PodMAC   net.HardwareAddr
}

// HostLink is a host veth in a network's link group. ContainerID and
// IfName come from its alias and are empty when a plugin died before
// setting it.
type HostLink struct {
	Name        string
	Network     string
	ContainerID string
	IfName      string
}

// Errors the plugin maps to CNI codes.
var (
	ErrNetNSNotFound = errors.New("network namespace does not exist")
	ErrNotBridge     = errors.New("exists and is not a bridge")
	ErrIfaceExists   = errors.New("interface already exists in the pod namespace")
)

// HostName is the host end's name: "veth" and 11 hex digits of a hash of
// the container ID and interface name, so every attachment has one stable
// name (a retried ADD finds its leftovers; DEL needs no state).
func HostName(containerID, ifName string) string {
	h := sha256.Sum256([]byte(containerID + "/" + ifName))
	return "veth" + hex.EncodeToString(h[:])[:11]
}

const aliasPrefix = "podnet/"

// Group is the link group (IFLA_GROUP) of a network's host veths: "pn" in
// the high 16 bits and a hash of the network name in the low 16. Unlike the
// alias, the kernel sets the group in the same message that creates the
// link, so a plugin killed right after creating a veth still leaves it
// marked as podnet's, and GC finds it.
func Group(network string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(network))
	return 0x706e0000 | h.Sum32()&0xffff
}

// Alias is the IFLA_IFALIAS that tells a person which attachment a host
// veth belongs to (`ip link` shows it).
func Alias(network, containerID, ifName string) string {
	return aliasPrefix + network + "/" + containerID + "/" + ifName
}

// ParseAlias reverses Alias; ok is false for anyone else's alias.
func ParseAlias(alias string) (HostLink, bool) {
	rest, ok := strings.CutPrefix(alias, aliasPrefix)
	if !ok {
		return HostLink{}, false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return HostLink{}, false
	}
	return HostLink{Network: parts[0], ContainerID: parts[1], IfName: parts[2]}, true
}

// GatewayMAC is the bridge's fixed MAC, derived from its first gateway
// address. A bridge otherwise takes the lowest MAC of its ports, so the
// gateway's MAC would change as pods come and go and every pod's ARP entry
// for its gateway would go stale.
func GatewayMAC(gws []netip.Prefix) net.HardwareAddr {
	if len(gws) == 0 {
		return nil
	}
	return addrMAC(gws[0].Addr())
}

// PodMAC is a pod interface's MAC, derived from its first address (IPv4
// preferred): a pod that reuses an address reuses its MAC, so neighbour
// entries elsewhere stay right.
func PodMAC(addrs []netip.Prefix) net.HardwareAddr {
	for _, p := range addrs {
		if p.Addr().Is4() {
			return addrMAC(p.Addr())
		}
	}
	if len(addrs) > 0 {
		return addrMAC(addrs[0].Addr())
	}
	return nil
}

// addrMAC is 0a:58 followed by the address's last four bytes: locally
// administered, unicast.
func addrMAC(a netip.Addr) net.HardwareAddr {
	b := a.AsSlice()
	return net.HardwareAddr{0x0a, 0x58, b[len(b)-4], b[len(b)-3], b[len(b)-2], b[len(b)-1]}
}

// hostMAC is the host end's MAC, derived from its name: stable, and no
// netlink round trip is needed to learn it after creation.
func hostMAC(name string) net.HardwareAddr {
	h := sha256.Sum256([]byte(name))
	return net.HardwareAddr{0x0a, 0x59, h[0], h[1], h[2], h[3]}
}

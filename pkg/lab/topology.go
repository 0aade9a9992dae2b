// Package lab builds and tears down the podnet lab: a whole Kubernetes
// cluster on one Linux machine, with namespaces as machines (see package
// machine), an underlay switch, the real control plane (etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler) and a lab node
// agent per node. Everything it makes is recorded in a state file before it
// is made, so Down removes a half-built lab as well as a whole one.
package lab

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
)

// The seeds' addresses (seed 003's Vagrant lab on a VirtualBox host-only
// network, flannel's cluster CIDR, kubeadm's Service CIDR).
var (
	Underlay       = netip.MustParsePrefix("192.168.56.0/24")
	HostIP         = netip.MustParseAddr("192.168.56.1")
	ControlPlaneIP = netip.MustParseAddr("192.168.56.10")
	ClusterCIDR    = netip.MustParsePrefix("10.244.0.0/16")
	ServiceCIDR    = netip.MustParsePrefix("10.96.0.0/12")
	APIServiceIP   = netip.MustParseAddr("10.96.0.1")
	DNSServiceIP   = netip.MustParseAddr("10.96.0.10")
)

const (
	// SwitchNS is the network namespace of the underlay switch.
	SwitchNS = "podnet-lab-switch"
	// SwitchBridge is the switch itself.
	SwitchBridge = "sw0"
	// HostLink is the host's one interface on the underlay (VirtualBox's
	// host-only adapter in seed 003).
	HostLink = "podnetlab0"
	// NodeLink is each machine's interface on the underlay (seed 003's eth1).
	NodeLink = "eth1"
	// ControlPlane is the control plane machine's name.
	ControlPlane = "controlplane"
	// InternetNS stands for the internet: a host on the underlay switch at
	// InternetGatewayIP that also holds InternetHostIP, an address outside
	// every lab network (TEST-NET-3: it never leaves the lab). Machines route
	// InternetNet through it, so pods' egress to it is masqueraded.
	InternetNS = "podnet-lab-internet"
)

// The "internet" of the lab.
var (
	InternetGatewayIP = netip.MustParseAddr("192.168.56.254")
	InternetHostIP    = netip.MustParseAddr("203.0.113.10")
	InternetNet       = netip.MustParsePrefix("203.0.113.0/24")
)

// The lab's second underlay segment (`lab up --far-workers N`): a second
// switch joined to the first by a router, so that some nodes are not on
// the others' L2 segment — what hybrid routes around with VXLAN and
// host-gw refuses.
var (
	FarUnderlay = netip.MustParsePrefix("192.168.57.0/24")
	// RouterIP is the router's address on the first segment, RouterFarIP
	// on the second.
	RouterIP    = netip.MustParseAddr("192.168.56.253")
	RouterFarIP = netip.MustParseAddr("192.168.57.254")
)

const (
	// FarSwitchNS is the network namespace of the second segment's switch.
	FarSwitchNS = "podnet-lab-switch2"
	// RouterNS is the router between the two segments.
	RouterNS = "podnet-lab-router"
)

// MachineSpec is one machine of the lab.
type MachineSpec struct {
	Name string     `json:"name"`
	IP   netip.Addr `json:"ip"`
	// ControlPlane marks the machine running etcd and the control plane
	// components; it is also a (tainted) node.
	ControlPlane bool `json:"controlPlane,omitempty"`
	// Far puts the machine on the second segment (FarUnderlay), behind the
	// router.
	Far bool `json:"far,omitempty"`
}

// Segment is the underlay network the machine's eth1 is on.
func (m MachineSpec) Segment() netip.Prefix {
	if m.Far {
		return FarUnderlay
	}
	return Underlay
}

// Machines returns the lab's machines for n workers, the last far of them
// on the second segment (node-N keeps its number: 192.168.57.(10+N)).
func Machines(workers, far int) []MachineSpec {
	ms := []MachineSpec{{Name: ControlPlane, IP: ControlPlaneIP, ControlPlane: true}}
	for i := 1; i <= workers; i++ {
		m := MachineSpec{Name: fmt.Sprintf("node-%d", i), Far: i > workers-far}
		b := m.Segment().Addr().As4()
		b[3] = byte(ControlPlaneIP.As4()[3] + uint8(i))
		m.IP = netip.AddrFrom4(b)
		ms = append(ms, m)
	}
	return ms
}

// hasFar says whether any machine is on the second segment.
func hasFar(ms []MachineSpec) bool {
	for _, m := range ms {
		if m.Far {
			return true
		}
	}
	return false
}

func sh(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func nsExists(name string) bool { return sh("ip", "netns", "pids", name) == nil }

func linkExists(name string) bool { return sh("ip", "link", "show", "dev", name) == nil }

// buildSwitch makes the underlay switch and the host's link to it; the host
// gets 192.168.56.1/24 on podnetlab0 and nothing else of the host changes.
func buildSwitch() error {
	steps := [][]string{
		{"ip", "netns", "add", SwitchNS},
		{"ip", "-n", SwitchNS, "link", "add", SwitchBridge, "type", "bridge"},
		{"ip", "-n", SwitchNS, "link", "set", SwitchBridge, "up"},
		{"ip", "link", "add", HostLink, "type", "veth", "peer", "name", "host", "netns", SwitchNS},
		{"ip", "-n", SwitchNS, "link", "set", "host", "master", SwitchBridge, "up"},
		{"ip", "addr", "add", netip.PrefixFrom(HostIP, Underlay.Bits()).String(), "dev", HostLink},
		{"ip", "link", "set", HostLink, "up"},
		{"ip", "netns", "add", InternetNS},
		{"ip", "-n", InternetNS, "link", "set", "lo", "up"},
		{"ip", "-n", InternetNS, "addr", "add", netip.PrefixFrom(InternetHostIP, 32).String(), "dev", "lo"},
		{"ip", "link", "add", "name", "eth0", "netns", InternetNS, "type", "veth", "peer", "name", "internet", "netns", SwitchNS},
		{"ip", "-n", SwitchNS, "link", "set", "internet", "master", SwitchBridge, "up"},
		{"ip", "-n", InternetNS, "addr", "add", netip.PrefixFrom(InternetGatewayIP, Underlay.Bits()).String(), "dev", "eth0"},
		{"ip", "-n", InternetNS, "link", "set", "eth0", "up"},
	}
	for _, s := range steps {
		if err := sh(s...); err != nil {
			return fmt.Errorf("build the underlay switch: %w", err)
		}
	}
	return nil
}

// buildRouter makes the second segment's switch and the router joining it
// to the first (forwarding, no NAT): machines on either side route the
// other segment through it, and the internet host routes the second
// segment back through it.
func buildRouter() error {
	steps := [][]string{
		{"ip", "netns", "add", FarSwitchNS},
		{"ip", "-n", FarSwitchNS, "link", "add", SwitchBridge, "type", "bridge"},
		{"ip", "-n", FarSwitchNS, "link", "set", SwitchBridge, "up"},
		{"ip", "netns", "add", RouterNS},
		{"ip", "-n", RouterNS, "link", "set", "lo", "up"},
		{"ip", "netns", "exec", RouterNS, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		{"ip", "link", "add", "name", "eth0", "netns", RouterNS, "type", "veth", "peer", "name", "router", "netns", SwitchNS},
		{"ip", "link", "add", "name", "eth1", "netns", RouterNS, "type", "veth", "peer", "name", "router", "netns", FarSwitchNS},
		{"ip", "-n", SwitchNS, "link", "set", "router", "master", SwitchBridge, "up"},
		{"ip", "-n", FarSwitchNS, "link", "set", "router", "master", SwitchBridge, "up"},
		{"ip", "-n", RouterNS, "addr", "add", netip.PrefixFrom(RouterIP, Underlay.Bits()).String(), "dev", "eth0"},
		{"ip", "-n", RouterNS, "addr", "add", netip.PrefixFrom(RouterFarIP, FarUnderlay.Bits()).String(), "dev", "eth1"},
		{"ip", "-n", RouterNS, "link", "set", "eth0", "up"},
		{"ip", "-n", RouterNS, "link", "set", "eth1", "up"},
		{"ip", "-n", RouterNS, "route", "add", InternetNet.String(), "via", InternetGatewayIP.String(), "dev", "eth0"},
		{"ip", "-n", InternetNS, "route", "add", FarUnderlay.String(), "via", RouterIP.String(), "dev", "eth0"},
	}
	for _, s := range steps {
		if err := sh(s...); err != nil {
			return fmt.Errorf("build the second segment and its router: %w", err)
		}
	}
	return nil
}

// plug connects a machine to its segment's switch with its eth1; with a
// second segment, the other segment is routed through the router.
func plug(m MachineSpec, far bool) error {
	sw, gw, other := SwitchNS, InternetGatewayIP, FarUnderlay
	if m.Far {
		sw, gw, other = FarSwitchNS, RouterFarIP, Underlay
	}
	steps := [][]string{
		{"ip", "link", "add", "name", NodeLink, "netns", m.Name, "type", "veth", "peer", "name", m.Name, "netns", sw},
		{"ip", "-n", sw, "link", "set", m.Name, "master", SwitchBridge, "up"},
		{"ip", "-n", m.Name, "addr", "add", netip.PrefixFrom(m.IP, m.Segment().Bits()).String(), "dev", NodeLink},
		{"ip", "-n", m.Name, "link", "set", NodeLink, "up"},
		{"ip", "-n", m.Name, "route", "add", InternetNet.String(), "via", gw.String(), "dev", NodeLink},
		// What a node's default route does for Service addresses: gives
		// them a route, so that the service proxy's DNAT (in the output
		// hook, after routing) gets to see the machine's own packets.
		{"ip", "-n", m.Name, "route", "add", ServiceCIDR.String(), "via", gw.String(), "dev", NodeLink},
	}
	if far {
		via := RouterIP
		if m.Far {
			via = RouterFarIP
		}
		steps = append(steps, []string{"ip", "-n", m.Name, "route", "add", other.String(), "via", via.String(), "dev", NodeLink})
	}
	for _, s := range steps {
		if err := sh(s...); err != nil {
			return fmt.Errorf("plug %s into the underlay: %w", m.Name, err)
		}
	}
	return nil
}

// unplugSwitch removes the switch and the host's link; absent parts are no
// error.
func unplugSwitch() error {
	var errs []string
	if linkExists(HostLink) {
		if err := sh("ip", "link", "del", HostLink); err != nil {
			errs = append(errs, err.Error())
		}
	}
	for _, ns := range []string{RouterNS, FarSwitchNS, InternetNS, SwitchNS} {
		if nsExists(ns) {
			if err := sh("ip", "netns", "del", ns); err != nil {
				errs = append(errs, err.Error())
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove the underlay switch: %s", strings.Join(errs, "; "))
	}
	return nil
}

// KubernetesVersion is the version of the control plane binaries the lab
// runs; hack/k8s/go.mod pins the same one (a test checks).
const KubernetesVersion = "v1.36.3"

// DefaultK8sDir is where hack/k8s.sh caches the binaries of that version.
func DefaultK8sDir() string { return "/var/cache/podnet/k8s/" + KubernetesVersion }

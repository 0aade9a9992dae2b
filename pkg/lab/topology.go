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

// MachineSpec is one machine of the lab.
type MachineSpec struct {
	Name string     `json:"name"`
	IP   netip.Addr `json:"ip"`
	// ControlPlane marks the machine running etcd and the control plane
	// components; it is also a (tainted) node.
	ControlPlane bool `json:"controlPlane,omitempty"`
}

// Machines returns the lab's machines for n workers.
func Machines(workers int) []MachineSpec {
	ms := []MachineSpec{{Name: ControlPlane, IP: ControlPlaneIP, ControlPlane: true}}
	ip := ControlPlaneIP
	for i := 1; i <= workers; i++ {
		ip = ip.Next()
		ms = append(ms, MachineSpec{Name: fmt.Sprintf("node-%d", i), IP: ip})
	}
	return ms
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

// plug connects a machine to the switch with its eth1.
func plug(m MachineSpec) error {
	steps := [][]string{
		{"ip", "link", "add", "name", NodeLink, "netns", m.Name, "type", "veth", "peer", "name", m.Name, "netns", SwitchNS},
		{"ip", "-n", SwitchNS, "link", "set", m.Name, "master", SwitchBridge, "up"},
		{"ip", "-n", m.Name, "addr", "add", netip.PrefixFrom(m.IP, Underlay.Bits()).String(), "dev", NodeLink},
		{"ip", "-n", m.Name, "link", "set", NodeLink, "up"},
		{"ip", "-n", m.Name, "route", "add", InternetNet.String(), "via", InternetGatewayIP.String(), "dev", NodeLink},
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
	for _, ns := range []string{InternetNS, SwitchNS} {
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

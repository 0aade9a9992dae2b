package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/podnet/podnet/pkg/backend"
	"github.com/podnet/podnet/pkg/netconf"
)

// underlayMTU is the MTU of every underlay interface (the lab's).
const underlayMTU = 1500

// lab is one backend's cluster: a switch and two nodes with a pod each.
type lab struct {
	backend string
	sw      string // switch namespace
	nodes   [2]*node
}

// node is one node: its namespace, its backend and its pod.
type node struct {
	ns    string // namespace name
	local backend.Local
	be    backend.Backend
	facts backend.Facts
	pod   string // pod namespace name
	podIP netip.Addr
}

// labName is the namespace name of one role in a backend's lab.
func labName(backendName, role string) string {
	return nsPrefix + strings.ReplaceAll(backendName, "-", "") + "-" + role
}

// buildLab makes the switch and both nodes, sets the backend up on each
// node, makes a pod on each with the podnet plugin, and syncs each node
// with the other as its remote — in podnetd's order: Setup (the facts),
// the CNI config with the backend's MTU, then Sync from the published
// facts.
func (b *bench) buildLab(ctx context.Context, name string) (*lab, error) {
	l := &lab{backend: name, sw: labName(name, "sw")}
	for i := range l.nodes {
		n := i + 1
		l.nodes[i] = &node{ns: labName(name, fmt.Sprintf("n%d", n)), pod: labName(name, fmt.Sprintf("p%d", n)),
			local: backend.Local{Node: fmt.Sprintf("node-%d", n), Link: "eth1",
				PodCIDR: netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", n)),
				NodeIP:  netip.MustParseAddr(fmt.Sprintf("192.168.56.1%d", n))}}
	}
	if err := b.underlay(l); err != nil {
		return nil, err
	}
	for _, n := range l.nodes {
		be, err := backend.New(name)
		if err != nil {
			return nil, fmt.Errorf("new backend: %w", err)
		}
		n.be = be
		if err := inNS(n.ns, func() (err error) { n.facts, err = be.Setup(n.local); return err }); err != nil {
			return nil, fmt.Errorf("%s: %s Setup: %w", n.local.Node, name, err)
		}
		if err := b.addPod(ctx, n); err != nil {
			return nil, err
		}
	}
	for i, n := range l.nodes {
		other := l.nodes[1-i]
		remote := backend.Remote{Node: other.local.Node, PodCIDR: other.local.PodCIDR, NodeIP: other.local.NodeIP}
		if mac, err := net.ParseMAC(other.facts.Annotations[backend.AnnotationVTEPMAC]); err == nil {
			remote.VTEPMAC = mac
		}
		var res backend.Result
		if err := inNS(n.ns, func() (err error) { res, err = n.be.Sync([]backend.Remote{remote}); return err }); err != nil {
			return nil, fmt.Errorf("%s: %s Sync: %w", n.local.Node, name, err)
		}
		if len(res.Refused) > 0 || res.Added == 0 {
			return nil, fmt.Errorf("%s: %s Sync with %s: %+v: no route to the other node's pods", n.local.Node, name, other.local.Node, res)
		}
	}
	return l, nil
}

// underlay makes the lab's namespaces, the switch and the nodes' eth1 on
// it.
func (b *bench) underlay(l *lab) error {
	names := []string{l.sw}
	for _, n := range l.nodes {
		names = append(names, n.ns, n.pod)
	}
	if err := b.reg.addNS(names...); err != nil {
		return err
	}
	if err := b.reg.ipIn(l.sw, "link set lo up", "link add br0 type bridge", "link set br0 up"); err != nil {
		return err
	}
	for i, n := range l.nodes {
		port := fmt.Sprintf("n%d", i+1)
		// Both ends are created directly in their namespaces.
		if err := b.reg.ipIn("", fmt.Sprintf("link add name eth1 mtu %d netns %s type veth peer name %s mtu %d netns %s",
			underlayMTU, n.ns, port, underlayMTU, l.sw)); err != nil {
			return err
		}
		if err := b.reg.ipIn(l.sw, fmt.Sprintf("link set %s master br0 up", port)); err != nil {
			return err
		}
		if err := b.reg.ipIn(n.ns, "link set lo up", fmt.Sprintf("addr add %s/24 dev eth1", n.local.NodeIP), "link set eth1 up"); err != nil {
			return err
		}
	}
	return nil
}

// addPod makes the node's pod with the podnet plugin, through libcni from
// inside the node namespace, with the conflist podnetd writes for the
// node's subnet and the backend's MTU.
func (b *bench) addPod(ctx context.Context, n *node) error {
	dir := filepath.Join(b.reg.dir, n.local.Node)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	conf := netconf.Conflist(n.local.PodCIDR.String(), n.facts.MTU, filepath.Join(dir, "ipam"), "")
	list, err := libcni.ConfListFromBytes(conf)
	if err != nil {
		return fmt.Errorf("parse the conflist of %s: %w", n.local.Node, err)
	}
	cni := libcni.NewCNIConfigWithCacheDir(b.tools.cniPath, filepath.Join(dir, "cache"), nil)
	rt := &libcni.RuntimeConf{ContainerID: strings.ReplaceAll(n.pod, "-", ""), NetNS: nsPath(n.pod), IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "bench"}, {"K8S_POD_NAME", "pod-" + n.local.Node}}}
	var res *current.Result
	err = inNS(n.ns, func() error {
		r, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return fmt.Errorf("%s: CNI ADD of its pod: %w", n.local.Node, err)
	}
	for _, ip := range res.IPs {
		if a, ok := netip.AddrFromSlice(ip.Address.IP.To4()); ok && n.local.PodCIDR.Contains(a) {
			n.podIP = a
			return nil
		}
	}
	return fmt.Errorf("%s: CNI ADD of its pod returned no address of %s: %v", n.local.Node, n.local.PodCIDR, res.IPs)
}

// inNS runs fn on a goroutine whose OS thread is locked inside the named
// namespace (ns.Do): netlink sockets it opens and processes it starts act
// there.
func inNS(name string, fn func() error) error {
	h, err := ns.GetNS(nsPath(name))
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", name, err)
	}
	defer h.Close()
	return h.Do(func(ns.NetNS) error { return fn() })
}

// offloads describes, on node n, the settings that decide how VXLAN
// packets cross the underlay: the VTEP's outer UDP checksum and checksum
// offload, the underlay's UDP tunnel segmentation offloads and GRO. The
// benchmark only reads them ("" without ethtool).
func (b *bench) offloads(n *node) string {
	if b.tools.ethtool == "" {
		return ""
	}
	features := func(dev string, keys ...string) string {
		out, err := b.reg.execIn(context.Background(), n.ns, b.tools.ethtool, "-k", dev).Output()
		if err != nil {
			return dev + ": ?"
		}
		var f []string
		for _, line := range strings.Split(string(out), "\n") {
			k, v, ok := strings.Cut(strings.TrimSpace(line), ": ")
			if ok && slices.Contains(keys, k) {
				f = append(f, k+" "+strings.Fields(v)[0])
			}
		}
		return dev + ": " + strings.Join(f, ", ")
	}
	csum := "?"
	if out, err := b.reg.execIn(context.Background(), n.ns, b.tools.ip, "-d", "link", "show", backend.VXLANDevice).Output(); err == nil {
		csum = "udpcsum"
		if strings.Contains(string(out), "noudpcsum") {
			csum = "noudpcsum"
		}
	}
	return features(backend.VXLANDevice, "tx-checksum-ip-generic") + ", " + csum + "; " +
		features(n.local.Link, "tx-udp_tnl-segmentation", "tx-udp_tnl-csum-segmentation", "generic-receive-offload")
}

package podnetd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/knftables"

	"github.com/podnet/podnet/pkg/antispoof"
	"github.com/podnet/podnet/pkg/backend"
	"github.com/podnet/podnet/pkg/ipam"
	"github.com/podnet/podnet/pkg/netconf"
	"github.com/podnet/podnet/pkg/nflog"
	"github.com/podnet/podnet/pkg/wire"
)

// Anti-spoofing (package antispoof) runs as a loop of its own: each pass
// reads this node's pods from the kernel and the plugin's reservation
// store — a host veth in podnet's link group and the reservations whose
// container and interface name it (wire.HostName), with the MAC the
// plugin gives every pod (wire.PodMAC) — and makes the bridge table allow
// exactly those. It needs no API server: the node's own state is the
// truth. The plugin's announcement of a new pod triggers a pass and waits
// for it (programPod). The VXLAN filter follows the Nodes, in the network
// pass (syncDataplane).

// WithSpoofNFTables makes anti-spoofing work through bridge and inet
// (bound to knftables.BridgeFamily and InetFamily with antispoof.TableName;
// knftables.NewFake in tests) instead of the nft binary.
func WithSpoofNFTables(bridge, inet knftables.Interface) Option {
	return func(a *Agent) { a.spoofNFT = [2]knftables.Interface{bridge, inet} }
}

// WithPodPorts replaces the reading of this node's pods from the kernel
// and the reservation store.
func WithPodPorts(f func() ([]antispoof.Port, error)) Option {
	return func(a *Agent) { a.podPorts = f }
}

func (a *Agent) newGuard() error {
	bridge, inet := a.spoofNFT[0], a.spoofNFT[1]
	if bridge == nil {
		var err error
		if bridge, inet, err = antispoof.NewTables(); err != nil {
			return err
		}
	}
	a.guard = antispoof.New(bridge, inet, wire.Group(netconf.NetworkName))
	if a.podPorts == nil {
		dir := a.cfg.PodnetDataDir
		a.podPorts = func() ([]antispoof.Port, error) { return nodePorts(dir) }
	}
	if a.cfg.Metrics != nil {
		a.cfg.Metrics.MustRegister(&spoofCollector{a: a, desc: prometheus.NewDesc("podnet_spoof_drops_total",
			"Packets dropped by anti-spoofing on this node: from a pod's veth with a source IP or MAC that is not the pod's (ipv4, arp), IPv6 or other ethertypes from a pod, or VXLAN from an address that is not a Node's.",
			[]string{"kind"}, nil)})
	}
	return nil
}

// spoofPass is one sync of the anti-spoofing table with this node's pods.
func (a *Agent) spoofPass(ctx context.Context) (bool, error) {
	gen := a.spoofSync.start()
	ports, err := a.podPorts()
	if err == nil {
		var n int
		if n, err = a.guard.SyncPorts(ctx, ports); err == nil && n > 0 {
			a.log.Info("anti-spoofing synced", "part", "anti-spoofing", "pods", len(ports), "changed", n)
		}
		if err == nil {
			a.spoofPortsMu.Lock()
			a.spoofPorts = ports
			a.spoofPortsMu.Unlock()
		}
	}
	a.SpoofHealth.Record(err)
	if err != nil {
		return true, fmt.Errorf("anti-spoofing: %w", err)
	}
	a.spoofSync.finish(gen)
	return true, nil
}

// waitSpoof waits for an anti-spoofing pass that starts after the call.
func (a *Agent) waitSpoof(ctx context.Context, what string) error {
	need := a.spoofSync.next()
	a.pokeSpoof()
	for {
		done, ch := a.spoofSync.doneGen()
		if done >= need {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("anti-spoofing entry of %s not programmed in time: %w", what, ctx.Err())
		case <-ch:
		}
	}
}

// syncVXLANFilter makes the node accept VXLAN only from the remotes'
// addresses (the VTEPs it sends to), or removes the filter when the
// backend uses no VXLAN.
func (a *Agent) syncVXLANFilter(ctx context.Context, remotes []backend.Remote) error {
	if a.guard == nil {
		return nil
	}
	port := backend.VXLANPort
	if a.cfg.Backend == "host-gw" {
		port = 0
	}
	ips := make([]netip.Addr, 0, len(remotes))
	for _, r := range remotes {
		ips = append(ips, r.NodeIP)
	}
	if err := a.guard.SyncVXLAN(ctx, port, ips); err != nil {
		return fmt.Errorf("VXLAN filter: %w", err)
	}
	return nil
}

// nodePorts reads this node's pods: every host veth in podnet's link group
// with the reservations of its container and interface.
func nodePorts(dataDir string) ([]antispoof.Port, error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	group := wire.Group(netconf.NetworkName)
	veths := map[string]bool{}
	for _, l := range links {
		if l.Type() == "veth" && l.Attrs().Group == group {
			veths[l.Attrs().Name] = true
		}
	}
	if len(veths) == 0 {
		return nil, nil
	}
	dir := filepath.Join(dataDir, netconf.NetworkName)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		// Pod veths without a store: none of them may send. Say so: the
		// store is most likely not mounted into podnetd's container.
		return nil, fmt.Errorf("%d pod veths but no reservation store %s (podnetd must see the plugin's store: mount it into its container): every pod of this node is cut off", len(veths), dir)
	}
	st, err := ipam.NewDiskStore(dataDir, netconf.NetworkName)
	if err != nil {
		return nil, err
	}
	// Under the store's lock, as the plugin reads it: List also removes
	// what a killed writer left, which only the lock's holder may.
	unlock, err := st.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	rs, err := st.List()
	if err != nil {
		return nil, fmt.Errorf("read the reservation store: %w", err)
	}
	return portsOf(veths, rs), nil
}

// portsOf pairs host veths with their reservations.
func portsOf(veths map[string]bool, rs []ipam.Reservation) []antispoof.Port {
	byName := map[string]*antispoof.Port{}
	for _, r := range rs {
		name := wire.HostName(r.ContainerID, r.IfName)
		if !veths[name] || !r.IP.Is4() {
			continue
		}
		p := byName[name]
		if p == nil {
			p = &antispoof.Port{Name: name}
			if r.PodName != "" {
				p.Pod = r.PodNamespace + "/" + r.PodName
			}
			byName[name] = p
		}
		p.IPs = append(p.IPs, r.IP)
	}
	out := make([]antispoof.Port, 0, len(byName))
	for _, p := range byName {
		sort.Slice(p.IPs, func(i, j int) bool { return p.IPs[i].Less(p.IPs[j]) })
		pref := make([]netip.Prefix, len(p.IPs))
		for i, ip := range p.IPs {
			pref[i] = netip.PrefixFrom(ip, 32)
		}
		p.MAC = wire.PodMAC(pref)
		out = append(out, *p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// logSpoofDrops writes one line per logged anti-spoofing drop: the kind,
// the veth and the pod it belongs to, and what the packet claimed.
func (a *Agent) logSpoofDrops(ctx context.Context) {
	log := a.log.With("part", "anti-spoofing")
	err := nflog.Read(ctx, antispoof.LogGroup, func(p nflog.Packet) {
		args := []any{}
		if p.Prefix == antispoof.VXLANPrefix {
			args = append(args, "kind", antispoof.KindVXLAN)
		} else {
			veth := fmt.Sprintf("if%d", p.PhysInIf)
			if ifi, err := net.InterfaceByIndex(int(p.PhysInIf)); err == nil {
				veth = ifi.Name
			}
			args = append(args, "veth", veth, "pod", a.podOfVeth(veth), "mac", p.HWAddr.String())
		}
		if h, ok := p.IPv4(); ok {
			if p.Prefix != antispoof.VXLANPrefix {
				args = append([]any{"kind", antispoof.KindIPv4}, args...)
			}
			args = append(args, "src", h.Src, "dst", h.Dst, "proto", protoName(h.Proto), "port", h.Port)
		} else if r, ok := p.ARP(); ok {
			args = append([]any{"kind", antispoof.KindARP}, args...)
			args = append(args, "arp_sender_ip", r.SenderIP, "arp_sender_mac", r.SenderMAC.String(), "arp_target_ip", r.TargetIP)
		}
		log.Warn("spoofed packet dropped", args...)
	})
	if err != nil {
		log.Warn("no drop log: NFLOG cannot be read (drops are still counted)", "err", err)
	}
}

// podOfVeth names the pod behind a host veth, as the last anti-spoofing
// pass found it (a flood of drops must not re-read the node's links and
// the plugin's store for each line).
func (a *Agent) podOfVeth(veth string) string {
	a.spoofPortsMu.Lock()
	ports := a.spoofPorts
	a.spoofPortsMu.Unlock()
	for _, p := range ports {
		if p.Name == veth {
			if p.Pod != "" {
				return p.Pod
			}
			return fmt.Sprint(p.IPs)
		}
	}
	return ""
}

// spoofCollector is podnet_spoof_drops_total, read from the tables'
// counters at each scrape.
type spoofCollector struct {
	a    *Agent
	desc *prometheus.Desc
}

func (c *spoofCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *spoofCollector) Collect(ch chan<- prometheus.Metric) {
	counts, err := c.a.guard.Drops(context.Background())
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for _, k := range antispoof.Kinds() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(counts[k]), k)
	}
}

// CleanupAntiSpoofing deletes the anti-spoofing tables, if there are any:
// what podnetd does when it starts with anti-spoofing turned off.
func CleanupAntiSpoofing(ctx context.Context) error {
	bridge, inet, err := antispoof.NewTables()
	if err != nil {
		return err
	}
	return antispoof.Cleanup(ctx, bridge, inet)
}

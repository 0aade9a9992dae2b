package antispoof

// Kernel tests: the real nft and real frames in throwaway namespaces
// (skipped when not root). The topology, as a lab node pair builds it:
//
//	a 10.244.1.2 ─┐                                   ┌─ sw (underlay bridge) ─┐
//	b 10.244.1.3 ─┼─ cni0 10.244.1.1 ── node1 ── eth0 192.168.56.11             eth0 192.168.56.12 ── node2 ── cni0 10.244.2.1 ── d 10.244.2.2
//	x 10.244.1.9 ─┘ (a port that is        podnet.1 (VXLAN, VNI 1, 8472)        podnet.1
//	                 not podnet's)                                 outside 192.168.56.254
//
// Pods a, b and d are wired as the plugin wires them (host veths in
// podnet's link group, MACs from wire.PodMAC); x is someone else's port.
// Each attack is first run without the guard, to show that it works there
// (so the test can fail), then with the guard.

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/podnet/podnet/internal/netnstest"
	"github.com/podnet/podnet/pkg/nflog"
	"github.com/podnet/podnet/pkg/wire"
)

const testNetwork = "podnet"

type spoofLab struct {
	node1, node2, sw, outside *netnstest.NS
	pods                      map[string]*netnstest.NS
	ports                     []Port // node1's pods
	guard                     *Guard
	bridge, inet              knftables.Interface
}

func mac(ip string) net.HardwareAddr {
	return wire.PodMAC([]netip.Prefix{netip.PrefixFrom(netip.MustParseAddr(ip), 32)})
}

func newSpoofLab(t *testing.T) *spoofLab {
	t.Helper()
	netnstest.RequireNFT(t)
	l := &spoofLab{node1: netnstest.New(t, "asn1"), node2: netnstest.New(t, "asn2"), sw: netnstest.New(t, "assw"),
		outside: netnstest.New(t, "asout"), pods: map[string]*netnstest.NS{}}
	group := fmt.Sprint(wire.Group(testNetwork))
	l.sw.MustRun(t, "ip", "link", "add", "sw", "type", "bridge")
	l.sw.MustRun(t, "ip", "link", "set", "sw", "up")
	for i, n := range []struct {
		ns   *netnstest.NS
		addr string
	}{{l.node1, "192.168.56.11"}, {l.node2, "192.168.56.12"}, {l.outside, "192.168.56.254"}} {
		port := fmt.Sprintf("p%d", i)
		l.sw.MustRun(t, "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", n.ns.Name)
		l.sw.MustRun(t, "ip", "link", "set", port, "master", "sw")
		l.sw.MustRun(t, "ip", "link", "set", port, "up")
		n.ns.MustRun(t, "ip", "link", "set", "lo", "up")
		n.ns.MustRun(t, "ip", "addr", "add", n.addr+"/24", "dev", "eth0")
		n.ns.MustRun(t, "ip", "link", "set", "eth0", "up")
	}
	for i, n := range []struct {
		ns                    *netnstest.NS
		self, peer, peerCIDR  string
		gw, peerVTEP, vtepMAC string
	}{
		{l.node1, "192.168.56.11", "192.168.56.12", "10.244.2.0/24", "10.244.1.1/24", "10.244.2.0", "0a:5a:00:00:00:02"},
		{l.node2, "192.168.56.12", "192.168.56.11", "10.244.1.0/24", "10.244.2.1/24", "10.244.1.0", "0a:5a:00:00:00:01"},
	} {
		ns := n.ns
		for _, s := range []string{"ip_forward", "conf/all/rp_filter", "conf/default/rp_filter"} {
			v := "0"
			if s == "ip_forward" {
				v = "1"
			}
			ns.MustRun(t, "sysctl", "-qw", "net/ipv4/"+s+"="+v)
		}
		ns.MustRun(t, "ip", "link", "add", "cni0", "type", "bridge")
		ns.MustRun(t, "ip", "addr", "add", n.gw, "dev", "cni0")
		ns.MustRun(t, "ip", "link", "set", "cni0", "up")
		// The VTEP as the vxlan backend makes it, with the peer's entries.
		ns.MustRun(t, "ip", "link", "add", "podnet.1", "address", fmt.Sprintf("0a:5a:00:00:00:%02d", i+1), "type", "vxlan",
			"id", "1", "local", n.self, "dev", "eth0", "dstport", "8472", "nolearning")
		ns.MustRun(t, "ip", "addr", "add", strings.Replace(n.gw, ".1/24", ".0/32", 1), "dev", "podnet.1")
		ns.MustRun(t, "ip", "link", "set", "podnet.1", "mtu", "1450", "up")
		ns.MustRun(t, "ip", "neigh", "add", n.peerVTEP, "lladdr", n.vtepMAC, "dev", "podnet.1", "nud", "permanent")
		ns.MustRun(t, "bridge", "fdb", "append", n.vtepMAC, "dev", "podnet.1", "dst", n.peer, "self", "permanent")
		ns.MustRun(t, "ip", "route", "add", n.peerCIDR, "via", n.peerVTEP, "dev", "podnet.1", "onlink")
		ns.MustRun(t, "sysctl", "-qw", "net/ipv4/conf/podnet.1/rp_filter=0")
	}
	// Masquerade to the underlay, as podnetd's egress masquerade does.
	l.node1.MustRun(t, "nft", "add table ip masq; add chain ip masq post { type nat hook postrouting priority 100; }; "+
		"add rule ip masq post ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 masquerade; "+
		// and a Service stand-in: 10.96.0.10:80 -> a:8080 (hairpin for a), 10.96.0.11:80 -> d:8080
		"add chain ip masq pre { type nat hook prerouting priority -100; }; "+
		"add rule ip masq pre ip daddr 10.96.0.10 tcp dport 80 dnat to 10.244.1.2:8080; "+
		"add rule ip masq pre ip daddr 10.96.0.11 udp dport 80 dnat to 10.244.2.2:5353; "+
		"add rule ip masq post ct status dnat ip saddr 10.244.1.2 ip daddr 10.244.1.2 masquerade")
	for _, p := range []struct {
		name, ip string
		node     *netnstest.NS
		ours     bool
	}{
		{"a", "10.244.1.2", l.node1, true}, {"b", "10.244.1.3", l.node1, true},
		{"x", "10.244.1.9", l.node1, false}, {"d", "10.244.2.2", l.node2, true},
	} {
		pod := netnstest.New(t, "aspod"+p.name)
		l.pods[p.name] = pod
		host := wire.HostName("c-"+p.name, "eth0")
		args := []string{"ip", "link", "add", host}
		if p.ours {
			args = append(args, "group", group)
		}
		p.node.MustRun(t, append(args, "type", "veth", "peer", "name", "eth0", "address", mac(p.ip).String(), "netns", pod.Name)...)
		p.node.MustRun(t, "ip", "link", "set", host, "master", "cni0")
		p.node.MustRun(t, "ip", "link", "set", host, "type", "bridge_slave", "hairpin", "on")
		p.node.MustRun(t, "ip", "link", "set", host, "up")
		pod.MustRun(t, "ip", "link", "set", "lo", "up")
		gw := strings.Join(strings.Split(p.ip, ".")[:3], ".") + ".1"
		pod.MustRun(t, "ip", "addr", "add", p.ip+"/24", "dev", "eth0")
		pod.MustRun(t, "ip", "link", "set", "eth0", "up")
		pod.MustRun(t, "ip", "route", "add", "default", "via", gw)
		if p.ours && p.node == l.node1 {
			l.ports = append(l.ports, Port{Name: host, MAC: mac(p.ip), IPs: []netip.Addr{netip.MustParseAddr(p.ip)}})
		}
	}
	// The neighbour tables learn in a second: let a replaced entry be
	// replaced again at once (the ARP test replays an attack).
	for _, ns := range []*netnstest.NS{l.node1, l.pods["b"]} {
		for _, dev := range []string{"default", "cni0", "eth0"} {
			_ = ns.Do(func() error { return os.WriteFile("/proc/sys/net/ipv4/neigh/"+dev+"/locktime", []byte("0"), 0o644) })
		}
	}
	l.bridge = netnstest.GuardedNFT(t, l.node1, knftables.BridgeFamily, TableName)
	l.inet = netnstest.GuardedNFT(t, l.node1, knftables.InetFamily, TableName)
	l.guard = New(l.bridge, l.inet, wire.Group(testNetwork))
	return l
}

func (l *spoofLab) on(t *testing.T) {
	t.Helper()
	l.do(t, func(ctx context.Context) error {
		if _, err := l.guard.SyncPorts(ctx, l.ports); err != nil {
			return err
		}
		return l.guard.SyncVXLAN(ctx, 8472, []netip.Addr{netip.MustParseAddr("192.168.56.12")})
	})
}

// do runs f inside node-1 (where the guard's nft must run).
func (l *spoofLab) do(t *testing.T, f func(context.Context) error) {
	t.Helper()
	if err := l.node1.Do(func() error { return f(context.Background()) }); err != nil {
		t.Fatal(err)
	}
}

func (l *spoofLab) drops(t *testing.T) map[string]uint64 {
	t.Helper()
	var out map[string]uint64
	l.do(t, func(ctx context.Context) (err error) { out, err = l.guard.Drops(ctx); return err })
	return out
}

// sink counts UDP datagrams arriving at ns on port.
type sink struct{ n atomic.Int64 }

func udpSink(t *testing.T, ns *netnstest.NS, port int) *sink {
	t.Helper()
	var pc net.PacketConn
	if err := ns.Do(func() (err error) { pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port)); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	s := &sink{}
	go func() {
		b := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(b)
			if err != nil {
				return
			}
			s.n.Add(1)
			_, _ = pc.WriteTo(b[:n], from)
		}
	}()
	return s
}

// burst sends 5 datagrams from src (an address of ns, "" for any) to dst
// and returns how many of them the sink counted within half a second.
func burst(t *testing.T, ns *netnstest.NS, src, dst string, s *sink) int64 {
	t.Helper()
	before := s.n.Load()
	err := ns.Do(func() error {
		var la *net.UDPAddr
		if src != "" {
			la = &net.UDPAddr{IP: net.ParseIP(src)}
		}
		c, err := net.DialUDP("udp4", la, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
		if err != nil {
			return err
		}
		defer c.Close()
		for range 5 {
			if _, err := c.Write([]byte("forged?")); err != nil {
				return err
			}
			time.Sleep(20 * time.Millisecond)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send from %s to %s: %v", src, dst, err)
	}
	time.Sleep(500 * time.Millisecond)
	return s.n.Load() - before
}

func tcpOK(ns *netnstest.NS, addr string) error {
	return ns.Do(func() error {
		c, err := net.DialTimeout("tcp4", addr, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(make([]byte, 8))
		return err
	})
}

func tcpServe(t *testing.T, ns *netnstest.NS, port int) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port)); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("hello"))
			c.Close()
		}
	}()
}

func TestKernelForgedSourcesDeliverNothing(t *testing.T) {
	l := newSpoofLab(t)
	a, b, d, x := l.pods["a"], l.pods["b"], l.pods["d"], l.pods["x"]
	sb, sd := udpSink(t, b, 5353), udpSink(t, d, 5353)
	// a poses as 10.244.2.99 (a pod of node-2's subnet) and as b.
	attacks := []struct {
		what, src, dst string
		s              *sink
	}{
		{"to another node", "10.244.2.99", "10.244.2.2:5353", sd},
		{"to another node as b", "10.244.1.3", "10.244.2.2:5353", sd},
		{"on the same bridge", "10.244.2.99", "10.244.1.3:5353", sb},
		{"through a Service", "10.244.2.99", "10.96.0.11:80", sd},
	}
	attack := func(src, dst string, s *sink) int64 {
		a.MustRun(t, "ip", "addr", "add", src+"/32", "dev", "eth0")
		defer a.MustRun(t, "ip", "addr", "del", src+"/32", "dev", "eth0")
		return burst(t, a, src, dst, s)
	}
	for _, at := range attacks {
		if n := attack(at.src, at.dst, at.s); n == 0 {
			t.Fatalf("without the guard, a forged %s (%s -> %s) did not arrive: the test cannot tell the guard works", at.what, at.src, at.dst)
		}
	}
	l.on(t)
	drops := readLog(t, l.node1)
	for _, at := range attacks {
		if n := attack(at.src, at.dst, at.s); n != 0 {
			t.Errorf("a forged %s (%s -> %s): %d datagrams arrived, want 0", at.what, at.src, at.dst, n)
		}
	}
	// A forged MAC with a's own address is dropped too.
	a.MustRun(t, "ip", "link", "set", "eth0", "address", "0a:58:de:ad:be:ef")
	a.MustRun(t, "ip", "neigh", "flush", "all")
	if n := burst(t, a, "10.244.1.2", "10.244.2.2:5353", sd); n != 0 {
		t.Errorf("a with a forged MAC: %d datagrams arrived, want 0", n)
	}
	a.MustRun(t, "ip", "link", "set", "eth0", "address", mac("10.244.1.2").String())
	// forget what a's posing as b taught the node and b
	for _, ns := range []*netnstest.NS{l.node1, a, b} {
		ns.MustRun(t, "ip", "neigh", "flush", "all")
	}
	var aIndex int
	if err := l.node1.Do(func() error {
		ifi, err := net.InterfaceByName(l.ports[0].Name)
		if ifi != nil {
			aIndex = ifi.Index
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}

	// The pods' own traffic is untouched: same node, other node, a
	// Service, hairpin through a Service, and masquerade to the underlay.
	tcpServe(t, a, 8080)
	tcpServe(t, d, 8080)
	tcpServe(t, l.outside, 8080)
	for _, c := range []struct {
		what string
		from *netnstest.NS
		s    *sink
		dst  string
	}{{"a to b", a, sb, "10.244.1.3:5353"}, {"a to d", a, sd, "10.244.2.2:5353"}, {"a to d's Service", a, sd, "10.96.0.11:80"},
		{"b to d", b, sd, "10.244.2.2:5353"}} {
		if n := burst(t, c.from, "", c.dst, c.s); n != 5 {
			t.Errorf("%s: %d of 5 datagrams arrived", c.what, n)
		}
	}
	for _, c := range []struct {
		what string
		from *netnstest.NS
		dst  string
	}{{"b to d over VXLAN (TCP)", b, "10.244.2.2:8080"}, {"d to a over VXLAN (TCP)", d, "10.244.1.2:8080"},
		{"a to itself through a Service (hairpin)", a, "10.96.0.10:80"},
		{"a to the underlay (masqueraded)", a, "192.168.56.254:8080"}} {
		if err := tcpOK(c.from, c.dst); err != nil {
			t.Errorf("%s: %v", c.what, err)
		}
	}
	// A port that is not podnet's is not podnet's business.
	if n := burst(t, x, "", "10.244.1.3:5353", sb); n != 5 {
		t.Errorf("x (not a podnet port) to b: %d of 5 arrived", n)
	}

	if counts := l.drops(t); counts[KindIPv4] < 15 {
		t.Errorf("drops counted %v, want at least 15 IPv4", counts)
	}
	var logged []string
	for found := false; !found; {
		select {
		case p := <-drops:
			h, _ := p.IPv4()
			found = p.Prefix == PortPrefix && int(p.PhysInIf) == aIndex && h.Src == netip.MustParseAddr("10.244.2.99")
			logged = append(logged, fmt.Sprintf("%s if %d %v %v", p.Prefix, p.PhysInIf, p.HWAddr, h))
		case <-time.After(2 * time.Second):
			t.Errorf("no drop of a's forged 10.244.2.99 logged on a's veth (index %d); logged: %v", aIndex, logged)
			found = true
		}
	}
}

// A veth whose pod podnetd has not added yet sends nothing; once added,
// it does.
func TestKernelUnknownPortIsClosedUntilAdded(t *testing.T) {
	l := newSpoofLab(t)
	a, b := l.pods["a"], l.pods["b"]
	sb := udpSink(t, b, 5353)
	all := l.ports
	l.ports = all[1:] // b only
	l.on(t)
	if n := burst(t, a, "", "10.244.1.3:5353", sb); n != 0 {
		t.Errorf("a, not yet added: %d datagrams reached b, want 0", n)
	}
	l.ports = all
	l.on(t)
	// (a's first datagrams waited in a's own ARP queue, its requests
	// dropped; they may arrive now too)
	if n := burst(t, a, "", "10.244.1.3:5353", sb); n < 5 {
		t.Errorf("a, added: %d of 5 datagrams reached b", n)
	}
	// Nothing changed: nothing written.
	l.do(t, func(ctx context.Context) error {
		if n, err := l.guard.SyncPorts(ctx, l.ports); err != nil || n != 0 {
			t.Errorf("a sync with nothing new: %d changes, %v; want 0", n, err)
		}
		return nil
	})
	// A new Guard (podnetd restarted) writes the same set in one step.
	l.guard = New(l.bridge, l.inet, wire.Group(testNetwork))
	var els []*knftables.Element
	l.do(t, func(ctx context.Context) (err error) {
		if _, err := l.guard.SyncPorts(ctx, l.ports); err != nil {
			return err
		}
		els, err = l.bridge.ListElements(ctx, "set", portsSet)
		return err
	})
	if len(els) != 2 {
		t.Errorf("after a restart the set holds %d elements, want a's and b's", len(els))
	}
	if n := burst(t, a, "", "10.244.1.3:5353", sb); n != 5 {
		t.Errorf("after a restart: %d of 5 datagrams reached b", n)
	}
	// A pod gone: its element goes.
	l.do(t, func(ctx context.Context) error {
		if n, err := l.guard.SyncPorts(ctx, l.ports[1:]); err != nil || n != 1 {
			t.Errorf("removing a: %d changes, %v; want 1", n, err)
		}
		return Cleanup(ctx, l.bridge, l.inet)
	})
	if out := l.node1.MustRun(t, "nft", "list", "tables"); strings.Contains(out, TableName) {
		t.Errorf("after Cleanup: %s", out)
	}
}

// arpReply sends, from ns's eth0, an ARP reply claiming ip is at the
// interface's own MAC, to dstMAC (broadcast for a gratuitous one).
func arpReply(t *testing.T, ns *netnstest.NS, ip, targetIP string, dstMAC net.HardwareAddr) {
	t.Helper()
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ARP)))
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		f := make([]byte, 42)
		copy(f[0:6], dstMAC)
		copy(f[6:12], ifi.HardwareAddr)
		binary.BigEndian.PutUint16(f[12:], unix.ETH_P_ARP)
		binary.BigEndian.PutUint16(f[14:], 1)      // Ethernet
		binary.BigEndian.PutUint16(f[16:], 0x0800) // IPv4
		f[18], f[19] = 6, 4
		binary.BigEndian.PutUint16(f[20:], 2) // reply
		copy(f[22:28], ifi.HardwareAddr)
		copy(f[28:32], netip.MustParseAddr(ip).AsSlice())
		copy(f[32:38], dstMAC)
		copy(f[38:42], netip.MustParseAddr(targetIP).AsSlice())
		sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index, Halen: 6}
		copy(sa.Addr[:], dstMAC)
		for range 3 {
			if err := unix.Sendto(fd, f, 0, sa); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send ARP from %s: %v", ns.Name, err)
	}
	time.Sleep(200 * time.Millisecond)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// neighMAC is ns's neighbour entry for ip on dev ("" if none).
func neighMAC(t *testing.T, ns *netnstest.NS, ip, dev string) string {
	t.Helper()
	f := strings.Fields(ns.MustRun(t, "ip", "neigh", "show", ip, "dev", dev))
	for i := range f {
		if f[i] == "lladdr" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

// An ARP spoof leaves the victims' entries as they were: a claims b's
// address to the node and the gateway's address to b.
func TestKernelARPSpoofChangesNoNeighbour(t *testing.T) {
	l := newSpoofLab(t)
	a, b, d := l.pods["a"], l.pods["b"], l.pods["d"]
	sd := udpSink(t, d, 5353)
	victims := func() (node, pod string) {
		// the node's entry for b, and b's entry for the gateway
		return neighMAC(t, l.node1, "10.244.1.3", "cni0"), neighMAC(t, b, "10.244.1.1", "eth0")
	}
	learn := func() {
		t.Helper()
		if n := burst(t, b, "", "10.244.2.2:5353", sd); n == 0 {
			t.Fatal("b cannot reach d")
		}
	}
	learn()
	bMAC := mac("10.244.1.3").String()
	_, gwMAC := victims() // the test's bridge has no fixed MAC: what b learnt
	if n := neighMAC(t, l.node1, "10.244.1.3", "cni0"); n != bMAC || gwMAC == "" {
		t.Fatalf("before the spoof: node's entry for b %q (want %s), b's for the gateway %q", n, bMAC, gwMAC)
	}
	spoof := func() {
		// to the node: "10.244.1.3 (b) is at a's MAC"; to b: "the gateway is at a's MAC"
		arpReply(t, a, "10.244.1.3", "10.244.1.1", net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
		arpReply(t, a, "10.244.1.1", "10.244.1.3", mac("10.244.1.3"))
	}
	spoof()
	if n, g := victims(); n == bMAC && g == gwMAC {
		t.Fatalf("without the guard the spoof changed nothing (node's entry for b %s, b's for the gateway %s): the test cannot tell the guard works", n, g)
	}
	// heal: b and the node relearn from b's own traffic
	l.node1.MustRun(t, "ip", "neigh", "flush", "dev", "cni0")
	b.MustRun(t, "ip", "neigh", "flush", "dev", "eth0")
	learn()
	if n, g := victims(); n != bMAC || g != gwMAC {
		t.Fatalf("could not heal the neighbour entries: node's for b %s, b's for the gateway %s", n, g)
	}
	l.on(t)
	spoof()
	if n, g := victims(); n != bMAC || g != gwMAC {
		t.Errorf("with the guard the spoof changed the entries: node's for b %s (want %s), b's for the gateway %s (want %s)", n, bMAC, g, gwMAC)
	}
	if counts := l.drops(t); counts[KindARP] == 0 {
		t.Errorf("no ARP drop counted: %v", counts)
	}
	learn()
}

// A VXLAN packet crafted on the outside host (not a Node) is dropped
// before the node decapsulates it; node-2's VXLAN still passes.
func TestKernelVXLANOnlyFromNodes(t *testing.T) {
	l := newSpoofLab(t)
	a, d := l.pods["a"], l.pods["d"]
	sa := udpSink(t, a, 5353)
	o := l.outside
	// the attacker's own VTEP, aimed at node-1's, posing as a node-2 pod
	o.MustRun(t, "ip", "link", "add", "evil", "address", "0a:5a:00:00:00:02", "type", "vxlan", "id", "1", "local", "192.168.56.254",
		"dev", "eth0", "dstport", "8472", "nolearning")
	o.MustRun(t, "ip", "addr", "add", "10.244.2.0/32", "dev", "evil")
	o.MustRun(t, "ip", "addr", "add", "10.244.2.66/32", "dev", "evil")
	o.MustRun(t, "ip", "link", "set", "evil", "up")
	o.MustRun(t, "ip", "neigh", "add", "10.244.1.0", "lladdr", "0a:5a:00:00:00:01", "dev", "evil", "nud", "permanent")
	o.MustRun(t, "bridge", "fdb", "append", "0a:5a:00:00:00:01", "dev", "evil", "dst", "192.168.56.11", "self", "permanent")
	o.MustRun(t, "ip", "route", "add", "10.244.1.0/24", "via", "10.244.1.0", "dev", "evil", "onlink", "src", "10.244.2.66")
	if n := burst(t, o, "10.244.2.66", "10.244.1.2:5353", sa); n == 0 {
		t.Fatal("without the guard the crafted VXLAN packet did not arrive: the test cannot tell the guard works")
	}
	l.on(t)
	if n := burst(t, o, "10.244.2.66", "10.244.1.2:5353", sa); n != 0 {
		t.Errorf("crafted VXLAN from the outside host: %d datagrams reached a, want 0", n)
	}
	if n := burst(t, d, "", "10.244.1.2:5353", sa); n != 5 {
		t.Errorf("d (node-2) over VXLAN: %d of 5 reached a", n)
	}
	if counts := l.drops(t); counts[KindVXLAN] == 0 {
		t.Errorf("no VXLAN drop counted: %v", counts)
	}
	// A backend without VXLAN: the filter goes.
	l.do(t, func(ctx context.Context) error { return l.guard.SyncVXLAN(ctx, 0, nil) })
	if out := l.node1.MustRun(t, "nft", "list", "tables"); strings.Contains(out, "inet "+TableName) {
		t.Errorf("SyncVXLAN(0) left %s", out)
	}
}

// readLog reads the drop log in ns until the test ends.
func readLog(t *testing.T, ns *netnstest.NS) <-chan nflog.Packet {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan nflog.Packet, 64)
	done := make(chan error, 1)
	go func() {
		done <- ns.Do(func() error {
			return nflog.Read(ctx, LogGroup, func(p nflog.Packet) {
				select {
				case out <- p:
				default:
				}
			})
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("nflog.Read: %v", err)
		}
	})
	time.Sleep(100 * time.Millisecond)
	return out
}

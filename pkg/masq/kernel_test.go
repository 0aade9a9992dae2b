package masq

// Kernel tests: real nft, real packets, all inside throwaway namespaces
// (skipped when not root). The topology, v4 (v6 in brackets):
//
//	pod 10.244.1.2 [fd00:10:244:1::2] ── veth ── node ──(underlay veth)── peer node 192.168.56.12 [fd00:192:168:56::12]
//	                                   10.244.1.1 [fd00:10:244:1::1]      lo: 10.244.2.5 [fd00:10:244:2::5], a pod of node 2
//	                                   192.168.56.11 [fd00:192:168:56::11]
//	                                   203.0.113.1 [2001:db8:113::1] ──(veth)── internet 203.0.113.10 [2001:db8:113::10]
//
// The internet namespace has no route to the pods: a datagram that reaches
// it with a pod source is seen (the server records it) but not answered.
// Sync and Cleanup run inside the node namespace only: knftables execs the
// nft binary, and a process forked from a thread inherits that thread's
// network namespace, so nft must be started from a thread locked into the
// node's namespace (netnstest's Do). netnstest.GuardedNFT checks exactly that before
// every nft call, so a slip in this test fails it instead of writing to the
// host's ruleset.

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/netnstest"
)

const probePort = 7777

var kernelConfig = Config{
	ClusterCIDRs: prefixes("10.244.0.0/16", "fd00:10:244::/48"),
	NoMasquerade: prefixes("192.168.56.0/24", "fd00:192:168:56::/64"),
}

type topology struct {
	pod, node, peer, internet *netnstest.NS
}

func TestKernelMasquerade(t *testing.T) {
	netnstest.RequireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("kernel test: needs the nft binary (package nftables)")
	}
	hostBefore := hostHasTable(t)
	topo := newTopology(t)
	node := topo.node
	var logs bytes.Buffer
	nft := netnstest.GuardedNFT(t, node, Family, TableName)
	m := New(nft, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	syncNode := func() {
		t.Helper()
		if err := node.Do(func() error { return m.Sync(ctx, kernelConfig) }); err != nil {
			t.Fatalf("Sync in the node: %v", err)
		}
	}

	// Other tables in the node, which podnet must leave exactly as they are:
	// one of podnet's name in another family, one of another name in inet.
	others := foreignTables(t, node)

	// Control: with no table, egress leaves with the pod's address (and
	// gets no answer), so the checks below can tell NAT from no NAT.
	expectSource(t, "before Sync: pod to the internet", topo.pod, topo.internet, "203.0.113.10", "10.244.1.2", false)

	syncNode()
	t.Logf("nft list table inet podnet-masq, in the node:\n%s", node.MustRun(t, "nft", "list", "table", "inet", TableName))
	assertPaths(t, topo)

	t.Run("second Sync changes nothing", func(t *testing.T) {
		before := listTable(t, node)
		syncNode()
		if after := listTable(t, node); after != before {
			t.Errorf("table after a second Sync:\n%s\nbefore:\n%s", after, before)
		}
	})

	t.Run("the guard keeps nft out of the host", func(t *testing.T) {
		// Outside node.Do this goroutine's thread is in the host's
		// namespace: the guard must refuse (a read, in case it did not).
		if _, err := nft.ListAll(ctx); err == nil || !strings.Contains(err.Error(), "test bug") {
			t.Fatalf("ListAll outside the node: %v", err)
		}
	})

	for _, d := range []struct {
		what, nft string
		recreate  bool // only by re-creating the whole table
	}{
		{"chain flushed", "flush chain inet podnet-masq postrouting", false},
		{"set flushed", "flush set inet podnet-masq cluster-v4", false},
		{"table deleted", "delete table inet podnet-masq", false},
		// Definitions that `add` cannot amend: Sync must re-create the table.
		{"chain with another priority", "delete table inet podnet-masq\nadd table inet podnet-masq\n" +
			"add chain inet podnet-masq postrouting { type nat hook postrouting priority 50 ; }", true},
		{"set of another type", "delete table inet podnet-masq\nadd table inet podnet-masq\n" +
			"add set inet podnet-masq cluster-v4 { type ipv4_addr ; }", true},
		// Stale objects of an older layout, in use: they must go, last.
		{"stray objects", "add set inet podnet-masq old-nets { type ipv4_addr ; flags interval ; }\n" +
			"add element inet podnet-masq old-nets { 10.0.0.0/8 }\n" +
			// stale-b jumps to stale-a, which sorts (and is deleted) first.
			"add chain inet podnet-masq stale-a\n" +
			"add chain inet podnet-masq stale-b\n" +
			"add rule inet podnet-masq stale-b ip daddr @old-nets jump stale-a\n" +
			"add rule inet podnet-masq postrouting jump stale-b", false},
	} {
		t.Run("drift: "+d.what, func(t *testing.T) {
			want := listTable(t, node)
			nftIn(t, node, d.nft)
			if d.what == "chain flushed" {
				// The drift is real: egress is no longer masqueraded.
				expectSource(t, "pod to the internet, chain flushed", topo.pod, topo.internet, "203.0.113.10", "10.244.1.2", false)
			}
			logs.Reset()
			syncNode()
			if recreated := strings.Contains(logs.String(), "re-creating"); recreated != d.recreate {
				t.Errorf("Sync re-created the table: %v, want %v (log: %s)", recreated, d.recreate, logs.String())
			}
			if got := listTable(t, node); got != want {
				t.Errorf("table after Sync:\n%s\nwant:\n%s", got, want)
			}
			expectSource(t, "pod to the internet, repaired", topo.pod, topo.internet, "203.0.113.10", "203.0.113.1", true)
		})
	}

	if err := node.Do(func() error { return m.Cleanup(ctx) }); err != nil {
		t.Fatalf("Cleanup in the node: %v", err)
	}
	if out := node.MustRun(t, "nft", "list", "tables"); strings.Contains(out, "inet "+TableName) {
		t.Errorf("after Cleanup the node still has the table:\n%s", out)
	}
	if err := node.Do(func() error { return m.Cleanup(ctx) }); err != nil {
		t.Errorf("second Cleanup: %v", err)
	}
	expectSource(t, "after Cleanup: pod to the internet", topo.pod, topo.internet, "203.0.113.10", "10.244.1.2", false)

	if got := foreignTables(t, node); got != others {
		t.Errorf("other tables in the node changed:\n%s\nwere:\n%s", got, others)
	}
	if hostHasTable(t) != hostBefore {
		t.Errorf("the host's own ruleset gained or lost table inet %s", TableName)
	}
}

// assertPaths sends real traffic along every path the issue names.
func assertPaths(t *testing.T, topo topology) {
	t.Helper()
	for _, c := range []struct {
		what     string
		from, to *netnstest.NS
		bind     string // the client's source address, if not the kernel's choice
		dst      string
		src      string // the source the server must see
	}{
		{"pod to the internet", topo.pod, topo.internet, "", "203.0.113.10", "203.0.113.1"},
		{"pod to the node network", topo.pod, topo.peer, "", "192.168.56.12", "10.244.1.2"},
		{"pod to a pod on another node", topo.pod, topo.peer, "", "10.244.2.5", "10.244.1.2"},
		{"another node to a pod", topo.peer, topo.pod, "", "10.244.1.2", "192.168.56.12"},
		{"a pod on another node to a pod", topo.peer, topo.pod, "10.244.2.5", "10.244.1.2", "10.244.2.5"},
		{"the node to its pod", topo.node, topo.pod, "", "10.244.1.2", "10.244.1.1"},
		{"pod to the internet, v6", topo.pod, topo.internet, "", "2001:db8:113::10", "2001:db8:113::1"},
		{"pod to the node network, v6", topo.pod, topo.peer, "", "fd00:192:168:56::12", "fd00:10:244:1::2"},
		{"pod to a pod on another node, v6", topo.pod, topo.peer, "", "fd00:10:244:2::5", "fd00:10:244:1::2"},
		{"another node to a pod, v6", topo.peer, topo.pod, "", "fd00:10:244:1::2", "fd00:192:168:56::12"},
		{"a pod on another node to a pod, v6", topo.peer, topo.pod, "fd00:10:244:2::5", "fd00:10:244:1::2", "fd00:10:244:2::5"},
	} {
		t.Run(c.what+" (udp)", func(t *testing.T) {
			expectSourceFrom(t, c.what, c.from, c.bind, c.to, c.dst, c.src, true)
		})
	}
	t.Run("pod to the internet (tcp)", func(t *testing.T) {
		expectTCPSource(t, topo.pod, topo.internet, "203.0.113.10", "203.0.113.1")
	})
	t.Run("pod to a pod on another node (tcp)", func(t *testing.T) {
		expectTCPSource(t, topo.pod, topo.peer, "10.244.2.5", "10.244.1.2")
	})
}

func newTopology(t *testing.T) topology {
	t.Helper()
	tp := topology{
		pod:      netnstest.New(t, "mqpod"),
		node:     netnstest.New(t, "mqnode"),
		peer:     netnstest.New(t, "mqpeer"),
		internet: netnstest.New(t, "mqinet"),
	}
	for _, ns := range []*netnstest.NS{tp.pod, tp.node, tp.peer, tp.internet} {
		ns.MustRun(t, "ip", "link", "set", "lo", "up")
		// IPv6 addresses, link-local ones included, usable at once: no
		// duplicate address detection (a second of lost packets otherwise).
		writeSysctl(t, ns, "/proc/sys/net/ipv6/conf/default/accept_dad", "0")
	}
	// Every veth is created from inside the node, its far end straight in
	// the other namespace: nothing is ever created in the host's.
	link := func(local string, far *netnstest.NS, farName string) {
		tp.node.MustRun(t, "ip", "link", "add", local, "type", "veth", "peer", "name", farName, "netns", far.Name)
		tp.node.MustRun(t, "ip", "link", "set", local, "up")
		far.MustRun(t, "ip", "link", "set", farName, "up")
	}
	link("vpod", tp.pod, "eth0")
	link("underlay", tp.peer, "eth0")
	link("uplink", tp.internet, "eth0")

	addr := func(ns *netnstest.NS, dev string, cidrs ...string) {
		for _, c := range cidrs {
			ns.MustRun(t, "ip", "addr", "add", c, "dev", dev)
		}
	}
	addr(tp.pod, "eth0", "10.244.1.2/24", "fd00:10:244:1::2/64")
	addr(tp.node, "vpod", "10.244.1.1/24", "fd00:10:244:1::1/64")
	addr(tp.node, "underlay", "192.168.56.11/24", "fd00:192:168:56::11/64")
	addr(tp.node, "uplink", "203.0.113.1/24", "2001:db8:113::1/64")
	addr(tp.peer, "eth0", "192.168.56.12/24", "fd00:192:168:56::12/64")
	addr(tp.peer, "lo", "10.244.2.5/32", "fd00:10:244:2::5/128")
	addr(tp.internet, "eth0", "203.0.113.10/24", "2001:db8:113::10/64")

	tp.pod.MustRun(t, "ip", "route", "add", "default", "via", "10.244.1.1")
	tp.pod.MustRun(t, "ip", "-6", "route", "add", "default", "via", "fd00:10:244:1::1")
	// Node 2's pod subnet via node 2, and back: a host-gw underlay.
	tp.node.MustRun(t, "ip", "route", "add", "10.244.2.0/24", "via", "192.168.56.12")
	tp.node.MustRun(t, "ip", "-6", "route", "add", "fd00:10:244:2::/64", "via", "fd00:192:168:56::12")
	tp.peer.MustRun(t, "ip", "route", "add", "10.244.1.0/24", "via", "192.168.56.11")
	tp.peer.MustRun(t, "ip", "-6", "route", "add", "fd00:10:244:1::/64", "via", "fd00:192:168:56::11")
	// No default route anywhere but in the pod; the internet knows no pod.

	writeSysctl(t, tp.node, "/proc/sys/net/ipv4/ip_forward", "1")
	writeSysctl(t, tp.node, "/proc/sys/net/ipv6/conf/all/forwarding", "1")
	return tp
}

// writeSysctl writes a /proc/sys/net file from a thread in ns, so it is
// ns's own copy of the setting.
func writeSysctl(t *testing.T, ns *netnstest.NS, path, value string) {
	t.Helper()
	if err := ns.Do(func() error { return os.WriteFile(path, []byte(value), 0o644) }); err != nil {
		t.Fatalf("%s=%s in %s: %v", path, value, ns.Name, err)
	}
}

// nftIn loads an nft script in ns, as someone else editing the ruleset.
func nftIn(t *testing.T, ns *netnstest.NS, script string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns.Name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v: %s\n%s", ns.Name, err, out, script)
	}
}

// listTable is podnet's table as nft shows it, without handles.
func listTable(t *testing.T, ns *netnstest.NS) string {
	t.Helper()
	return ns.MustRun(t, "nft", "list", "table", "inet", TableName)
}

// foreignTables creates (once) and lists the tables podnet must not touch.
func foreignTables(t *testing.T, ns *netnstest.NS) string {
	t.Helper()
	if out := ns.MustRun(t, "nft", "list", "tables"); !strings.Contains(out, "table inet other") {
		nftIn(t, ns, `add table ip podnet-masq
add set ip podnet-masq cluster-v4 { type ipv4_addr ; flags interval ; }
add element ip podnet-masq cluster-v4 { 10.0.0.0/8 }
add table inet other
add chain inet other postrouting { type nat hook postrouting priority 200 ; }
add set inet other cluster-v4 { type ipv4_addr ; flags interval ; }
add element inet other cluster-v4 { 10.1.0.0/16 }
add rule inet other postrouting ip saddr @cluster-v4 masquerade`)
	}
	return ns.MustRun(t, "nft", "list", "table", "ip", TableName) + ns.MustRun(t, "nft", "list", "table", "inet", "other")
}

// hostHasTable says whether the host's own namespace has podnet's table.
// It is only read (nft list tables), never written.
func hostHasTable(t *testing.T) bool {
	t.Helper()
	out, err := exec.Command("nft", "list", "tables").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list tables on the host: %v: %s", err, out)
	}
	return bytes.Contains(out, []byte("table inet "+TableName+"\n"))
}

// udpServer answers datagrams on dst:probePort inside ns and reports, for
// each, its payload and the source address it arrived with.
type udpServer struct {
	seen chan sighting
}

type sighting struct {
	token string
	src   netip.Addr
}

var (
	serversMu sync.Mutex
	servers   = map[string]*udpServer{} // by namespace and address
)

func serveUDP(t *testing.T, ns *netnstest.NS, dst netip.Addr) *udpServer {
	t.Helper()
	serversMu.Lock()
	defer serversMu.Unlock()
	key := ns.Name + " " + dst.String()
	if s := servers[key]; s != nil {
		return s
	}
	var c *net.UDPConn
	err := ns.Do(func() error { // the socket stays in ns, whichever thread reads it
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, probePort)))
		return err
	})
	if err != nil {
		t.Fatalf("listen udp %s in %s: %v", dst, ns.Name, err)
	}
	s := &udpServer{seen: make(chan sighting, 64)}
	servers[key] = s
	done := make(chan struct{})
	t.Cleanup(func() {
		c.Close()
		<-done
		serversMu.Lock()
		delete(servers, key)
		serversMu.Unlock()
	})
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			select {
			case s.seen <- sighting{string(buf[:n]), from.Addr().Unmap()}:
			default:
			}
			_, _ = c.WriteToUDPAddrPort(buf[:n], from) // may find no route back: fine
		}
	}()
	return s
}

// expectSource sends datagrams from a fresh socket (so a fresh conntrack
// entry) in `from` to dst, and checks the source the server in `to` saw,
// and whether the answer came back.
func expectSource(t *testing.T, what string, from, to *netnstest.NS, dst, wantSrc string, wantReply bool) {
	t.Helper()
	expectSourceFrom(t, what, from, "", to, dst, wantSrc, wantReply)
}

// expectSourceFrom is expectSource from the local address bind ("": the
// kernel's choice), as a pod whose address lives on the node's lo.
func expectSourceFrom(t *testing.T, what string, from *netnstest.NS, bind string, to *netnstest.NS, dst, wantSrc string, wantReply bool) {
	t.Helper()
	d := netip.MustParseAddr(dst)
	srv := serveUDP(t, to, d)
	var laddr *net.UDPAddr
	if bind != "" {
		laddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(bind), 0))
	}
	var c *net.UDPConn
	err := from.Do(func() error {
		var err error
		c, err = net.DialUDP("udp", laddr, net.UDPAddrFromAddrPort(netip.AddrPortFrom(d, probePort)))
		return err
	})
	if err != nil {
		t.Fatalf("%s: dial udp %s from %s: %v", what, dst, from.Name, err)
	}
	defer c.Close()
	token := randomToken()

	var seen netip.Addr
	deadline := time.Now().Add(5 * time.Second)
	for !seen.IsValid() && time.Now().Before(deadline) {
		_, _ = c.Write([]byte(token)) // resent until seen: the first may wait on ARP/ND
		wait := time.After(300 * time.Millisecond)
	drain:
		for {
			select {
			case s := <-srv.seen:
				if s.token == token {
					seen = s.src
					break drain
				}
			case <-wait:
				break drain
			}
		}
	}
	if !seen.IsValid() {
		t.Fatalf("%s: nothing from %s reached %s in %s", what, from.Name, dst, to.Name)
	}
	if seen.String() != wantSrc {
		t.Errorf("%s: the server at %s saw source %s, want %s", what, dst, seen, wantSrc)
	}

	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 64)
	got := ""
	for {
		n, err := c.Read(buf)
		if err != nil {
			break
		}
		if got = string(buf[:n]); got == token {
			break
		}
	}
	if replied := got == token; replied != wantReply {
		t.Errorf("%s: answer came back = %v, want %v", what, replied, wantReply)
	}
}

// expectTCPSource connects over TCP and checks the peer address the server
// accepted (and so that NAT is undone on the way back).
func expectTCPSource(t *testing.T, from, to *netnstest.NS, dst, wantSrc string) {
	t.Helper()
	addr := net.JoinHostPort(dst, fmt.Sprint(probePort))
	var ln net.Listener
	if err := to.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatalf("listen tcp %s in %s: %v", addr, to.Name, err)
	}
	defer ln.Close()
	accepted := make(chan net.Addr, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c.RemoteAddr()
		c.Close()
	}()
	var c net.Conn
	err := from.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr, 5*time.Second); return err })
	if err != nil {
		t.Fatalf("connect to %s from %s: %v", addr, from.Name, err)
	}
	defer c.Close()
	select {
	case a := <-accepted:
		if a == nil {
			t.Fatal("accept failed")
		}
		if got := a.(*net.TCPAddr).AddrPort().Addr().Unmap().String(); got != wantSrc {
			t.Errorf("tcp to %s: the server saw %s, want %s", dst, got, wantSrc)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the server accepted nothing")
	}
}

func randomToken() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

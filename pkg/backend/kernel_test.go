package backend

// Kernel tests: each backend programs real "nodes" (throwaway network
// namespaces) and real packets cross between their "pods". They need root
// and skip cleanly without it (and under -short).
//
//	                 switch (bridge br0)
//	     ┌───────────────┼─────────────────┬──────────────────┐
//	  node-1 eth1     node-2 eth1       [node-3 eth1]       [router eth1 192.168.56.254]
//	  192.168.56.11   192.168.56.12     192.168.56.13        │ (when node-3 is "far")
//	  cni0 10.244.1.1 cni0 10.244.2.1   cni0 10.244.3.1      router r3 192.168.57.254
//	  pod  10.244.1.2 pod  10.244.2.2   pod  10.244.3.2        └── node-3 eth1 192.168.57.13
//
// Each backend's Setup and Sync run inside the node's namespace (ns.Do:
// netlink opened from the locked thread acts on that namespace), with the
// other nodes as remotes, their VTEP MACs taken from the annotations their
// own Setup published — as podnetd does.

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/netnstest"
)

type kNode struct {
	i       int
	ns, pod *netnstest.NS
	local   Local
	podIP   string
	far     bool // on 192.168.57.0/24, behind the router
	be      Backend
	facts   Facts
}

type kLab struct {
	sw, router *netnstest.NS
	nodes      []*kNode
}

// ipc runs ip (or another command) in the root namespace; it only ever
// names pntest namespaces.
func ipc(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// batch runs ip commands, one a line, inside ns.
func batch(t *testing.T, ns *netnstest.NS, lines ...string) {
	t.Helper()
	cmd := exec.Command("ip", "-n", ns.Name, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("in %s: ip -batch:\n%s\n%v: %s", ns.Name, strings.Join(lines, "\n"), err, out)
	}
}

// newLab builds n nodes; node far (1-based; 0 for none) sits on a second
// segment behind a router.
func newLab(t *testing.T, n, far int) *kLab {
	t.Helper()
	netnstest.RequireRoot(t)
	if testing.Short() {
		t.Skip("kernel test: skipped with -short")
	}
	l := &kLab{sw: netnstest.New(t, "sw")}
	batch(t, l.sw, "link add br0 type bridge", "link set br0 up")
	if far != 0 {
		l.router = netnstest.New(t, "rt")
		ipc(t, "ip", "link", "add", "name", "eth1", "netns", l.router.Name, "type", "veth", "peer", "name", "rt", "netns", l.sw.Name)
		batch(t, l.sw, "link set rt master br0 up")
		batch(t, l.router, "link set lo up", "addr add 192.168.56.254/24 dev eth1", "link set eth1 up")
		l.router.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	}
	for i := 1; i <= n; i++ {
		k := &kNode{i: i, far: i == far, ns: netnstest.New(t, fmt.Sprintf("n%d", i)), pod: netnstest.New(t, fmt.Sprintf("p%d", i))}
		k.podIP = fmt.Sprintf("10.244.%d.2", i)
		k.local = Local{Node: fmt.Sprintf("node-%d", i), PodCIDR: netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i)),
			NodeIP: netip.MustParseAddr(fmt.Sprintf("192.168.56.1%d", i)), Link: "eth1"}
		var up []string
		if k.far {
			k.local.NodeIP = netip.MustParseAddr(fmt.Sprintf("192.168.57.1%d", i))
			ipc(t, "ip", "link", "add", "name", "eth1", "netns", k.ns.Name, "type", "veth", "peer", "name", fmt.Sprintf("r%d", i), "netns", l.router.Name)
			batch(t, l.router, fmt.Sprintf("addr add 192.168.57.254/24 dev r%d", i), fmt.Sprintf("link set r%d up", i))
			up = []string{"route add 192.168.56.0/24 via 192.168.57.254"}
		} else {
			ipc(t, "ip", "link", "add", "name", "eth1", "netns", k.ns.Name, "type", "veth", "peer", "name", fmt.Sprintf("n%d", i), "netns", l.sw.Name)
			batch(t, l.sw, fmt.Sprintf("link set n%d master br0 up", i))
			if far != 0 {
				up = []string{"route add 192.168.57.0/24 via 192.168.56.254"}
			}
		}
		batch(t, k.ns, append([]string{"link set lo up", fmt.Sprintf("addr add %s/24 dev eth1", k.local.NodeIP), "link set eth1 up",
			"link add cni0 type bridge", fmt.Sprintf("addr add 10.244.%d.1/24 dev cni0", i), "link set cni0 up"}, up...)...)
		k.ns.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		ipc(t, "ip", "link", "add", "name", "eth0", "netns", k.pod.Name, "type", "veth", "peer", "name", "veth0", "netns", k.ns.Name)
		batch(t, k.ns, "link set veth0 master cni0 up")
		batch(t, k.pod, "link set lo up", fmt.Sprintf("addr add %s/24 dev eth0", k.podIP), "link set eth0 up",
			fmt.Sprintf("route add default via 10.244.%d.1", i))
		l.nodes = append(l.nodes, k)
	}
	return l
}

// setup runs Setup of a fresh backend of that name on every node (and sets
// each pod's MTU to the backend's, as the CNI plugin would).
func (l *kLab) setup(t *testing.T, backend string) {
	t.Helper()
	for _, k := range l.nodes {
		b, err := New(backend)
		if err != nil {
			t.Fatal(err)
		}
		k.be = b
		k.facts = k.setup(t)
		batch(t, k.pod, fmt.Sprintf("link set eth0 mtu %d", k.facts.MTU))
	}
}

func (k *kNode) setup(t *testing.T) Facts {
	t.Helper()
	var f Facts
	if err := k.ns.Do(func() (err error) { f, err = k.be.Setup(k.local); return err }); err != nil {
		t.Fatalf("%s: Setup: %v", k.local.Node, err)
	}
	return f
}

// remote is k as another node sees it: its Node object and annotations.
func (k *kNode) remote() Remote {
	r := Remote{Node: k.local.Node, PodCIDR: k.local.PodCIDR, NodeIP: k.local.NodeIP}
	if mac, err := net.ParseMAC(k.facts.Annotations[AnnotationVTEPMAC]); err == nil {
		r.VTEPMAC = mac
	}
	return r
}

// sync runs k's Sync with the given nodes as remotes.
func (k *kNode) sync(t *testing.T, remotes ...*kNode) Result {
	t.Helper()
	var rs []Remote
	for _, r := range remotes {
		rs = append(rs, r.remote())
	}
	var res Result
	if err := k.ns.Do(func() (err error) { res, err = k.be.Sync(rs); return err }); err != nil {
		t.Fatalf("%s: Sync: %v", k.local.Node, err)
	}
	return res
}

// syncAll syncs every node with all the others.
func (l *kLab) syncAll(t *testing.T) {
	t.Helper()
	for _, k := range l.nodes {
		k.sync(t, l.others(k)...)
	}
}

func (l *kLab) others(k *kNode) []*kNode {
	var out []*kNode
	for _, o := range l.nodes {
		if o != k {
			out = append(out, o)
		}
	}
	return out
}

var noLoss = regexp.MustCompile(`, 0% packet loss`)

// ping sends count echo requests from a's pod to b's pod and fails the
// test unless every one is answered.
func ping(t *testing.T, a, b *kNode) {
	t.Helper()
	out, err := a.pod.Run("ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", b.podIP)
	if err != nil || !noLoss.MatchString(out) {
		t.Errorf("pod on %s → pod on %s (%s): %v", a.local.Node, b.local.Node, b.podIP, err)
	}
}

// noPing checks that a's pod cannot reach b's pod.
func noPing(t *testing.T, a, b *kNode) {
	t.Helper()
	if out, err := a.pod.Run("ping", "-n", "-c", "1", "-W", "1", b.podIP); err == nil {
		t.Errorf("pod on %s reaches pod on %s, which it should not:\n%s", a.local.Node, b.local.Node, out)
	}
}

// show runs a read-only command in k's namespace and returns its output.
func (k *kNode) show(t *testing.T, args ...string) string {
	t.Helper()
	return k.ns.MustRun(t, args...)
}

// has checks that the output of a command in k holds each line (its
// fields in order on one line, other fields between them allowed), or
// with want false that no line does.
func has(t *testing.T, k *kNode, want bool, cmd string, lines ...string) {
	t.Helper()
	out := k.show(t, strings.Fields(cmd)...)
	for _, l := range lines {
		re := regexp.MustCompile(`(?m)(?:^|\s)` + strings.Join(strings.Fields(regexp.QuoteMeta(l)), `\s+(?:\S+\s+)*?`) + `(?:\s|$)`)
		if re.MatchString(out) != want {
			verb := "lacks"
			if !want {
				verb = "still has"
			}
			t.Errorf("%s: `%s` %s %q:\n%s", k.local.Node, cmd, verb, l, out)
		}
	}
}

// capture is a tcpdump running in a namespace.
type capture struct {
	cmd    *exec.Cmd
	out    bytes.Buffer
	stderr strings.Builder
	done   chan struct{}
}

// startCapture starts tcpdump on iface in ns with a BPF filter and returns
// once it listens.
func startCapture(t *testing.T, ns *netnstest.NS, iface, filter string) *capture {
	t.Helper()
	c := &capture{done: make(chan struct{})}
	c.cmd = exec.Command("ip", "netns", "exec", ns.Name, "tcpdump", "-i", iface, "-nn", "-l", "--immediate-mode", filter)
	c.cmd.Stdout = &c.out
	errp, err := c.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	t.Cleanup(func() { _ = c.cmd.Process.Kill(); <-c.done })
	ready := make(chan struct{})
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(errp)
		once := sync.Once{}
		for sc.Scan() {
			c.stderr.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "listening on") {
				once.Do(func() { close(ready) })
			}
		}
		once.Do(func() { close(ready) })
		_ = c.cmd.Wait()
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatalf("tcpdump did not start listening on %s in %s", iface, ns.Name)
	}
	return c
}

var captured = regexp.MustCompile(`(\d+) packets? captured`)

// stop ends the capture and returns how many packets matched and what
// tcpdump printed of them.
func (c *capture) stop(t *testing.T) (int, string) {
	t.Helper()
	time.Sleep(200 * time.Millisecond) // let the last replies reach the tap
	_ = c.cmd.Process.Signal(os.Interrupt)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		t.Fatal("tcpdump did not stop")
	}
	m := captured.FindStringSubmatch(c.stderr.String())
	if m == nil {
		t.Fatalf("tcpdump said no count:\n%s", c.stderr.String())
	}
	n, _ := strconv.Atoi(m[1])
	return n, c.out.String()
}

// wire pings from a's pod to b's pod while capturing on the underlay port
// of a (in the switch), and returns how many packets were VXLAN (UDP 8472)
// and how many were plain ICMP between the two pods, with the text of the
// VXLAN capture.
func (l *kLab) wire(t *testing.T, a, b *kNode) (vxlan, plain int, text string) {
	t.Helper()
	port := fmt.Sprintf("n%d", a.i)
	vx := startCapture(t, l.sw, port, fmt.Sprintf("udp port %d", VXLANPort))
	ic := startCapture(t, l.sw, port, fmt.Sprintf("icmp and host %s and host %s", a.podIP, b.podIP))
	ping(t, a, b)
	vxlan, text = vx.stop(t)
	plain, _ = ic.stop(t)
	return vxlan, plain, text
}

func vtepIndex(t *testing.T, k *kNode) int {
	t.Helper()
	var idx int
	if err := k.ns.Do(func() error {
		l, err := netlink.LinkByName(VXLANDevice)
		if err == nil {
			idx = l.Attrs().Index
		}
		return err
	}); err != nil {
		t.Fatalf("%s: %s: %v", k.local.Node, VXLANDevice, err)
	}
	return idx
}

// vxlanTriple is what ip and bridge show of flannel's triple towards r.
func vxlanTriple(r *kNode) (route, neigh, fdb string) {
	n := r.local.PodCIDR.Addr()
	mac := VTEPMAC(r.local.Node)
	return fmt.Sprintf("%s via %s dev podnet.1 proto 201 onlink", r.local.PodCIDR, n),
		fmt.Sprintf("%s lladdr %s PERMANENT", n, mac),
		fmt.Sprintf("%s dst %s self permanent", mac, r.local.NodeIP)
}

const (
	showRoutes = "ip route show"
	showNeigh  = "ip neigh show dev podnet.1"
	showFDB    = "bridge fdb show dev podnet.1"
)

func TestKernelVXLAN(t *testing.T) {
	l := newLab(t, 3, 0)
	l.setup(t, "vxlan")
	n1, n2, n3 := l.nodes[0], l.nodes[1], l.nodes[2]
	for _, k := range l.nodes {
		if k.facts.MTU != 1450 {
			t.Errorf("%s: Facts.MTU = %d with the underlay at 1500, want 1450", k.local.Node, k.facts.MTU)
		}
		if got, want := k.facts.Annotations[AnnotationVTEPMAC], VTEPMAC(k.local.Node).String(); got != want {
			t.Errorf("%s: published VTEP MAC %q, want %q", k.local.Node, got, want)
		}
	}
	has(t, n1, true, "ip -d link show podnet.1", "podnet.1: mtu 1450 state UNKNOWN", "link/ether "+VTEPMAC("node-1").String(),
		"vxlan id 1 local 192.168.56.11 dev eth1 dstport 8472 nolearning")
	l.syncAll(t)

	for _, r := range []*kNode{n2, n3} {
		route, neigh, fdb := vxlanTriple(r)
		has(t, n1, true, showRoutes, route)
		has(t, n1, true, showNeigh, neigh)
		has(t, n1, true, showFDB, fdb)
	}
	ping(t, n1, n2)
	ping(t, n2, n1)
	ping(t, n1, n3)
	ping(t, n3, n2)
	vx, plain, text := l.wire(t, n1, n2)
	if vx < 6 || plain != 0 || !strings.Contains(text, "192.168.56.11.") || !strings.Contains(text, "> 192.168.56.12.8472:") {
		t.Errorf("underlay of node-1 during 3 pings to node-2's pod: %d UDP %d packets, %d plain ICMP; want ≥ 6 and 0:\n%s", vx, VXLANPort, plain, text)
	}

	t.Run("drift", func(t *testing.T) { testDrift(t, l) })
	t.Run("stale", func(t *testing.T) {
		res := n1.sync(t, n2)
		if res.Removed != 3 || res.Added != 0 {
			t.Errorf("Sync without node-3: %+v, want 3 removed (route, neighbour, FDB entry)", res)
		}
		route, neigh, fdb := vxlanTriple(n3)
		has(t, n1, false, showRoutes, route, "10.244.3.0/24")
		has(t, n1, false, showNeigh, neigh, "10.244.3.0")
		has(t, n1, false, showFDB, fdb, VTEPMAC("node-3").String())
		route, neigh, fdb = vxlanTriple(n2)
		has(t, n1, true, showRoutes, route)
		has(t, n1, true, showNeigh, neigh)
		has(t, n1, true, showFDB, fdb)
		ping(t, n1, n2)
		noPing(t, n1, n3)
		if res := n1.sync(t, n2, n3); res.Added != 3 || res.Removed != 0 {
			t.Errorf("Sync with node-3 back: %+v, want 3 added", res)
		}
		ping(t, n1, n3)
	})
	t.Run("restart", func(t *testing.T) { testRestart(t, l, "vxlan", n1, n2) })
	t.Run("adopt", func(t *testing.T) {
		// A VTEP with the wrong MAC (peers' entries name the derived one)
		// is corrected in place.
		before := vtepIndex(t, n3)
		batch(t, n3.ns, "link set podnet.1 address 02:00:00:00:00:33")
		n3.setup(t)
		if vtepIndex(t, n3) != before {
			t.Errorf("Setup re-created a VTEP that only had the wrong MAC")
		}
		has(t, n3, true, "ip link show podnet.1", "link/ether "+VTEPMAC("node-3").String())
		// The kernel flushes a device's neighbours when its MAC changes;
		// the Sync that follows Setup puts them back (and only them).
		if res := n3.sync(t, n1, n2); res.Added != 2 || res.Removed != 0 {
			t.Errorf("Sync after the MAC fix: %+v, want the 2 flushed neighbours re-added", res)
		}
		ping(t, n3, n1)
		// One that peers cannot reach (another VNI) is re-created.
		batch(t, n3.ns, "link del podnet.1", "link add podnet.1 type vxlan id 42 dstport 8472 local 192.168.56.13 dev eth1")
		wrong := vtepIndex(t, n3)
		n3.setup(t)
		if vtepIndex(t, n3) == wrong {
			t.Errorf("Setup kept a VTEP with VNI 42")
		}
		has(t, n3, true, "ip -d link show podnet.1", "vxlan id 1 local 192.168.56.13 dev eth1 dstport 8472 nolearning")
		n3.sync(t, n1, n2)
		ping(t, n3, n1)
	})
}

func TestKernelHostGW(t *testing.T) {
	l := newLab(t, 3, 3)
	l.setup(t, "host-gw")
	n1, n2, n3 := l.nodes[0], l.nodes[1], l.nodes[2]
	if n1.facts.MTU != 1500 {
		t.Errorf("host-gw Facts.MTU = %d, want the underlay's 1500", n1.facts.MTU)
	}
	res := n1.sync(t, n2, n3)
	n2.sync(t, n1, n3)
	msg := res.Refused["node-3"]
	if len(res.Refused) != 1 || !strings.Contains(msg, "192.168.56.0/24") || !strings.Contains(msg, "192.168.57.13") {
		t.Errorf("node-3 (on 192.168.57.0/24) refused with %q (all: %v); want a message naming 192.168.56.0/24", msg, res.Refused)
	}
	has(t, n1, true, showRoutes, "10.244.2.0/24 via 192.168.56.12 dev eth1 proto 201")
	has(t, n1, false, showRoutes, "10.244.3.0/24")
	if _, err := n1.ns.Run("ip", "link", "show", VXLANDevice); err == nil {
		t.Errorf("host-gw created %s", VXLANDevice)
	}
	ping(t, n1, n2)
	ping(t, n2, n1)
	vx, plain, text := l.wire(t, n1, n2)
	if vx != 0 || plain < 6 {
		t.Errorf("underlay of node-1 during 3 pings to node-2's pod: %d UDP %d packets, %d plain ICMP between the pods; want 0 and ≥ 6:\n%s", vx, VXLANPort, plain, text)
	}

	t.Run("drift", func(t *testing.T) { testDrift(t, l) })
	t.Run("stale", func(t *testing.T) {
		if res := n1.sync(t); res.Removed != 1 {
			t.Errorf("Sync with no remotes: %+v, want 1 route removed", res)
		}
		has(t, n1, false, showRoutes, "10.244.2.0/24")
		noPing(t, n1, n2)
		n1.sync(t, n2, n3)
		ping(t, n1, n2)
	})
	t.Run("restart", func(t *testing.T) { testRestart(t, l, "host-gw", n1, n2) })
}

func TestKernelHybrid(t *testing.T) {
	l := newLab(t, 3, 3)
	l.setup(t, "hybrid")
	n1, n2, n3 := l.nodes[0], l.nodes[1], l.nodes[2]
	if n1.facts.MTU != 1450 || n1.facts.Annotations[AnnotationBackend] != "hybrid" {
		t.Errorf("hybrid facts %+v, want MTU 1450 and backend hybrid", n1.facts)
	}
	l.syncAll(t)
	// node-1: node-2 directly, node-3 (behind the router) through the overlay.
	has(t, n1, true, showRoutes, "10.244.2.0/24 via 192.168.56.12 dev eth1 proto 201")
	route, neigh, fdb := vxlanTriple(n3)
	has(t, n1, true, showRoutes, route)
	has(t, n1, true, showNeigh, neigh)
	has(t, n1, true, showFDB, fdb)
	has(t, n1, false, showNeigh, "10.244.2.0")
	has(t, n1, false, showFDB, VTEPMAC("node-2").String())
	// node-3: everyone is far.
	for _, r := range []*kNode{n1, n2} {
		route, _, _ := vxlanTriple(r)
		has(t, n3, true, showRoutes, route)
	}
	for _, p := range [][2]*kNode{{n1, n2}, {n2, n1}, {n1, n3}, {n3, n1}, {n2, n3}, {n3, n2}} {
		ping(t, p[0], p[1])
	}
	if vx, plain, text := l.wire(t, n1, n2); vx != 0 || plain < 6 {
		t.Errorf("node-1 → node-2 (same segment): %d VXLAN, %d plain ICMP packets; want 0 and ≥ 6:\n%s", vx, plain, text)
	}
	if vx, plain, text := l.wire(t, n1, n3); vx < 6 || plain != 0 || !strings.Contains(text, "> 192.168.57.13.8472:") {
		t.Errorf("node-1 → node-3 (behind the router): %d VXLAN, %d plain ICMP packets; want ≥ 6 and 0:\n%s", vx, plain, text)
	}
	t.Run("restart", func(t *testing.T) { testRestart(t, l, "hybrid", n1, n3) })
}

// testDrift: a podnet route deleted by hand (and, with a VTEP, a
// neighbour) is back after the next Sync; a route of another protocol, a
// neighbour on another device and an FDB entry on the pod bridge, added by
// hand, are untouched.
func testDrift(t *testing.T, l *kLab) {
	n1, n2 := l.nodes[0], l.nodes[1]
	_, hasVTEP := n1.facts.Annotations[AnnotationVTEPMAC]
	routeLine := n1.show(t, "ip", "route", "show", "10.244.2.0/24")
	batch(t, n1.ns, "route del 10.244.2.0/24",
		"route add 10.99.0.0/16 via 192.168.56.12 dev eth1 proto static",
		"route add 10.98.0.0/16 via 192.168.56.12 dev eth1 proto 200",
		"neigh add 192.168.56.99 lladdr 02:00:00:00:00:99 dev eth1 nud permanent")
	want := 1
	if hasVTEP {
		batch(t, n1.ns, "neigh del 10.244.2.0 dev podnet.1")
		want = 2
	}
	n1.ns.MustRun(t, "bridge", "fdb", "add", "02:00:00:00:00:98", "dev", "veth0", "master", "static")
	noPing(t, n1, n2)
	res := n1.sync(t, l.others(n1)...)
	if res.Added != want || res.Removed != 0 {
		t.Errorf("Sync after drift: %+v, want %d added, 0 removed", res, want)
	}
	if got := n1.show(t, "ip", "route", "show", "10.244.2.0/24"); got != routeLine {
		t.Errorf("route after repair %q, was %q", got, routeLine)
	}
	if hasVTEP {
		_, neigh, _ := vxlanTriple(n2)
		has(t, n1, true, showNeigh, neigh)
	}
	has(t, n1, true, showRoutes, "10.99.0.0/16 via 192.168.56.12 dev eth1 proto static", "10.98.0.0/16 via 192.168.56.12 dev eth1 proto 200")
	has(t, n1, true, "ip neigh show dev eth1", "192.168.56.99 lladdr 02:00:00:00:00:99 PERMANENT")
	has(t, n1, true, "bridge fdb show dev veth0", "02:00:00:00:00:98 master cni0 static")
	ping(t, n1, n2)
	// A second Sync has nothing to do.
	if res := n1.sync(t, l.others(n1)...); res.Added+res.Removed != 0 {
		t.Errorf("second Sync changed %+v", res)
	}
	batch(t, n1.ns, "route del 10.99.0.0/16", "route del 10.98.0.0/16", "neigh del 192.168.56.99 dev eth1")
}

// testRestart runs a fast ping from a's pod to b's pod while a and b's
// agents "restart" several times — a fresh backend runs Setup and Sync on
// the state the last one left — and wants no ping lost, no VTEP
// re-created and nothing rewritten.
func testRestart(t *testing.T, l *kLab, backend string, a, b *kNode) {
	_, hasVTEP := a.facts.Annotations[AnnotationVTEPMAC]
	idx := map[*kNode]int{}
	if hasVTEP {
		for _, k := range []*kNode{a, b} {
			idx[k] = vtepIndex(t, k)
		}
	}
	done := make(chan string, 1)
	go func() {
		out, err := a.pod.Run("ping", "-n", "-i", "0.05", "-c", "60", "-W", "1", b.podIP)
		if err != nil {
			out += err.Error()
		}
		done <- out
	}()
	for round := 0; round < 5; round++ {
		time.Sleep(300 * time.Millisecond)
		for _, k := range []*kNode{a, b} {
			be, err := New(backend)
			if err != nil {
				t.Fatal(err)
			}
			k.be = be
			if f := k.setup(t); f.MTU != k.facts.MTU {
				t.Errorf("%s: MTU %d after restart, was %d", k.local.Node, f.MTU, k.facts.MTU)
			}
			if res := k.sync(t, l.others(k)...); res.Added+res.Removed != 0 {
				t.Errorf("%s: restart %d rewrote state: %+v", k.local.Node, round, res)
			}
			if hasVTEP && vtepIndex(t, k) != idx[k] {
				t.Errorf("%s: restart %d re-created %s", k.local.Node, round, VXLANDevice)
			}
		}
	}
	out := <-done
	if !noLoss.MatchString(out) || !strings.Contains(out, "60 received") {
		t.Errorf("ping across %d restarts of %s:\n%s", 5, backend, out)
	}
}

package backend

// Kernel tests of what podnet owns on a node (the lab of kernel_test.go):
// a route it did not make is never overwritten, and a backend switch
// leaves nothing of the old backend behind. Root only; skipped under -short.

import (
	"fmt"
	"strings"
	"testing"

	"github.com/podnet/podnet/internal/netnstest"
)

// TestKernelForeignRoute: node-1 holds a route to node-2's pod subnet that
// podnet did not make. Sync leaves it exactly as it was, refuses node-2
// naming it, and still programs node-3; once the route is deleted, the
// next Sync programs node-2. Then the operator takes an already programmed
// subnet over (`ip route replace`), and podnet lets go of it.
func TestKernelForeignRoute(t *testing.T) {
	netnstest.RequireRoot(t)
	if testing.Short() {
		t.Skip("kernel test: skipped with -short")
	}
	for _, tc := range []struct {
		backend string
		added   int // objects per remote
	}{{"vxlan", 3}, {"host-gw", 1}} {
		t.Run(tc.backend, func(t *testing.T) {
			l := newLab(t, 3, 0)
			l.setup(t, tc.backend)
			n1, n2, n3 := l.nodes[0], l.nodes[1], l.nodes[2]
			n2.sync(t, n1, n3)
			n3.sync(t, n1, n2)
			batch(t, n1.ns,
				"route add 10.244.2.0/24 via 192.168.56.99 dev eth1",              // proto boot, as an operator's
				"route add 10.244.0.0/16 via 192.168.56.99 dev eth1 proto static", // shorter: no conflict
				"route add 10.244.3.0/24 via 192.168.56.99 dev eth1 table 100")    // another table: none
			foreign := n1.show(t, "ip", "-d", "route", "show", "table", "main", "10.244.2.0/24")
			if !strings.Contains(foreign, "via 192.168.56.99 dev eth1 proto boot") {
				t.Fatalf("the foreign route reads %q", foreign)
			}

			res := n1.sync(t, n2, n3)
			const reason = "a route to 10.244.2.0/24 not made by podnet exists (via 192.168.56.99 dev eth1 proto boot); delete it to let podnet route node-2"
			if res.Added != tc.added || res.Removed != 0 || len(res.Refused) != 1 || res.Refused["node-2"] != reason {
				t.Errorf("Sync: %+v\nwant %d added (node-3), node-2 refused: %q", res, tc.added, reason)
			}
			if got := n1.show(t, "ip", "-d", "route", "show", "table", "main", "10.244.2.0/24"); got != foreign {
				t.Errorf("the foreign route changed:\n%s\nwas\n%s", got, foreign)
			}
			assertPodnetRoute(t, n1, n3, true)
			if tc.backend == "vxlan" {
				has(t, n1, false, showNeigh, "10.244.2.0")
				has(t, n1, false, showFDB, VTEPMAC("node-2").String())
			}
			has(t, n1, true, showRoutes, "10.244.0.0/16 via 192.168.56.99 dev eth1 proto static")
			has(t, n1, true, "ip route show table 100", "10.244.3.0/24 via 192.168.56.99 dev eth1")
			ping(t, n1, n3)
			noPing(t, n1, n2)
			if res := n1.sync(t, n2, n3); res.Added+res.Removed != 0 || res.Refused["node-2"] != reason {
				t.Errorf("second Sync: %+v, want no change and node-2 still refused", res)
			}

			batch(t, n1.ns, "route del 10.244.2.0/24 via 192.168.56.99 dev eth1")
			if res := n1.sync(t, n2, n3); res.Added != tc.added || res.Removed != 0 || len(res.Refused) != 0 {
				t.Errorf("Sync after the foreign route went: %+v, want node-2 programmed", res)
			}
			assertPodnetRoute(t, n1, n2, true)
			ping(t, n1, n2)
			ping(t, n2, n1)

			t.Run("takeover", func(t *testing.T) {
				batch(t, n1.ns, "route replace 10.244.2.0/24 via 192.168.56.99 dev eth1 proto static")
				taken := n1.show(t, "ip", "-d", "route", "show", "table", "main", "10.244.2.0/24")
				res := n1.sync(t, n2, n3)
				if res.Added != 0 || res.Removed != tc.added-1 || !strings.Contains(res.Refused["node-2"], "(via 192.168.56.99 dev eth1 proto static)") {
					t.Errorf("Sync after the takeover: %+v, want node-2's neighbour and FDB entry (if any) removed and node-2 refused", res)
				}
				if got := n1.show(t, "ip", "-d", "route", "show", "table", "main", "10.244.2.0/24"); got != taken {
					t.Errorf("the operator's route changed:\n%s\nwas\n%s", got, taken)
				}
				noPing(t, n1, n2)
				ping(t, n1, n3)
				batch(t, n1.ns, "route del 10.244.2.0/24 proto static")
				n1.sync(t, n2, n3)
				ping(t, n1, n2)
			})
		})
	}
}

// assertPodnetRoute checks that k has (or lacks) podnet's route to r's pod
// subnet, as k's backend makes it.
func assertPodnetRoute(t *testing.T, k, r *kNode, want bool) {
	t.Helper()
	if _, overlay := k.facts.Annotations[AnnotationVTEPMAC]; overlay && !(k.facts.Annotations[AnnotationBackend] == "hybrid" && !r.far) {
		route, _, _ := vxlanTriple(r)
		has(t, k, want, showRoutes, route)
		return
	}
	has(t, k, want, showRoutes, fmt.Sprintf("%s via %s dev eth1 proto 201", r.local.PodCIDR, r.local.NodeIP))
}

// TestKernelSwitchBackend restarts every node with another backend, over
// the state the last one left: vxlan → host-gw → vxlan → hybrid → host-gw
// → hybrid. node-3 sits behind a router, so host-gw refuses it. Each step
// checks node-1's first Sync (what it replaced and removed), the kernel
// state of the new backend alone (no VTEP under host-gw, nor any route
// into one) and real pings; a device podnet did not make survives.
func TestKernelSwitchBackend(t *testing.T) {
	l := newLab(t, 3, 3)
	n1, n2, n3 := l.nodes[0], l.nodes[1], l.nodes[2]
	for i, step := range []struct {
		backend        string
		added, removed int // by node-1's first Sync
	}{
		{"vxlan", 6, 0},   // two triples
		{"host-gw", 1, 2}, // node-2's route replaced; node-3's route and the VTEP removed
		{"vxlan", 6, 0},   // a new VTEP, two triples (node-2's route replaced)
		{"hybrid", 1, 2},  // node-2's route replaced; its neighbour and FDB entry removed
		{"host-gw", 0, 2}, // node-3's route and the VTEP removed
		{"hybrid", 3, 0},  // node-3's triple
	} {
		t.Logf("step %d: %s", i, step.backend)
		l.setup(t, step.backend)
		if i > 0 {
			// Setup alone keeps the last backend's state working.
			ping(t, n1, n2)
		}
		res := n1.sync(t, n2, n3)
		n2.sync(t, n1, n3)
		n3.sync(t, n1, n2)
		if res.Added != step.added || res.Removed != step.removed {
			t.Errorf("step %d (%s): node-1's first Sync %+v, want %d added, %d removed", i, step.backend, res, step.added, step.removed)
		}
		checkBackend(t, l, step.backend)
		if res := n1.sync(t, n2, n3); res.Added+res.Removed != 0 {
			t.Errorf("step %d (%s): second Sync changed %+v", i, step.backend, res)
		}
		if t.Failed() {
			t.FailNow()
		}
	}
}

// checkBackend checks node-1's kernel state under backend and pings.
func checkBackend(t *testing.T, l *kLab, backend string) {
	t.Helper()
	n1, n2, n3 := l.nodes[0], l.nodes[1], l.nodes[2]
	if backend == "host-gw" {
		for _, k := range l.nodes {
			if out, err := k.ns.Run("ip", "link", "show", VXLANDevice); err == nil {
				t.Errorf("%s: %s still there under host-gw:\n%s", k.local.Node, VXLANDevice, out)
			}
		}
		assertPodnetRoute(t, n1, n2, true)
		has(t, n1, false, showRoutes, "dev podnet.1", "10.244.3.0/24")
		ping(t, n1, n2)
		ping(t, n2, n1)
		testForeignDevices(t, l)
		return
	}
	has(t, n1, true, "ip -d link show podnet.1", "vxlan id 1 local 192.168.56.11 dev eth1 dstport 8472 nolearning")
	for _, r := range []*kNode{n2, n3} {
		assertPodnetRoute(t, n1, r, true)
	}
	_, neigh, fdb := vxlanTriple(n3)
	has(t, n1, true, showNeigh, neigh)
	has(t, n1, true, showFDB, fdb)
	_, neigh, fdb = vxlanTriple(n2)
	has(t, n1, backend == "vxlan", showNeigh, neigh)
	has(t, n1, backend == "vxlan", showFDB, fdb)
	for _, p := range [][2]*kNode{{n1, n2}, {n2, n1}, {n1, n3}, {n3, n1}, {n2, n3}, {n3, n2}} {
		ping(t, p[0], p[1])
	}
}

// testForeignDevices: under host-gw, a device named podnet.1 that podnet
// did not make (a bridge; a VXLAN device with another VNI), and a VXLAN
// device of another name with podnet's VNI and port, survive Setup and
// Sync. They are deleted again before the next step.
func testForeignDevices(t *testing.T, l *kLab) {
	t.Helper()
	n1, n2 := l.nodes[0], l.nodes[1]
	batch(t, n1.ns, "link add podnet.1 type bridge",
		"link add flannel.1 type vxlan id 1 dstport 8472 local 192.168.56.11 dev eth1 nolearning")
	batch(t, n2.ns, "link add podnet.1 type vxlan id 42 dstport 8472 local 192.168.56.12 dev eth1 nolearning")
	for _, k := range []*kNode{n1, n2} {
		k.setup(t)
		k.sync(t, l.others(k)...)
	}
	has(t, n1, true, "ip -d link show podnet.1", "bridge forward_delay")
	has(t, n1, true, "ip -d link show flannel.1", "vxlan id 1 local 192.168.56.11 dev eth1 dstport 8472 nolearning")
	has(t, n2, true, "ip -d link show podnet.1", "vxlan id 42")
	ping(t, n1, n2)
	batch(t, n1.ns, "link del podnet.1", "link del flannel.1")
	batch(t, n2.ns, "link del podnet.1")
}

package lab_test

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestLabHybrid runs the lab with node-3 on a second underlay segment
// (192.168.57.0/24, behind a router) under the hybrid backend: nodes on one
// segment route to each other directly, and reach node-3 through the VXLAN
// overlay. Every pod reaches every other pod (ICMP, TCP, UDP) with its own
// source address, and the paths are the expected ones.
func TestLabHybrid(t *testing.T) {
	if testing.Short() {
		t.Skip("lab test")
	}
	e := upLab(t, "--workers", "3", "--far-workers", "1", "--backend", "hybrid")
	nodes := []string{"node-1", "node-2", "node-3"}
	ips := startPairPods(t, e, nodes)

	t.Run("paths", func(t *testing.T) {
		// node-1: node-2 by a plain route on the segment, node-3 through
		// the overlay; node-3: everything through the overlay. Subnets are
		// read from the Nodes: node IPAM need not hand them out in order.
		c1, c2, c3 := podCIDR(t, e, "node-1"), podCIDR(t, e, "node-2"), podCIDR(t, e, "node-3")
		r1 := e.onNode("node-1", "ip route show proto 201")
		for _, want := range []string{regexp.QuoteMeta(c2.String()) + ` via 192.168.56.12 dev eth1`, regexp.QuoteMeta(c3.String()+" via "+c3.Addr().String()) + ` dev podnet.1 .*onlink`} {
			if !regexp.MustCompile(want).MatchString(r1) {
				t.Errorf("node-1's podnet routes lack %q:\n%s", want, r1)
			}
		}
		r3 := e.onNode("node-3", "ip route show proto 201")
		for _, c := range []netip.Prefix{c1, c2} {
			want := regexp.QuoteMeta(c.String()+" via "+c.Addr().String()) + ` dev podnet.1 .*onlink`
			if !regexp.MustCompile(want).MatchString(r3) {
				t.Errorf("node-3's podnet routes lack %q:\n%s", want, r3)
			}
		}
		if fdb := e.onNode("node-1", "bridge fdb show dev podnet.1"); !strings.Contains(fdb, "dst 192.168.57.13") || strings.Contains(fdb, "dst 192.168.56.12") {
			t.Errorf("node-1's VXLAN FDB should hold node-3 (192.168.57.13) and not node-2:\n%s", fdb)
		}
	})

	t.Run("every pod reaches every pod", func(t *testing.T) { everyPodReachesEveryPod(t, e, nodes, ips) })

	t.Run("traceroute", func(t *testing.T) {
		// Direct on the segment: node-2's gateway, node-1's address, the
		// pod. Through the overlay: node-3's gateway, node-1's VTEP
		// (10.244.1.0), the pod — the router between the segments is
		// inside the tunnel and does not show.
		gw := func(n string) string { return podCIDR(t, e, n).Addr().Next().String() }
		for _, c := range []struct{ from, want string }{
			{"node-2", gw("node-2") + " 192.168.56.11 " + ips["node-1"]},
			{"node-3", gw("node-3") + " " + podCIDR(t, e, "node-1").Addr().String() + " " + ips["node-1"]},
		} {
			out, err := e.podnetctl("lab", "kubectl", "--", "exec", "tb-"+c.from, "--", "traceroute", "-n", "-w", "2", ips["node-1"])
			if err != nil {
				t.Errorf("traceroute from %s: %v\n%s", c.from, err, out)
				continue
			}
			if hops := traceHops(out); hops != c.want {
				t.Errorf("traceroute from a pod on %s to %s: hops %q, want %q:\n%s", c.from, ips["node-1"], hops, c.want, out)
			}
		}
	})
}

// startPairPods runs, on each node, a server pod srv-NODE (agnhost netexec:
// HTTP 8080, UDP 8081) and a toolbox pod tb-NODE; it returns their
// addresses: ips[NODE] is the server's, ips["tb-"+NODE] the toolbox's
// (netshoot: iputils ping, curl and OpenBSD nc, whose -u busybox's lacks).
func startPairPods(t *testing.T, e *env, nodes []string) map[string]string {
	t.Helper()
	for _, n := range nodes {
		e.runPod(t, "srv-"+n, n, corev1.RestartPolicyAlways, "registry.k8s.io/e2e-test-images/agnhost:2.53",
			[]string{"netexec", "--http-port=8080", "--udp-port=8081"})
		e.runPod(t, "tb-"+n, n, corev1.RestartPolicyAlways, "nicolaka/netshoot", []string{"sleep", "3600"})
	}
	ips := map[string]string{}
	for _, n := range nodes {
		ips[n] = e.waitRunning(t, "srv-"+n)
		ips["tb-"+n] = e.waitRunning(t, "tb-"+n)
	}
	return ips
}

// everyPodReachesEveryPod: from each node's toolbox pod to every node's
// server pod, ICMP answers, and TCP and UDP answers say the client's own
// pod IP (no NAT on the way).
func everyPodReachesEveryPod(t *testing.T, e *env, nodes []string, ips map[string]string) {
	for _, from := range nodes {
		var script strings.Builder
		for _, to := range nodes {
			ip := ips[to]
			fmt.Fprintf(&script, `echo "%[1]s icmp $(ping -c 2 -W 2 %[2]s >/dev/null 2>&1 && echo ok || echo FAIL)"; `, to, ip)
			fmt.Fprintf(&script, `echo "%[1]s tcp $(curl -s -m 5 http://%[2]s:8080/clientip)"; `, to, ip)
			fmt.Fprintf(&script, `echo "%[1]s udp $(echo clientip | nc -u -w 2 %[2]s 8081)"; `, to, ip)
		}
		out, err := e.podnetctl("lab", "kubectl", "--", "exec", "tb-"+from, "--", "sh", "-c", script.String())
		if err != nil {
			t.Errorf("from %s: %v\n%s", from, err, out)
			continue
		}
		src := ips["tb-"+from]
		for _, to := range nodes {
			for _, want := range []string{to + " icmp ok", to + " tcp " + src + ":", to + " udp " + src + ":"} {
				if !strings.Contains(out, want) {
					t.Errorf("pod on %s → pod on %s (%s): want a line %q (the true source pod IP %s):\n%s", from, to, ips[to], want, src, out)
				}
			}
		}
	}
}

// podCIDR is the node's pod subnet, from its Node.
func podCIDR(t *testing.T, e *env, node string) netip.Prefix {
	t.Helper()
	n, err := e.client.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := netip.ParsePrefix(n.Spec.PodCIDR)
	if err != nil {
		t.Fatalf("node %s: podCIDR %q: %v", node, n.Spec.PodCIDR, err)
	}
	return p
}

// traceHops is the hop addresses of traceroute -n output, space-separated.
func traceHops(out string) string {
	var hops []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) > 1 && regexp.MustCompile(`^\d+$`).MatchString(f[0]) {
			hops = append(hops, f[1])
		}
	}
	return strings.Join(hops, " ")
}

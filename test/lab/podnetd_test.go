package lab_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/podnet/podnet/pkg/backend"
	"github.com/podnet/podnet/pkg/lab"
	"github.com/podnet/podnet/pkg/lab/cgroup"
)

// TestPodnetdVXLAN runs podnetd under the vxlan backend on one lab and
// checks what it promises: the facts it publishes, the pod MTU, drift
// repair (kernel and annotations), a restart that drops nothing, an API
// server outage that changes nothing, a deleted
// node's state gone within a second or two, and the node whole again once
// it registers anew. Node deletion goes last: it takes node-2 away.
func TestPodnetdVXLAN(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("lab test: needs root")
	}
	e := upLab(t, "--backend", "vxlan")
	t.Run("facts published", func(t *testing.T) { podnetdFacts(t, e, "vxlan") })
	e.runPod(t, "target", "node-1", corev1.RestartPolicyAlways, "busybox", []string{"sleep", "3600"})
	target := e.waitRunning(t, "target")
	t.Run("mtu", func(t *testing.T) { podnetdMTU(t, e, target) })
	t.Run("every pod reaches every pod", func(t *testing.T) {
		nodes := []string{"node-1", "node-2"}
		everyPodReachesEveryPod(t, e, nodes, startPairPods(t, e, nodes))
	})
	t.Run("drift repair", func(t *testing.T) { podnetdDrift(t, e) })
	t.Run("restart without loss", func(t *testing.T) { podnetdRestart(t, e, target) })
	t.Run("API server unreachable", func(t *testing.T) { podnetdAPIDown(t, e, target) })
	t.Run("node deletion", func(t *testing.T) { podnetdNodeDeletion(t, e, target) })
}

// TestPodnetdHostGW: under host-gw, the facts without a VTEP, pods at the
// underlay's MTU, and a host-gw route deleted by hand repaired while a
// foreign one stays.
func TestPodnetdHostGW(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("lab test: needs root")
	}
	e := upLab(t, "--backend", "host-gw")
	t.Run("facts published", func(t *testing.T) { podnetdFacts(t, e, "host-gw") })
	t.Run("mtu", func(t *testing.T) {
		if out := e.onNode("node-2", "cat /etc/cni/net.d/10-podnet.conflist"); !regexp.MustCompile(`"mtu":\s*1500\b`).MatchString(out) {
			t.Errorf("node-2's conflist does not give pods the underlay's MTU 1500:\n%s", out)
		}
	})
	t.Run("drift repair", func(t *testing.T) {
		const want = "10.244.1.0/24 via 192.168.56.11 dev eth1 proto 201"
		if out := e.onNode("node-2", "ip route show 10.244.1.0/24"); !strings.Contains(out, want) {
			t.Fatalf("node-2 has no host-gw route %q:\n%s", want, out)
		}
		thaw := freezeNodeAgents(t) // no Node events: the resync alone must repair it
		defer thaw()
		e.onNode("node-2", "ip route add 10.244.99.0/24 via 192.168.56.1 dev eth1 proto static && ip route del 10.244.1.0/24")
		start := time.Now()
		for {
			out := e.onNode("node-2", "ip route show 10.244.1.0/24")
			if strings.Contains(out, want) {
				took := time.Since(start)
				t.Logf("host-gw route back after %s", took.Round(10*time.Millisecond))
				if took > 11*time.Second {
					t.Errorf("the repair took %s, more than the resync period of 10s", took.Round(10*time.Millisecond))
				}
				break
			}
			if time.Since(start) > 20*time.Second {
				t.Fatalf("20s after deleting it, node-2's route to node-1's pods is not back:\n%s", out)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if out := e.onNode("node-2", "ip route show 10.244.99.0/24 proto static"); !strings.Contains(out, "via 192.168.56.1 dev eth1") {
			t.Errorf("podnetd's repair removed the foreign route 10.244.99.0/24 via 192.168.56.1 proto static:\n%s", out)
		}
	})
	crossNode(t, e)
}

// podnetdFacts: every node has NetworkUnavailable=False (set by podnetd
// after its first sync) and the annotations podnetd publishes, which agree
// with the node's kernel (the VTEP's MAC).
func podnetdFacts(t *testing.T, e *env, be string) {
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	for {
		nodes, err := e.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var problems []string
		for _, n := range nodes.Items {
			problems = append(problems, nodeFactProblems(&n, be)...)
		}
		if len(nodes.Items) != 3 {
			problems = append(problems, fmt.Sprintf("%d nodes, want 3", len(nodes.Items)))
		}
		if len(problems) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10s after lab up:\n%s", strings.Join(problems, "\n"))
		}
		time.Sleep(300 * time.Millisecond)
	}
	if be != "vxlan" {
		return
	}
	for _, node := range []string{lab.ControlPlane, "node-1", "node-2"} {
		got := strings.TrimSpace(e.onNode(node, "cat /sys/class/net/"+backend.VXLANDevice+"/address"))
		if want := backend.VTEPMAC(node).String(); got != want {
			t.Errorf("%s: %s has MAC %q, the Node's annotation says %s", node, backend.VXLANDevice, got, want)
		}
	}
}

// nodeFactProblems says what n lacks of what podnetd publishes under the
// backend be.
func nodeFactProblems(n *corev1.Node, be string) []string {
	var out []string
	unavailable := "missing"
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable {
			unavailable = string(c.Status) + " (" + c.Reason + ")"
		}
	}
	if !strings.HasPrefix(unavailable, string(corev1.ConditionFalse)+" ") {
		out = append(out, fmt.Sprintf("%s: NetworkUnavailable %s, want False", n.Name, unavailable))
	}
	ip, _ := nodeInternalIP(n)
	want := map[string]string{backend.AnnotationBackend: be, backend.AnnotationPublicIP: ip}
	if be == "vxlan" {
		want[backend.AnnotationVTEPMAC] = backend.VTEPMAC(n.Name).String()
	} else if mac, ok := n.Annotations[backend.AnnotationVTEPMAC]; ok {
		out = append(out, fmt.Sprintf("%s: annotation %s=%q under %s, which has no VTEP", n.Name, backend.AnnotationVTEPMAC, mac, be))
	}
	for k, v := range want {
		if got, ok := n.Annotations[k]; !ok || got != v {
			out = append(out, fmt.Sprintf("%s: annotation %s=%q (present %v), want %q", n.Name, k, got, ok, v))
		}
	}
	return out
}

func nodeInternalIP(n *corev1.Node) (string, bool) {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address, true
		}
	}
	return "", false
}

// podnetdMTU: pods get the VXLAN MTU (underlay 1500 − 50), a 1450-byte
// packet with DF crosses the overlay, and a 1451-byte one is refused with
// an error the sender sees — never silently dropped.
func podnetdMTU(t *testing.T, e *env, target string) {
	if out := e.onNode("node-2", "cat /etc/cni/net.d/10-podnet.conflist"); !regexp.MustCompile(`"mtu":\s*1450\b`).MatchString(out) {
		t.Errorf("node-2's conflist does not give pods MTU 1450:\n%s", out)
	}
	script := `ip -o link show eth0; ping -M do -s 1422 -c 3 -W 2 ` + target + `; echo "fits-rc=$?"; ` +
		`ping -M do -s 1423 -c 1 -W 2 ` + target + ` 2>&1; echo "too-big-rc=$?"`
	e.runPod(t, "mtu-probe", "node-2", corev1.RestartPolicyNever, "nicolaka/netshoot", []string{"sh", "-c", script})
	e.waitDone(t, "mtu-probe")
	out := podLogs(t, e, "mtu-probe")
	if !strings.Contains(out, "mtu 1450 ") {
		t.Errorf("the pod's eth0 is not MTU 1450:\n%s", out)
	}
	if !strings.Contains(out, "fits-rc=0") || !strings.Contains(out, "3 received") {
		t.Errorf("ping -M do -s 1422 (a 1450-byte packet) from node-2 to %s on node-1 did not get 3 replies:\n%s", target, out)
	}
	tooBig := out
	if i := strings.Index(out, "fits-rc="); i >= 0 {
		tooBig = out[i:]
	}
	if strings.Contains(tooBig, "too-big-rc=0") {
		t.Errorf("a 1451-byte packet with DF crossed a 1450-byte path:\n%s", out)
	}
	if l := strings.ToLower(tooBig); !strings.Contains(l, "message too long") && !strings.Contains(l, "frag needed") {
		t.Errorf("a 1451-byte packet with DF was dropped without an error (want \"message too long\" or \"Frag needed\"):\n%s", out)
	}
	for _, l := range strings.Split(tooBig, "\n") {
		if strings.Contains(strings.ToLower(l), "too long") || strings.Contains(strings.ToLower(l), "frag needed") {
			t.Logf("ping -M do -s 1423: %s", strings.TrimSpace(l))
		}
	}
}

// podnetdDrift: on node-2, delete podnet's route, neighbour and FDB entry
// for node-1; the next resync (10 s) puts them back, and routes that are not
// podnet's (another protocol), even inside the cluster CIDR, stay.
func podnetdDrift(t *testing.T, e *env) {
	mac := vtepMAC(t, e, "node-1")
	const foreign = "10.99.0.0/24 dev eth1 proto static; 10.244.99.0/24 dev eth1 proto static"
	e.onNode("node-2", "ip route add 10.99.0.0/24 dev eth1 proto static && ip route add 10.244.99.0/24 dev eth1 proto static")
	view := func() overlayView { return overlayOf(e, "node-2", "10.244.1.0", mac) }
	if v := view(); !v.complete("192.168.56.11") {
		t.Fatalf("before the drift, node-2 lacks podnet's state for node-1:\n%s", v.raw)
	}
	// Every Node update makes podnetd sync, and kubelets update their
	// Nodes' status: frozen, they leave the resync timer alone to find the
	// drift.
	thaw := freezeNodeAgents(t)
	e.onNode("node-2", "ip route del 10.244.1.0/24 && ip neigh del 10.244.1.0 dev podnet.1 && bridge fdb del "+mac+" dev podnet.1 dst 192.168.56.11")
	start := time.Now()
	for {
		v := view()
		if v.complete("192.168.56.11") {
			took := time.Since(start)
			t.Logf("route, neighbour and FDB entry back after %s (no Node events: the resync found them)", took.Round(10*time.Millisecond))
			if took > 11*time.Second {
				t.Errorf("the repair took %s, more than the resync period of 10s", took.Round(10*time.Millisecond))
			}
			break
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("20s after deleting them (resync period 10s), node-2's state for node-1 is not back:\n%s", v.raw)
		}
		time.Sleep(200 * time.Millisecond)
	}
	thaw()
	out := e.onNode("node-2", "ip route show proto static")
	for _, r := range strings.Split(foreign, "; ") {
		if !strings.Contains(out, strings.TrimSuffix(r, " proto static")) {
			t.Errorf("podnetd's repair removed the foreign route %q; node-2's static routes:\n%s", r, out)
		}
	}
	e.onNode("node-2", "ip route del 10.99.0.0/24 dev eth1; ip route del 10.244.99.0/24 dev eth1")

	// Drift on the API side: node-1's VTEP MAC annotation removed by hand
	// comes back, and with it node-2's state for node-1.
	ctx := context.Background()
	patch := []byte(`{"metadata":{"annotations":{"` + backend.AnnotationVTEPMAC + `":null}}}`)
	if _, err := e.client.CoreV1().Nodes().Patch(ctx, "node-1", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	for {
		n, err := e.client.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		v := view()
		if n.Annotations[backend.AnnotationVTEPMAC] == mac && v.complete("192.168.56.11") {
			t.Logf("node-1's %s annotation, removed by hand, back after %s (and node-2's state for node-1)", backend.AnnotationVTEPMAC, time.Since(start).Round(10*time.Millisecond))
			break
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("20s after removing node-1's %s annotation: annotation %q, node-2's state for node-1:\n%s",
				backend.AnnotationVTEPMAC, n.Annotations[backend.AnnotationVTEPMAC], v.raw)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// freezeNodeAgents freezes the kubelet of every machine (their cgroups;
// the pods' containers live in the kubelet's cgroup root, not in its own
// group, and go on) until the returned function, or the test's end, thaws
// them: no Node status update, no lease renewal, so no Node event.
func freezeNodeAgents(t *testing.T) func() {
	t.Helper()
	return freeze(t, "kubelet", lab.ControlPlane, "node-1", "node-2")
}

// overlayView is what a node holds for one remote node under vxlan.
type overlayView struct {
	route, neigh, fdb string
	raw               string
}

// complete says whether the node holds the whole triple, as podnet writes it.
func (v overlayView) complete(remoteIP string) bool {
	return strings.Contains(v.route, "dev podnet.1") && strings.Contains(v.route, "proto 201") && strings.Contains(v.route, "onlink") &&
		strings.Contains(v.neigh, "PERMANENT") && strings.Contains(v.fdb, "dst "+remoteIP) && strings.Contains(v.fdb, "permanent")
}

// overlayOf reads node's route to the remote pod subnet whose network
// address (and VTEP address) is vtepIP, its neighbour entry and the FDB
// entry for the remote VTEP's MAC.
func overlayOf(e *env, node, vtepIP, mac string) overlayView {
	out := e.onNode(node, "ip route show "+vtepIP+"/24; echo @@; ip neigh show to "+vtepIP+" dev podnet.1; echo @@; bridge fdb show dev podnet.1 | grep -i '^"+mac+" ' || true")
	parts := strings.SplitN(out, "@@\n", 3)
	if len(parts) != 3 {
		e.t.Fatalf("unexpected output on %s:\n%s", node, out)
	}
	return overlayView{route: strings.TrimSpace(parts[0]), neigh: strings.TrimSpace(parts[1]), fdb: strings.TrimSpace(parts[2]),
		raw: "route: " + parts[0] + "neigh: " + parts[1] + "fdb:   " + parts[2]}
}

func vtepMAC(t *testing.T, e *env, node string) string {
	t.Helper()
	n, err := e.client.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mac := n.Annotations[backend.AnnotationVTEPMAC]
	if mac == "" {
		t.Fatalf("node %s has no %s annotation", node, backend.AnnotationVTEPMAC)
	}
	return mac
}

// podnetdRestart: while a pod on node-2 pings a pod on node-1 five times
// a second and streams lines to another over one TCP connection, podnetd
// is killed (SIGKILL) on both nodes, twice; kubelet restarts its container
// (the second time after CrashLoopBackOff's 10 s). Not one ping may be
// lost, the TCP connection must carry every line in order without a stall,
// and the restarted agents must find nothing to change (they adopt the
// dataplane).
func podnetdRestart(t *testing.T, e *env, target string) {
	tr := startDeployTraffic(t, e, "restart", target)
	nodes := []string{"node-1", "node-2"}
	before := map[string]int{}
	for _, n := range nodes {
		before[n] = podnetdRestarts(t, e, n)
	}
	time.Sleep(2 * time.Second)
	for round := 1; round <= 2; round++ {
		killStart := time.Now()
		old := map[string]int{}
		for _, n := range nodes {
			old[n] = podnetdPID(t, n)
			if err := syscall.Kill(old[n], syscall.SIGKILL); err != nil {
				t.Fatalf("kill -9 podnetd (pid %d) on %s: %v", old[n], n, err)
			}
		}
		for _, n := range nodes {
			pid := waitPodnetdRestarted(t, n, old[n])
			t.Logf("round %d: podnetd on %s killed (pid %d), running again as pid %d after %s", round, n, old[n], pid, time.Since(killStart).Round(10*time.Millisecond))
		}
		time.Sleep(3 * time.Second) // let the new agents sync before the next kill
	}
	tr.stopAndCheck(t)

	// The restarted agents adopted the dataplane: nothing to add or remove.
	for _, n := range nodes {
		if got := podnetdRestarts(t, e, n); got != before[n]+2 {
			t.Errorf("%s: the podnet pod's container restarted %d times, want 2", n, got-before[n])
		}
		for r := before[n] + 1; r <= before[n]+2; r++ {
			for _, l := range strings.Split(podnetdContainerLog(t, e, n, r), "\n") {
				if strings.Contains(l, "dataplane synced") || strings.Contains(l, "level=ERROR") {
					t.Errorf("%s: a restarted podnetd changed the dataplane or failed instead of adopting it: %s", n, l)
				}
			}
		}
	}
}

// checkStream checks the server's "TIMESTAMP line N" log: every line, in
// order, none arriving more than a second after the one before.
func checkStream(t *testing.T, out string, lines int) {
	t.Helper()
	var prev float64
	var maxGap float64
	next := 0
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) != 3 || f[1] != "line" {
			t.Errorf("stream server: unexpected line %q", l)
			continue
		}
		ts, err1 := strconv.ParseFloat(f[0], 64)
		n, err2 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil || n != next {
			t.Fatalf("stream server: got %q, want line %d; log:\n%s", l, next, out)
		}
		if next > 0 && ts-prev > maxGap {
			maxGap = ts - prev
		}
		prev, next = ts, next+1
	}
	if next != lines {
		t.Fatalf("stream server got %d lines over the TCP connection, want %d; log:\n%s", next, lines, out)
	}
	t.Logf("TCP stream: %d lines in order, longest gap %.0f ms", next, maxGap*1000)
	if maxGap > 1.0 {
		t.Errorf("the TCP stream stalled for %.0f ms (lines every 100 ms): packets were lost and retransmitted", maxGap*1000)
	}
}

func pingSummary(out string) string {
	if i := strings.Index(out, "---"); i >= 0 {
		return out[i:]
	}
	return out
}

// podnetdPID is the pid of podnetd on node: the process of the podnet
// DaemonSet pod's container, found by its cgroup below the node's kubelet
// cgroup root.
func podnetdPID(t *testing.T, node string) int {
	t.Helper()
	pids := podnetdPIDs(node)
	if len(pids) != 1 {
		t.Fatalf("%d podnetd processes in %s's pods, want 1: %v", len(pids), node, pids)
	}
	return pids[0]
}

// podnetdPIDs are the podnetd processes in the cgroups of node's pods.
func podnetdPIDs(node string) []int {
	var out []int
	procs, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, f := range procs {
		c, err := os.ReadFile(f)
		if err != nil || strings.TrimSpace(string(c)) != "podnetd" {
			continue
		}
		dir := filepath.Dir(f)
		cg, err := os.ReadFile(filepath.Join(dir, "cgroup"))
		if err != nil || !strings.Contains(string(cg), ":/"+lab.CgroupName+"/"+node+"/kubepods/") {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(dir)); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// componentPIDs are the processes named comm in the lab component's
// cgroup (faultMainPID picks the component itself among them).
func componentPIDs(t *testing.T, node, component, comm string) []int {
	t.Helper()
	m, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(m, lab.CgroupName, node, component, "cgroup.procs"))
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		pid, _ := strconv.Atoi(f)
		if c, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(c)) == comm {
			out = append(out, pid)
		}
	}
	return out
}

// waitPodnetdRestarted waits for kubelet to run podnetd's container again
// (CrashLoopBackOff waits 10 s, 20 s, … before the second, third, …
// restart) and returns the new pid.
func waitPodnetdRestarted(t *testing.T, node string, old int) int {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if pids := podnetdPIDs(node); len(pids) == 1 && pids[0] != old {
			return pids[0]
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("podnetd on %s not restarted within 60s of killing pid %d", node, old)
	return 0
}

// podnetPod is the podnet DaemonSet's pod on node.
func podnetPod(t *testing.T, e *env, node string) corev1.Pod {
	t.Helper()
	pods, err := e.client.CoreV1().Pods("kube-system").List(context.Background(), metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/name=podnet", FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != 1 {
		t.Fatalf("%d podnet pods on %s, want 1", len(pods.Items), node)
	}
	return pods.Items[0]
}

// podnetdRestarts is how often kubelet restarted podnetd's container on node.
func podnetdRestarts(t *testing.T, e *env, node string) int {
	t.Helper()
	p := podnetPod(t, e, node)
	for _, c := range p.Status.ContainerStatuses {
		if c.Name == "podnetd" {
			return int(c.RestartCount)
		}
	}
	t.Fatalf("the podnet pod on %s has no podnetd container status", node)
	return 0
}

// podnetdContainerLog is the log of podnetd's container on node after
// restart restarts, as kubelet keeps it on the node
// (/var/log/pods/NS_POD_UID/CONTAINER/RESTART.log): readable while the API
// server is away, and for a container before the last.
func podnetdContainerLog(t *testing.T, e *env, node string, restart int) string {
	t.Helper()
	return e.onNode(node, fmt.Sprintf("cat /var/log/pods/kube-system_podnet-*/podnetd/%d.log", restart))
}

// podnetdLog is the log of podnetd's containers on node that kubelet keeps
// (the current one and the one before), oldest first.
func podnetdLog(t *testing.T, e *env, node string) string {
	t.Helper()
	return e.onNode(node, "for f in $(ls /var/log/pods/kube-system_podnet-*/podnetd/*.log | sort -t/ -k7 -n); do cat $f; done")
}

// waitListening waits until something in pod listens on TCP port.
func waitListening(t *testing.T, e *env, pod string, port int) {
	t.Helper()
	var out string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		out, _ = e.podnetctl("lab", "kubectl", "--", "exec", pod, "--", "ss", "-Hltn")
		if strings.Contains(out, fmt.Sprintf(":%d ", port)) {
			return
		}
	}
	t.Fatalf("nothing listens on port %d in %s after 15s:\n%s", port, pod, out)
}

func podLogs(t *testing.T, e *env, pod string) string {
	t.Helper()
	out, err := e.podnetctl("lab", "kubectl", "--", "logs", pod)
	if err != nil {
		t.Fatalf("kubectl logs %s: %v\n%s", pod, err, out)
	}
	return out
}

func waitDoneWithin(t *testing.T, e *env, name string, d time.Duration) corev1.PodPhase {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		p, err := e.client.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && (p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed) {
			return p.Status.Phase
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("pod %s did not finish within %s", name, d)
	return ""
}

// podnetdNodeDeletion: deleting node-2's Node object makes node-1 drop its
// route, neighbour and FDB entry for node-2 at once (an informer event, not
// the next resync). Kubelet registers its Node only when it starts, so
// node-2 stays away and node-1 must keep its state gone through a full
// resync. Then node-2 "reboots" (its kubelet is killed and restarted by the
// lab) and registers anew, with whatever pod subnet node IPAM gives it (the
// same one, here, or another), and node-2 must come back whole: its facts
// published again, the DaemonSet's podnet pod running there again, its
// pods in its subnet, routed from node-1.
func podnetdNodeDeletion(t *testing.T, e *env, target string) {
	ctx := context.Background()
	mac := vtepMAC(t, e, "node-2")
	if v := overlayOf(e, "node-1", "10.244.2.0", mac); !v.complete("192.168.56.12") {
		t.Fatalf("before the deletion, node-1 lacks podnet's state for node-2:\n%s", v.raw)
	}
	start := time.Now()
	if err := e.client.CoreV1().Nodes().Delete(ctx, "node-2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for {
		v := overlayOf(e, "node-1", "10.244.2.0", mac)
		if v.route == "" && v.neigh == "" && v.fdb == "" {
			t.Logf("node-1 dropped node-2's route, neighbour and FDB entry %s after the Node's deletion", time.Since(start).Round(10*time.Millisecond))
			break
		}
		if time.Since(start) > 3*time.Second {
			t.Fatalf("3s after deleting node-2's Node, node-1 still holds:\n%s", v.raw)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// One resync period and more: the Node stays away and so does its state
	// (drift repair must not resurrect it) — or, should it come back by
	// itself, its state comes back too.
	deadline := time.Now().Add(12 * time.Second)
	for time.Now().Before(deadline) {
		_, err := e.client.CoreV1().Nodes().Get(ctx, "node-2", metav1.GetOptions{})
		if err == nil {
			t.Logf("node-2's Node came back by itself after %s", time.Since(start).Round(10*time.Millisecond))
			podnetdNodeBack(t, e, target)
			return
		}
		if v := overlayOf(e, "node-1", "10.244.2.0", mac); v.route != "" || v.neigh != "" || v.fdb != "" {
			t.Fatalf("node-2's Node is gone (get: %v), yet node-1 holds state for it again:\n%s", err, v.raw)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("node-2's Node stayed deleted for %s (kubelet registers only at start); node-1 kept no state for it", time.Since(start).Round(100*time.Millisecond))

	old := faultMainPID(t, "node-2", "kubelet", "kubelet")
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatalf("kill node-2's kubelet (pid %d): %v", old, err)
	}
	podnetdNodeBack(t, e, target)
}

// podnetdNodeBack: node-2, registered again, has its subnet, facts and
// NetworkUnavailable=False, its conflist gives the new subnet, node-1 routes
// it, and a new pod on node-2 reaches the target on node-1.
func podnetdNodeBack(t *testing.T, e *env, target string) {
	ctx := context.Background()
	start := time.Now()
	var n *corev1.Node
	var problems []string
	for {
		var err error
		n, err = e.client.CoreV1().Nodes().Get(ctx, "node-2", metav1.GetOptions{})
		problems = nil
		if err != nil {
			problems = append(problems, err.Error())
		} else if n.Spec.PodCIDR == "" {
			problems = append(problems, "node-2 has no pod subnet")
		} else {
			problems = nodeFactProblems(n, "vxlan")
			if conf := e.onNode("node-2", "cat /etc/cni/net.d/10-podnet.conflist"); !strings.Contains(conf, `"subnet": "`+n.Spec.PodCIDR+`"`) {
				problems = append(problems, "node-2's conflist does not give its pod subnet "+n.Spec.PodCIDR+":\n"+conf)
			}
			vtep := strings.TrimSuffix(n.Spec.PodCIDR, "/24")
			if v := overlayOf(e, "node-1", vtep, n.Annotations[backend.AnnotationVTEPMAC]); !v.complete("192.168.56.12") {
				problems = append(problems, "node-1 lacks podnet's state for node-2:\n"+v.raw)
			}
		}
		if len(problems) == 0 {
			break
		}
		if time.Since(start) > 60*time.Second { // kubelet restarted, the DaemonSet's pod made anew
			t.Fatalf("60s after node-2 came back:\n%s", strings.Join(problems, "\n"))
		}
		time.Sleep(300 * time.Millisecond)
	}
	t.Logf("node-2 registered again with pod subnet %s; its facts published and node-1 routing it %s later",
		n.Spec.PodCIDR, time.Since(start).Round(10*time.Millisecond))
	e.runPod(t, "back", "node-2", corev1.RestartPolicyNever, "busybox", []string{"ping", "-c", "3", "-W", "2", target})
	if phase := waitDoneWithin(t, e, "back", 45*time.Second); phase != corev1.PodSucceeded {
		t.Fatalf("a new pod on node-2 (subnet %s) could not ping %s on node-1:\n%s", n.Spec.PodCIDR, target, podLogs(t, e, "back"))
	}
	p, err := e.client.CoreV1().Pods("default").Get(ctx, "back", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(p.Status.PodIP, strings.TrimSuffix(n.Spec.PodCIDR, "0/24")) {
		t.Errorf("the new pod on node-2 got %s, outside node-2's subnet %s", p.Status.PodIP, n.Spec.PodCIDR)
	}
}

package lab_test

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// crossNode checks that a pod on node-2 reaches a pod on node-1 by its own
// IP and is seen there with its true source address (no NAT).
func crossNode(t *testing.T, e *env) {
	t.Helper()
	ctx := context.Background()
	srv := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "netexec", Namespace: "default"},
		Spec: corev1.PodSpec{NodeName: "node-1", TerminationGracePeriodSeconds: new(int64), Containers: []corev1.Container{{
			Name: "netexec", Image: "registry.k8s.io/e2e-test-images/agnhost:2.53", Args: []string{"netexec", "--http-port=8080"}}}}}
	if _, err := e.client.CoreV1().Pods("default").Create(ctx, srv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ip := e.waitRunning(t, "netexec")
	e.runPod(t, "xclient", "node-2", corev1.RestartPolicyNever, "busybox", []string{"wget", "-qO-", "-T", "5", "http://" + ip + ":8080/clientip"})
	if phase := e.waitDone(t, "xclient"); phase != corev1.PodSucceeded {
		t.Fatalf("a pod on node-2 could not reach %s:8080 on node-1 (phase %s)", ip, phase)
	}
	client, err := e.client.CoreV1().Pods("default").Get(ctx, "xclient", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.podnetctl("lab", "kubectl", "--", "logs", "xclient")
	if err != nil || !strings.HasPrefix(strings.TrimSpace(out), client.Status.PodIP+":") {
		t.Fatalf("node-1's pod saw the client as %q (err %v), want the client pod's own address %s", out, err, client.Status.PodIP)
	}
}

// TestLabHostGW is seed 003's cross-node traceroute under host-gw: node-2's
// gateway, node-1's underlay address, the pod — and nothing else. node-3
// sits on a second segment, which host-gw cannot reach: it is refused,
// loudly, and never routed into a black hole.
func TestLabHostGW(t *testing.T) {
	if testing.Short() {
		t.Skip("lab test")
	}
	e := upLab(t, "--backend", "host-gw", "--workers", "3", "--far-workers", "1")
	e.runPod(t, "httpd", "node-1", corev1.RestartPolicyAlways, "httpd", nil)
	ip := e.waitRunning(t, "httpd")
	e.runPod(t, "traceroute", "node-2", corev1.RestartPolicyNever, "busybox", []string{"traceroute", "-n", ip})
	if phase := e.waitDone(t, "traceroute"); phase != corev1.PodSucceeded {
		t.Fatalf("traceroute ended %s", phase)
	}
	out, err := e.podnetctl("lab", "kubectl", "--", "logs", "traceroute")
	if err != nil {
		t.Fatal(err)
	}
	var hops []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		if f := strings.Fields(l); len(f) > 1 {
			hops = append(hops, f[1])
		}
	}
	want := []string{"10.244.2.1", "192.168.56.11", ip}
	if strings.Join(hops, " ") != strings.Join(want, " ") {
		t.Fatalf("traceroute hops %v, want %v (seed 003):\n%s", hops, want, out)
	}
	crossNode(t, e)
	t.Run("every pod reaches every pod", func(t *testing.T) {
		nodes := []string{"node-1", "node-2"}
		everyPodReachesEveryPod(t, e, nodes, startPairPods(t, e, nodes))
	})
	hostGWRefusesFar(t, e)
}

// hostGWRefusesFar: node-1 has no route to node-3's pods, says why in its
// log, and a pod sending there gets "unreachable" at once instead of
// waiting for a timeout.
func hostGWRefusesFar(t *testing.T, e *env) {
	t.Helper()
	if r := e.onNode("node-1", "ip route show "+podCIDR(t, e, "node-3").String()); strings.TrimSpace(r) != "" {
		t.Errorf("host-gw on node-1 routes node-3's pods although node-3 is on another segment: %s", r)
	}
	want := "host-gw needs nodes on one L2 segment: 192.168.57.13 is not in 192.168.56.0/24"
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(podnetdLog(t, e, "node-1"), want) {
		if time.Now().After(deadline) {
			t.Fatalf("node-1's podnetd log does not say why node-3 is refused (want %q):\n%s", want, podnetdLog(t, e, "node-1"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out, err := e.podnetctl("lab", "kubectl", "--", "get", "events", "--field-selector", "involvedObject.name=node-1,reason=RemoteNodeRefused", "-o", "custom-columns=TYPE:.type,MSG:.message", "--no-headers"); err != nil ||
		!strings.Contains(out, "Warning") || !strings.Contains(out, "node node-3") || !strings.Contains(out, want) {
		t.Errorf("no Warning event RemoteNodeRefused on node-1 for node-3 (err %v):\n%s", err, out)
	}
	e.runPod(t, "far-srv", "node-3", corev1.RestartPolicyAlways, "httpd", nil)
	ip := e.waitRunning(t, "far-srv")
	// iputils' ping (netshoot) prints the ICMP errors it gets; busybox's
	// does not.
	e.runPod(t, "far-ping", "node-1", corev1.RestartPolicyNever, "nicolaka/netshoot", []string{"ping", "-c", "1", "-W", "5", ip})
	start := time.Now()
	if phase := e.waitDone(t, "far-ping"); phase != corev1.PodFailed {
		t.Fatalf("a pod on node-1 pinged node-3's pod %s under host-gw across segments (phase %s)", ip, phase)
	}
	out := podLogs(t, e, "far-ping")
	if !strings.Contains(strings.ToLower(out), "unreachable") {
		t.Errorf("ping from node-1 to node-3's pod did not report unreachable (a black hole?), took %s:\n%s", time.Since(start).Round(time.Millisecond), out)
	}
}

package lab_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podnet/podnet/internal/netnstest"
	"github.com/podnet/podnet/pkg/backend"
	"github.com/podnet/podnet/pkg/lab"
)

// labAntiSpoofing is the measurement turned into a test: a pod on
// node-1 with NET_ADMIN adds another pod's address (and one of node-2's
// subnet) to its eth0 and sends UDP from it — to a pod on node-2, to a pod
// on its own bridge, and through a Service; nothing arrives (tcpdump in
// the receivers sees only the pod's true address), and podnetd logs the
// drop naming the pod. Then a VXLAN packet crafted on the lab's outside
// host (the "internet" at 192.168.56.254) reaches node-2's underlay
// interface and is dropped before decapsulation. The kernel tests
// (pkg/antispoof) show each attack succeeding without the guard.
func labAntiSpoofing(t *testing.T, e *env) {
	ctx := context.Background()
	capture := func(name, node string) {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"app": name}},
			Spec: corev1.PodSpec{NodeName: node, TerminationGracePeriodSeconds: new(int64), Containers: []corev1.Container{{
				Name: "c", Image: "nicolaka/netshoot", Command: []string{"tcpdump", "-Z", "root", "-nli", "eth0", "udp", "port", "8081"}}}}}
		if _, err := e.client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	capture("sink-far", "node-2")
	capture("sink-near", "node-1")
	spoofer := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "spoofer", Namespace: "default"},
		Spec: corev1.PodSpec{NodeName: "node-1", TerminationGracePeriodSeconds: new(int64), Containers: []corev1.Container{{
			Name: "c", Image: "nicolaka/netshoot", Command: []string{"sleep", "3600"},
			SecurityContext: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN"}}}}}}}
	if _, err := e.client.CoreV1().Pods("default").Create(ctx, spoofer, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	far, near, me := e.waitRunning(t, "sink-far"), e.waitRunning(t, "sink-near"), e.waitRunning(t, "spoofer")
	svc := e.service(t, "sink-far", map[string]string{"app": "sink-far"}, nil)
	e.waitEndpoints(t, "sink-far", 1)
	send := func(src, dst string, port int) {
		t.Helper()
		s := ""
		if src != "" {
			s = "-s " + src
		}
		script := fmt.Sprintf("for i in 1 2 3; do echo probe | nc -u -w1 %s %s %d; done", s, dst, port)
		if out, err := e.exec("spoofer", "bash", "-c", script); err != nil {
			t.Fatalf("spoofer: %s: %v\n%s", script, err, out)
		}
	}
	seen := func(sink, src string) bool {
		return strings.Contains(podLogs(t, e, sink), " IP "+src+".")
	}
	// The capture works: the spoofer's own packets arrive.
	waitFor(t, 30*time.Second, "the spoofer's true packets captured by both sinks", func() (bool, string) {
		send("", far, 8081)
		send("", near, 8081)
		return seen("sink-far", me) && seen("sink-near", me), podLogs(t, e, "sink-far")
	})
	forged := "10.244.2.99"
	for _, a := range []string{forged, near} {
		if out, err := e.exec("spoofer", "ip", "addr", "add", a+"/32", "dev", "eth0"); err != nil {
			t.Fatalf("spoofer: ip addr add %s: %v\n%s", a, err, out)
		}
	}
	send(forged, far, 8081)              // to another node
	send(near, far, 8081)                // to another node, posing as sink-near
	send(forged, near, 8081)             // on the same bridge
	send(forged, svc.Spec.ClusterIP, 81) // through a Service
	time.Sleep(2 * time.Second)
	for _, c := range []struct{ sink, src string }{{"sink-far", forged}, {"sink-far", near}, {"sink-near", forged}} {
		if seen(c.sink, c.src) {
			t.Errorf("%s received packets forged with source %s:\n%s", c.sink, c.src, lastLines(podLogs(t, e, c.sink), 10))
		}
	}
	log := podnetdLog(t, e, "node-1")
	if !strings.Contains(log, "spoofed packet dropped") || !strings.Contains(log, "pod=default/spoofer") || !strings.Contains(log, "src="+forged) {
		t.Errorf("podnetd on node-1 logged no drop of default/spoofer's %s:\n%s", forged, lastLines(log, 20))
	}

	// VXLAN from the outside host, posing as node-1's pod 10.244.1.66.
	n2, err := e.client.CoreV1().Nodes().Get(ctx, "node-2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vtepMAC := n2.Annotations[backend.AnnotationVTEPMAC]
	node2IP := ""
	for _, a := range n2.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			node2IP = a.Address
		}
	}
	out := lab.InternetNS
	ip := func(args ...string) {
		t.Helper()
		if b, err := exec.Command("ip", append([]string{"-n", out}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip -n %s %s: %v\n%s", out, strings.Join(args, " "), err, b)
		}
	}
	ip("link", "add", "evil", "type", "vxlan", "id", fmt.Sprint(backend.VNI), "local", lab.InternetGatewayIP.String(),
		"dev", "eth0", "dstport", fmt.Sprint(backend.VXLANPort), "nolearning")
	t.Cleanup(func() { _ = exec.Command("ip", "-n", out, "link", "del", "evil").Run() })
	ip("addr", "add", "10.244.1.66/32", "dev", "evil")
	ip("link", "set", "evil", "up")
	ip("neigh", "add", "10.244.2.0", "lladdr", vtepMAC, "dev", "evil", "nud", "permanent")
	ip("route", "add", "10.244.2.0/24", "via", "10.244.2.0", "dev", "evil", "onlink", "src", "10.244.1.66")
	if b, err := exec.Command("bridge", "-n", out, "fdb", "append", vtepMAC, "dev", "evil", "dst", node2IP, "self", "permanent").CombinedOutput(); err != nil {
		t.Fatalf("bridge fdb append: %v\n%s", err, b)
	}
	// node-2's underlay sees the encapsulated packets arrive
	arrived := make(chan string, 1)
	go func() {
		o, _ := e.podnetctl("lab", "node", "node-2", "--", "timeout", "10", "tcpdump", "-ni", lab.NodeLink, "-c", "3",
			fmt.Sprintf("udp port %d and src %s", backend.VXLANPort, lab.InternetGatewayIP))
		arrived <- o
	}()
	time.Sleep(2 * time.Second) // tcpdump listening
	outside := &netnstest.NS{Name: out, Path: "/var/run/netns/" + out}
	if err := outside.Do(func() error {
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP("10.244.1.66")}, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(far+":8081")))
		if err != nil {
			return err
		}
		defer c.Close()
		for range 5 {
			if _, err := c.Write([]byte("crafted")); err != nil {
				return err
			}
			time.Sleep(100 * time.Millisecond)
		}
		return nil
	}); err != nil {
		t.Fatalf("send crafted VXLAN from %s: %v", out, err)
	}
	if o := <-arrived; !strings.Contains(o, "3 packets captured") {
		t.Fatalf("the crafted VXLAN packets did not reach node-2's %s, so the test shows nothing:\n%s", lab.NodeLink, o)
	}
	time.Sleep(time.Second)
	if seen("sink-far", "10.244.1.66") {
		t.Errorf("sink-far received the packet decapsulated from crafted VXLAN:\n%s", lastLines(podLogs(t, e, "sink-far"), 10))
	}
	if log := podnetdLog(t, e, "node-2"); !strings.Contains(log, "kind=vxlan") {
		t.Errorf("podnetd on node-2 logged no VXLAN drop:\n%s", lastLines(log, 20))
	}
	for _, p := range []string{"spoofer", "sink-far", "sink-near"} {
		_ = e.client.CoreV1().Pods("default").Delete(ctx, p, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	}
	_ = e.client.CoreV1().Services("default").Delete(ctx, "sink-far", metav1.DeleteOptions{})
}

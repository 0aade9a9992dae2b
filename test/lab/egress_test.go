package lab_test

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"

	"github.com/podnet/podnet/pkg/lab"
)

// egress checks podnetd's masquerade with real packets: a pod reaching the
// lab's "internet" host is seen there with its node's address; a pod
// reaching a node address keeps its own.
func egress(t *testing.T, e *env) {
	t.Helper()
	// A server in the internet namespace that answers with the client's
	// address (a socket made inside the namespace stays there).
	inet, err := ns.GetNS("/var/run/netns/" + lab.InternetNS)
	if err != nil {
		t.Fatal(err)
	}
	defer inet.Close()
	var ln net.Listener
	if err := inet.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", lab.InternetHostIP.String()+":8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(host), host)
			c.Close()
		}
	}()
	e.runPod(t, "egress", "node-1", corev1.RestartPolicyNever, "busybox",
		[]string{"wget", "-qO-", "-T", "5", "http://" + lab.InternetHostIP.String() + ":8080/"})
	if phase := e.waitDone(t, "egress"); phase != corev1.PodSucceeded {
		t.Fatalf("a pod could not reach the lab's internet host %s (phase %s)", lab.InternetHostIP, phase)
	}
	out, err := e.podnetctl("lab", "kubectl", "--", "logs", "egress")
	if err != nil || strings.TrimSpace(out) != "192.168.56.11" {
		t.Fatalf("the internet host saw the pod as %q (err %v), want node-1's address 192.168.56.11", out, err)
	}
	// To a node address, no NAT: node-2 sees the pod's own address. The
	// client retries until the listener below is up.
	e.runPod(t, "to-node", "node-1", corev1.RestartPolicyNever, "busybox",
		[]string{"sh", "-c", "for i in $(seq 40); do nc -w 2 192.168.56.12 9100 </dev/null && exit 0; sleep 0.25; done; exit 1"})
	got := e.onNode("node-2", "timeout 10 nc -n -v -l -p 9100 </dev/null 2>&1 || true")
	if strings.Contains(got, "192.168.56.11") || !strings.Contains(got, "10.244.1.") {
		t.Fatalf("node-2 saw a pod connection as:\n%s\nwant the pod's own address (10.244.1.x), not the node's", got)
	}
}

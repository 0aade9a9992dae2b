// Package lab_test runs the lab end to end: `podnetctl lab up` with the real
// control plane, pods on chosen nodes, traffic between them, deletion, and
// `podnetctl lab down` leaving nothing behind. Needs root and the Kubernetes
// binaries that `make test` builds (hack/k8s.sh).
package lab_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/internal/cnitest"
	"github.com/podnet/podnet/pkg/lab"
)

// buildCLI builds podnetctl and podnet into one directory (lab up takes the
// plugin from beside podnetctl).
func buildCLI(t *testing.T) string {
	t.Helper()
	root, err := cnitest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/podnetctl", "./cmd/podnet", "./cmd/podnetd")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v: %s", err, out)
	}
	return filepath.Join(dir, "podnetctl")
}

type env struct {
	t      *testing.T
	cli    string
	dir    string
	client kubernetes.Interface
}

func (e *env) podnetctl(args ...string) (string, error) {
	cmd := exec.Command(e.cli, args...)
	cmd.Env = append(os.Environ(), "PODNET_LAB_DIR="+e.dir)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (e *env) onNode(node, script string) string {
	e.t.Helper()
	out, err := e.podnetctl("lab", "node", node, "--", "/bin/sh", "-c", script)
	if err != nil {
		e.t.Fatalf("on %s: %s: %v\n%s", node, script, err, out)
	}
	return out
}

func TestLab(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("lab test: needs root")
	}
	e := upLab(t)
	c := e.client
	ctx := context.Background()

	t.Run("nodes", func(t *testing.T) {
		nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"controlplane": "10.244.0.0/24", "node-1": "10.244.1.0/24", "node-2": "10.244.2.0/24"}
		for _, n := range nodes.Items {
			if n.Spec.PodCIDR != want[n.Name] {
				t.Errorf("node %s: podCIDR %q, want %q", n.Name, n.Spec.PodCIDR, want[n.Name])
			}
			delete(want, n.Name)
		}
		if len(want) > 0 {
			t.Errorf("nodes missing: %v", want)
		}
	})

	httpd := e.runPod(t, "httpd", "node-1", corev1.RestartPolicyAlways, "httpd", nil)
	ip := e.waitRunning(t, "httpd")

	t.Run("same-node traffic", func(t *testing.T) {
		e.runPod(t, "client", "node-1", corev1.RestartPolicyNever, "busybox", []string{"wget", "-qO-", "-T", "5", "http://" + ip + "/"})
		if phase := e.waitDone(t, "client"); phase != corev1.PodSucceeded {
			t.Fatalf("a pod on node-1 could not fetch http://%s/ from httpd on node-1 (phase %s)", ip, phase)
		}
		// And the test can fail: nothing listens on port 81.
		e.runPod(t, "client-refused", "node-1", corev1.RestartPolicyNever, "busybox", []string{"wget", "-qO-", "-T", "5", "http://" + ip + ":81/"})
		if phase := e.waitDone(t, "client-refused"); phase != corev1.PodFailed {
			t.Fatalf("fetching a closed port ended %s, want Failed", phase)
		}
	})

	t.Run("kubectl logs, exec and port-forward", func(t *testing.T) {
		e.runPod(t, "talker", "node-1", corev1.RestartPolicyAlways, "busybox", []string{"sh", "-c", "echo hello-from-pod; sleep 3600"})
		e.waitRunning(t, "talker")
		kubectl := func(args ...string) (string, error) {
			return e.podnetctl(append([]string{"lab", "kubectl", "--"}, args...)...)
		}
		var out string
		var err error
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
			if out, err = kubectl("logs", "talker"); err == nil && strings.Contains(out, "hello-from-pod") {
				break
			}
		}
		if err != nil || !strings.Contains(out, "hello-from-pod") {
			t.Errorf("kubectl logs talker: %v\n%s", err, out)
		}
		if out, err := kubectl("exec", "talker", "--", "hostname"); err != nil || strings.TrimSpace(out) != "talker" {
			t.Errorf("kubectl exec talker -- hostname: %v\n%s", err, out)
		}
		if out, err := kubectl("exec", "talker", "--", "cat", "/etc/resolv.conf"); err != nil || !strings.Contains(out, "nameserver 10.96.0.10") {
			t.Errorf("kubectl exec talker -- cat /etc/resolv.conf: %v\n%s", err, out)
		}
		var ee *exec.ExitError
		if out, err := kubectl("exec", "talker", "--", "sh", "-c", "exit 3"); !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Errorf("kubectl exec talker -- sh -c 'exit 3': %v, want exit status 3\n%s", err, out)
		}
		e.portForward(t, httpd, 80, func(local int) {
			body, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/", local))
			if err != nil || !strings.Contains(body, "It works!") {
				t.Errorf("through kubectl port-forward to httpd: %v\n%s", err, body)
			}
		})
	})

	t.Run("cross-node traffic (vxlan)", func(t *testing.T) { crossNode(t, e) })

	t.Run("egress masquerade", func(t *testing.T) { egress(t, e) })

	t.Run("podnetd health and metrics", func(t *testing.T) {
		out := e.onNode("node-1", "curl -s 127.0.0.1:9965/healthz; curl -s 127.0.0.1:9965/metrics | grep -E '^podnet_(sync_duration_seconds_count|remote_nodes) '")
		if !strings.HasPrefix(out, "ok\n") || !strings.Contains(out, "podnet_remote_nodes 2") || !strings.Contains(out, "podnet_sync_duration_seconds_count") {
			t.Errorf("podnetd on node-1: /healthz and /metrics said:\n%s", out)
		}
		if st, _ := e.podnetctl("lab", "status"); strings.Count(st, "=Running,ready,answering") != 3 || !strings.Contains(st, "podnet-") {
			t.Errorf("lab status does not show the podnet pod on each of the 3 nodes ready and podnetd answering:\n%s", st)
		}
	})

	t.Run("the node's view", func(t *testing.T) {
		out := e.onNode("node-1", "hostname; ip netns list; brctl show cni0; cat /etc/cni/net.d/10-podnet.conflist")
		for _, want := range []string{"node-1", "cni-", "cni0", "10.244.1.0/24"} {
			if !strings.Contains(out, want) {
				t.Errorf("node-1's view lacks %q:\n%s", want, out)
			}
		}
		// Each node lists its own pods' namespaces only.
		on2 := e.onNode("node-2", "ip netns list")
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) > 0 && strings.HasPrefix(f[0], "cni-") && strings.Contains(on2, f[0]) {
				t.Errorf("node-2 lists node-1's pod namespace %s:\n%s", f[0], on2)
			}
		}
	})

	t.Run("unknown image", func(t *testing.T) {
		e.runPod(t, "unknown", "node-2", corev1.RestartPolicyNever, "example.com/no-such-image:1", nil)
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			p, err := c.CoreV1().Pods("default").Get(ctx, "unknown", metav1.GetOptions{})
			if err == nil && len(p.Status.ContainerStatuses) == 1 {
				if w := p.Status.ContainerStatuses[0].State.Waiting; w != nil && w.Reason == "ErrImagePull" && strings.Contains(w.Message, "no-such-image") {
					return
				}
			}
			time.Sleep(300 * time.Millisecond)
		}
		t.Fatal("a pod with an unknown image never reported ErrImagePull naming the image")
	})

	t.Run("deletion releases the address", func(t *testing.T) {
		if out := e.onNode("node-1", "ls /var/lib/cni/podnet/podnet/"); !strings.Contains(out, ip) {
			t.Fatalf("no reservation for %s on node-1:\n%s", ip, out)
		}
		if err := c.CoreV1().Pods("default").Delete(ctx, httpd, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(45 * time.Second)
		for {
			_, err := c.CoreV1().Pods("default").Get(ctx, httpd, metav1.GetOptions{})
			out := e.onNode("node-1", "ls /var/lib/cni/podnet/podnet/")
			if err != nil && !strings.Contains(out, ip) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after deleting httpd: pod gone=%v, reservations:\n%s", err != nil, out)
			}
			time.Sleep(300 * time.Millisecond)
		}
	})

	e.downLeavesNothing(t)
}

// downLeavesNothing runs `lab down` and checks that no namespace, link,
// mount, state or process of the lab is left.
func (e *env) downLeavesNothing(t *testing.T) {
	t.Helper()
	if out, err := e.podnetctl("lab", "down"); err != nil {
		t.Fatalf("lab down: %v\n%s", err, out)
	}
	t.Run("down leaves nothing", func(t *testing.T) {
		for _, ns := range []string{"controlplane", "node-1", "node-2", lab.SwitchNS, lab.InternetNS} {
			if _, err := os.Stat("/var/run/netns/" + ns); err == nil {
				t.Errorf("network namespace %s left", ns)
			}
		}
		if exec.Command("ip", "link", "show", lab.HostLink).Run() == nil {
			t.Errorf("%s left", lab.HostLink)
		}
		mi, _ := os.ReadFile("/proc/self/mountinfo")
		if strings.Contains(string(mi), e.dir) {
			t.Errorf("mounts left under %s", e.dir)
		}
		if _, err := os.Stat(e.dir); err == nil {
			t.Errorf("state dir %s left", e.dir)
		}
		if out, _ := exec.Command("pgrep", "-f", e.dir).Output(); len(out) > 0 {
			t.Errorf("processes of the lab left: %s", out)
		}
	})
}

// upLab brings a lab up for the test and registers its removal.
func upLab(t *testing.T, args ...string) *env {
	t.Helper()
	if _, err := os.Stat(filepath.Join(lab.DefaultK8sDir(), "kube-apiserver")); err != nil {
		t.Fatalf("Kubernetes binaries missing in %s: run `make test` (it runs hack/k8s.sh)", lab.DefaultK8sDir())
	}
	if _, err := os.Stat("/var/run/netns/" + lab.ControlPlane); err == nil {
		t.Fatalf("a lab (or a network namespace named %s) already exists on this machine: `podnetctl lab down` first", lab.ControlPlane)
	}
	e := &env{t: t, cli: buildCLI(t), dir: filepath.Join(t.TempDir(), "lab")}
	t.Cleanup(func() {
		if out, err := e.podnetctl("lab", "down"); err != nil {
			t.Errorf("lab down: %v\n%s", err, out)
		}
	})
	start := time.Now()
	if out, err := e.podnetctl(append([]string{"lab", "up"}, args...)...); err != nil {
		t.Fatalf("lab up: %v\n%s", err, out)
	}
	t.Logf("lab up took %s", time.Since(start).Round(100*time.Millisecond))
	c, err := lab.New(lab.Options{Dir: e.dir}).Client()
	if err != nil {
		t.Fatal(err)
	}
	e.client = c
	return e
}

func (e *env) runPod(t *testing.T, name, node string, rp corev1.RestartPolicy, image string, args []string) string {
	t.Helper()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{NodeName: node, RestartPolicy: rp, TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{Name: name, Image: image, Args: args}}}}
	if _, err := e.client.CoreV1().Pods("default").Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return name
}

// portForward runs `kubectl port-forward pod LOCAL:port` on a free local
// port while check runs.
func (e *env) portForward(t *testing.T, pod string, port int, check func(local int)) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	local := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(e.cli, "lab", "kubectl", "--", "port-forward", "--address", "127.0.0.1", "pod/"+pod, fmt.Sprintf("%d:%d", local, port))
	cmd.Env = append(os.Environ(), "PODNET_LAB_DIR="+e.dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	ready := make(chan bool, 2)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "Forwarding from") {
				ready <- true
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("kubectl port-forward %s ended: %s", pod, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("kubectl port-forward %s: not forwarding after 15s", pod)
	}
	check(local)
}

func httpGet(url string) (string, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s", resp.Status)
	}
	return string(b), err
}

func (e *env) waitRunning(t *testing.T, name string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		p, err := e.client.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
			return p.Status.PodIP
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("pod %s not Running within 30s", name)
	return ""
}

func (e *env) waitDone(t *testing.T, name string) corev1.PodPhase {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		p, err := e.client.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && (p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed) {
			return p.Status.Phase
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("pod %s did not finish within 30s", name)
	return ""
}

package lab_test

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podnet/podnet/pkg/lab"
)

// TestLabUpWithoutRoot: `lab up` as an ordinary user says what is missing
// and builds nothing.
func TestLabUpWithoutRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch to another user")
	}
	cli := buildCLI(t)
	dir, err := os.MkdirTemp("", "podnetctl-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "podnetctl")
	copyFile(t, cli, bin)
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin, "lab", "up")
	cmd.Env = append(os.Environ(), "PODNET_LAB_DIR="+filepath.Join(dir, "state"))
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "needs root") {
		t.Fatalf("lab up as nobody: err=%v, output:\n%s\nwant a failure saying it needs root", err, out)
	}
	if _, err := os.Stat("/var/run/netns/" + lab.ControlPlane); err == nil {
		t.Fatal("a refused lab up created a machine")
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestLabResilience: a second `up` refuses; with the API server frozen the
// pods keep running and serving, and when it returns the kubelets
// reconnect (a new pod starts, the nodes stay Ready).
func TestLabResilience(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("lab test: needs root")
	}
	e := upLab(t)
	ctx := context.Background()
	if out, err := e.podnetctl("lab", "up"); err == nil || !strings.Contains(out, "already") {
		t.Fatalf("second lab up: err=%v, output:\n%s\nwant a refusal saying a lab is already up", err, out)
	}
	if out, _ := e.podnetctl("lab", "status"); !strings.Contains(out, "kube-apiserver=running") || !strings.Contains(out, "node-2") {
		t.Errorf("lab status does not show the running components and nodes:\n%s", out)
	}
	e.runPod(t, "web", "node-1", corev1.RestartPolicyAlways, "nginx", nil)
	ip := e.waitRunning(t, "web")

	thaw := freezeAPIServer(t)
	// Longer than client-go's request timeouts and a lease renewal.
	for i := 0; i < 15; i++ {
		out := e.onNode("node-1", "wget -qO- -T 2 http://"+ip+"/ || echo FAILED")
		if !strings.Contains(out, "Welcome to nginx!") {
			t.Fatalf("with the API server frozen, the pod stopped serving: %s", out)
		}
		time.Sleep(time.Second)
	}
	thaw()
	e.runPod(t, "after", "node-1", corev1.RestartPolicyAlways, "nginx", nil)
	e.waitRunning(t, "after")
	p, err := e.client.CoreV1().Pods("default").Get(ctx, "web", metav1.GetOptions{})
	if err != nil || p.Status.ContainerStatuses[0].RestartCount != 0 || p.Status.PodIP != ip {
		t.Fatalf("the pod did not survive the outage untouched: %v %+v", err, p.Status)
	}
	t.Run("probes", func(t *testing.T) { testProbes(t, e) })
	t.Run("graceful termination", func(t *testing.T) { testGraceful(t, e) })
	n, err := e.client.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status != corev1.ConditionTrue {
			t.Errorf("node-1 not Ready after the outage: %s", c.Message)
		}
	}
}

// testProbes: readiness decides Ready (nginx answers / but not a missing
// path), and a failing liveness probe restarts the container.
func testProbes(t *testing.T, e *env) {
	ctx := context.Background()
	probe := func(path string) *corev1.Probe {
		return &corev1.Probe{PeriodSeconds: 1, ProbeHandler: corev1.ProbeHandler{
			HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(80)}}}
	}
	mk := func(name string, c corev1.Container) {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec: corev1.PodSpec{NodeName: "node-2", TerminationGracePeriodSeconds: new(int64), Containers: []corev1.Container{c}}}
		if _, err := e.client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mk("ready", corev1.Container{Name: "web", Image: "nginx", ReadinessProbe: probe("/")})
	mk("unready", corev1.Container{Name: "web", Image: "nginx", ReadinessProbe: probe("/no-such-page")})
	mk("unlive", corev1.Container{Name: "web", Image: "nginx", LivenessProbe: &corev1.Probe{PeriodSeconds: 1, FailureThreshold: 2,
		ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"false"}}}}})
	deadline := time.Now().Add(40 * time.Second)
	for {
		get := func(n string) *corev1.Pod {
			p, err := e.client.CoreV1().Pods("default").Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return p
		}
		ready, unready, unlive := get("ready"), get("unready"), get("unlive")
		ok := podReady(ready) && unready.Status.Phase == corev1.PodRunning && !podReady(unready) &&
			len(unlive.Status.ContainerStatuses) == 1 && unlive.Status.ContainerStatuses[0].RestartCount >= 1
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 40s: ready pod Ready=%v; unready pod phase %s Ready=%v; failing-liveness pod statuses %+v",
				podReady(ready), unready.Status.Phase, podReady(unready), unlive.Status.ContainerStatuses)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// testGraceful: deletion sends SIGTERM and waits the grace period before
// SIGKILL. A container that exits on SIGTERM is gone long before its 30 s
// grace period; one that ignores it lives its 3 s grace period, then dies.
func testGraceful(t *testing.T, e *env) {
	ctx := context.Background()
	mk := func(name, script string, grace int64) {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec: corev1.PodSpec{NodeName: "node-2", TerminationGracePeriodSeconds: &grace,
				Containers: []corev1.Container{{Name: "c", Image: "busybox", Command: []string{"sh", "-c", script}}}}}
		if _, err := e.client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mk("polite", "trap 'exit 0' TERM; while :; do sleep 0.2; done", 30)
	mk("stubborn", "trap '' TERM; while :; do sleep 0.2; done", 3)
	e.waitRunning(t, "polite")
	e.waitRunning(t, "stubborn")
	gone := func(name string) time.Duration {
		start := time.Now()
		if err := e.client.CoreV1().Pods("default").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		for time.Since(start) < 45*time.Second {
			if _, err := e.client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{}); err != nil {
				return time.Since(start)
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("pod %s still there 45s after deletion", name)
		return 0
	}
	if d := gone("polite"); d > 15*time.Second {
		t.Errorf("a pod that exits on SIGTERM took %s to go: SIGTERM was not delivered", d)
	}
	if d := gone("stubborn"); d < 3*time.Second {
		t.Errorf("a pod that ignores SIGTERM was gone after %s, before its 3s grace period", d)
	}
}

package lab_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podnet/podnet/pkg/lab"
	"github.com/podnet/podnet/pkg/lab/cgroup"
)

// TestLabRealNodes runs the lab on the real node software: kubelet v1.36.3,
// containerd and Debian's runc on every machine, images pulled from the lab
// registry. A real HTTP readiness probe, a pod reached across nodes with its
// own address, logs and exec through the real kubelet, crictl on the node,
// a kubelet killed and restarted under traffic, `kubectl run
// --image=nginx:latest` pulling as on a real cluster, and down leaving no
// cgroup behind.
func TestLabRealNodes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("lab test: needs root")
	}
	e := upLab(t)
	ctx := context.Background()
	c := e.client

	t.Run("nodes are the real kubelet on containerd", func(t *testing.T) {
		nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes.Items) != 3 {
			t.Fatalf("%d nodes, want 3", len(nodes.Items))
		}
		for _, n := range nodes.Items {
			ni := n.Status.NodeInfo
			if ni.KubeletVersion != filepath.Base(lab.DefaultK8sDir()) || !strings.HasPrefix(ni.ContainerRuntimeVersion, "containerd://") {
				t.Errorf("node %s: kubelet %q, runtime %q", n.Name, ni.KubeletVersion, ni.ContainerRuntimeVersion)
			}
		}
	})

	// A server with a real HTTP readiness probe, on node-1.
	probe := &corev1.Probe{PeriodSeconds: 1, ProbeHandler: corev1.ProbeHandler{
		HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt(8080)}}}
	srv := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "netexec", Namespace: "default"},
		Spec: corev1.PodSpec{NodeName: "node-1", TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{Name: "netexec", Image: "registry.k8s.io/e2e-test-images/agnhost:2.63.0",
				Args: []string{"netexec", "--http-port=8080"}, ReadinessProbe: probe}}}}
	if _, err := c.CoreV1().Pods("default").Create(ctx, srv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	srvIP := waitReady(t, e, "netexec", 90*time.Second)

	e.runPod(t, "client", "node-2", corev1.RestartPolicyAlways, "busybox", []string{"sleep", "3600"})
	clientIP := e.waitRunningWithin(t, "client", 60*time.Second)

	t.Run("a pod on node-2 reaches node-1's pod with its own address", func(t *testing.T) {
		out, err := e.exec("client", "wget", "-qO-", "-T", "5", "http://"+srvIP+":8080/clientip")
		if err != nil {
			t.Fatalf("wget from client: %v: %s", err, out)
		}
		if host, _, _ := strings.Cut(strings.TrimSpace(out), ":"); host != clientIP {
			t.Errorf("netexec saw the client as %q, want its pod IP %s", out, clientIP)
		}
	})

	t.Run("kubectl logs and exec through the kubelet", func(t *testing.T) {
		out, err := e.podnetctl("lab", "kubectl", "--", "logs", "netexec")
		if err != nil || !strings.Contains(out, "Started HTTP server on port 8080") {
			t.Errorf("kubectl logs netexec: %v: %s", err, out)
		}
		if out, err := e.exec("netexec", "/agnhost", "--help"); err != nil || !strings.Contains(out, "netexec") {
			t.Errorf("kubectl exec netexec -- /agnhost --help: %v: %s", err, out)
		}
	})

	t.Run("the node's own tools see the runtime", func(t *testing.T) {
		if out := e.onNode("node-1", "crictl ps --name netexec -q | wc -l"); strings.TrimSpace(out) != "1" {
			t.Errorf("crictl ps on node-1 lists %q netexec containers", out)
		}
		if out := e.onNode("node-1", "ip netns list"); !strings.Contains(out, "cni-") {
			t.Errorf("ip netns list on node-1 shows no pod sandbox: %q", out)
		}
	})

	t.Run("kubelet killed and restarted: the pod keeps its address and serves", func(t *testing.T) {
		old := faultMainPID(t, "node-1", "kubelet", "kubelet")
		e.onNode("node-1", "kill -9 "+strconv.Itoa(old))
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			out, err := e.exec("client", "wget", "-qO-", "-T", "2", "http://"+srvIP+":8080/hostname")
			if err != nil || strings.TrimSpace(out) != "netexec" {
				t.Fatalf("while kubelet was down: wget: %v: %q", err, out)
			}
		}
		waitFor(t, 60*time.Second, "a new kubelet answering /healthz", func() (bool, string) {
			pids := componentPIDs(t, "node-1", "kubelet", "kubelet")
			if len(pids) != 1 || pids[0] == old {
				return false, fmt.Sprintf("kubelet pids %v (killed %d)", pids, old)
			}
			out, err := e.podnetctl("lab", "node", "node-1", "--", "curl", "-s", "--max-time", "2", "http://127.0.0.1:10248/healthz")
			return err == nil && out == "ok", out
		})
		p, err := c.CoreV1().Pods("default").Get(ctx, "netexec", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Status.PodIP != srvIP || p.Status.ContainerStatuses[0].RestartCount != 0 {
			t.Errorf("after the kubelet restart: pod IP %s (was %s), restarts %d", p.Status.PodIP, srvIP, p.Status.ContainerStatuses[0].RestartCount)
		}
		if out, err := e.exec("client", "wget", "-qO-", "-T", "5", "http://"+srvIP+":8080/hostname"); err != nil || strings.TrimSpace(out) != "netexec" {
			t.Errorf("after the kubelet restart: %v: %q", err, out)
		}
	})

	t.Run("kubectl run --image=nginx:latest pulls from the lab registry and serves", func(t *testing.T) {
		if out, err := e.podnetctl("lab", "kubectl", "--", "run", "nginx", "--image=nginx:latest",
			`--overrides={"spec":{"nodeName":"node-2"}}`); err != nil {
			t.Fatalf("kubectl run: %v: %s", err, out)
		}
		ip := e.waitRunningWithin(t, "nginx", 60*time.Second)
		p, _ := c.CoreV1().Pods("default").Get(ctx, "nginx", metav1.GetOptions{})
		if pp := p.Spec.Containers[0].ImagePullPolicy; pp != corev1.PullAlways {
			t.Errorf("imagePullPolicy %s, want Always for :latest", pp)
		}
		waitFor(t, 20*time.Second, "nginx serving", func() (bool, string) {
			out, err := e.exec("client", "wget", "-qO-", "-T", "3", "http://"+ip+"/")
			return err == nil && strings.Contains(out, "Welcome to nginx!"), out
		})
	})

	e.downLeavesNothing(t)
	t.Run("down leaves no cgroup", func(t *testing.T) {
		hs, err := cgroup.V1Hierarchies()
		if err != nil {
			t.Fatal(err)
		}
		if m, err := cgroup.Mount(); err == nil {
			hs = append(hs, m)
		}
		for _, h := range hs {
			if _, err := os.Stat(filepath.Join(h, lab.CgroupName)); err == nil {
				t.Errorf("cgroup %s left", filepath.Join(h, lab.CgroupName))
			}
		}
	})
}

// waitReady waits for a pod's Ready condition and returns its IP.
func waitReady(t *testing.T, e *env, name string, d time.Duration) string {
	t.Helper()
	var ip string
	waitFor(t, d, "pod "+name+" Ready", func() (bool, string) {
		p, err := e.client.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				ip = p.Status.PodIP
				return ip != "", ""
			}
		}
		return false, string(p.Status.Phase) + " " + podWaiting(p)
	})
	return ip
}

// podWaiting says why a pod's containers wait, for failure messages.
func podWaiting(p *corev1.Pod) string {
	var why []string
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil {
			why = append(why, cs.Name+": "+w.Reason+" "+w.Message)
		}
	}
	return strings.Join(why, "; ")
}

// waitRunningWithin is waitRunning with a longer bound, for images that
// are pulled first.
func (e *env) waitRunningWithin(t *testing.T, name string, d time.Duration) string {
	t.Helper()
	var ip string
	waitFor(t, d, "pod "+name+" Running", func() (bool, string) {
		p, err := e.client.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		ip = p.Status.PodIP
		return p.Status.Phase == corev1.PodRunning && ip != "", string(p.Status.Phase) + " " + podWaiting(p)
	})
	return ip
}

// TestLabRealNodesKubeProxy: with --service-proxy kube-proxy on the real
// node software, kube-proxy is a DaemonSet shaped as kubeadm's (pods
// kube-proxy-xxxxx next to podnet's, seed 000's `kubectl get pods -n
// kube-system | grep kube-proxy`), its table is on every node and podnet's
// proxy table on none, and a pod resolves names through kube-dns's
// ClusterIP, which only kube-proxy implements.
func TestLabRealNodesKubeProxy(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("lab test: needs root")
	}
	e := upLab(t, "--service-proxy", "kube-proxy")
	var out string
	waitFor(t, 60*time.Second, "kube-proxy Running on every node", func() (bool, string) {
		var err error
		out, err = e.podnetctl("lab", "kubectl", "--", "get", "pods", "-n", "kube-system", "--no-headers",
			"-o", "custom-columns=NAME:.metadata.name,NODE:.spec.nodeName,PHASE:.status.phase")
		return err == nil && strings.Count(out, "kube-proxy-") == 3 && !strings.Contains(out, "Pending"), out
	})
	for _, n := range []string{"controlplane", "node-1", "node-2"} {
		var running []string
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[1] == n && f[2] == "Running" {
				running = append(running, f[0])
			}
		}
		has := func(prefix string) bool {
			for _, p := range running {
				if strings.HasPrefix(p, prefix) {
					return true
				}
			}
			return false
		}
		if !has("kube-proxy-") || !has("podnet-") {
			t.Errorf("node %s runs %v in kube-system, want kube-proxy-… and podnet-…:\n%s", n, running, out)
		}
	}
	for _, n := range []string{"node-1", "node-2"} {
		if tables := e.onNode(n, "nft list tables"); !strings.Contains(tables, "table ip kube-proxy") || strings.Contains(tables, "podnet-proxy") {
			t.Errorf("nft tables on %s: %q, want kube-proxy's and not podnet's proxy", n, tables)
		}
	}
	e.runPod(t, "client", "node-2", corev1.RestartPolicyAlways, "busybox", []string{"sleep", "3600"})
	e.waitRunningWithin(t, "client", 60*time.Second)
	out, err := e.exec("client", "nslookup", "kubernetes.default.svc.cluster.local")
	if err != nil || !strings.Contains(out, "10.96.0.1") {
		t.Errorf("nslookup through kube-dns (kube-proxy's ClusterIP): %v: %s", err, out)
	}
}

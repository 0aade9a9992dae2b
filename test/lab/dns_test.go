package lab_test

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/podnet/podnet/pkg/lab"
)

// TestLabDNS is the lab with its default service proxy (podnet's, in
// podnetd) and cluster DNS (CoreDNS behind kube-dns, 10.96.0.10):
// names resolve from a pod as seed 001 shows them, a Service's name
// reaches its backend, and nothing of the proxy lands on the host. The
// kubelet's volumes (the lab's nodes are real: this checks the lab, not
// kubelet) are checked on the same lab.
func TestLabDNS(t *testing.T) {
	if testing.Short() || os.Geteuid() != 0 {
		t.Skip("lab test: needs root")
	}
	ctMax, _ := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max")
	e := upLab(t)
	ctx := context.Background()
	// netshoot's nslookup (bind9's) applies the search path; busybox's
	// does not, as upstream busybox's since 1.28.
	e.runPod(t, "client", "node-1", corev1.RestartPolicyAlways, "nicolaka/netshoot", []string{"sleep", "3600"})
	e.waitRunning(t, "client")

	t.Run("nslookup kubernetes.default", func(t *testing.T) {
		e.expectLookup(t, "kubernetes.default", lab.APIServiceIP.String())
	})

	t.Run("a Service by its short name", func(t *testing.T) {
		e.createBackend(t)
		svc := e.createService(t, "my-service", "", map[string]string{"app": "backend"})
		e.expectLookup(t, "my-service", svc.Spec.ClusterIP)
		// Through the proxy's DNAT on node-1 to the backend on node-2.
		var out string
		var err error
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
			if out, err = e.exec("client", "curl", "-sf", "-m", "3", "http://my-service/hostname"); err == nil {
				break
			}
		}
		if err != nil || strings.TrimSpace(out) != "backend" {
			t.Fatalf("curl http://my-service/hostname from the client: %v\n%s", err, out)
		}
	})

	t.Run("a headless Service and its pods' names", func(t *testing.T) {
		e.createService(t, "db", corev1.ClusterIPNone, map[string]string{"app": "db"})
		ips := e.createStatefulSet(t, "db")
		e.expectLookup(t, "db", ips...)
		pod0, err := e.client.CoreV1().Pods("default").Get(ctx, "db-0", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		e.expectLookup(t, "db-0.db", pod0.Status.PodIP)
	})

	t.Run("no name leaves the lab", func(t *testing.T) {
		start := time.Now()
		out, err := e.exec("client", "nslookup", "example.com")
		if err == nil || !strings.Contains(out, "NXDOMAIN") || time.Since(start) > 3*time.Second {
			t.Errorf("example.com: want NXDOMAIN at once (no forward), got after %s: %v\n%s", time.Since(start), err, out)
		}
	})

	t.Run("the proxy stays on the machines", func(t *testing.T) {
		proxyStaysOnMachines(t, e, lab.ServiceProxyPodnet, lab.ControlPlane, "node-1", "node-2")
		if now, _ := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max"); string(now) != string(ctMax) {
			t.Errorf("the host's nf_conntrack_max changed from %q to %q", ctMax, now)
		}
	})

	t.Run("volumes", func(t *testing.T) { volumes(t, e) })

	e.downLeavesNothing(t)
}

// exec runs a command in a pod's container with kubectl exec.
func (e *env) exec(pod string, argv ...string) (string, error) {
	return e.podnetctl(append([]string{"lab", "kubectl", "--", "exec", pod, "--"}, argv...)...)
}

// expectLookup runs `nslookup NAME` in the client pod (netshoot: bind9's
// nslookup applies the search path) until the answer's addresses are want,
// for a while: CoreDNS learns new Services and endpoints from its watch.
func (e *env) expectLookup(t *testing.T, name string, want ...string) {
	t.Helper()
	e.expectLookupFrom(t, "client", name, want...)
}

// expectLookupFrom is expectLookup from another pod.
func (e *env) expectLookupFrom(t *testing.T, pod, name string, want ...string) {
	t.Helper()
	slices.Sort(want)
	var out string
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		out, err = e.exec(pod, "nslookup", name)
		got := answerAddrs(out)
		slices.Sort(got)
		if err == nil && slices.Equal(got, want) {
			return
		}
	}
	t.Fatalf("nslookup %s: want %v, got (err %v):\n%s", name, want, err, out)
}

// answerAddrs are the "Address: IP" lines after the first "Name:" of
// nslookup's output (the server's own "Address:" line comes before it).
func answerAddrs(out string) []string {
	var addrs []string
	inAnswer := false
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "Name:") {
			inAnswer = true
		}
		if a, ok := strings.CutPrefix(l, "Address: "); ok && inAnswer {
			addrs = append(addrs, strings.TrimSpace(a))
		}
	}
	return addrs
}

// createBackend runs agnhost netexec on node-2, labelled app=backend, and
// waits until it is ready.
func (e *env) createBackend(t *testing.T) {
	t.Helper()
	e.runServer(t, "backend", "node-2", map[string]string{"app": "backend"})
	e.waitReady(t, "backend")
}

// createService makes a Service on port 80 to the pods' 8080; clusterIP
// None makes it headless.
func (e *env) createService(t *testing.T, name, clusterIP string, selector map[string]string) *corev1.Service {
	t.Helper()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}, Spec: corev1.ServiceSpec{
		Selector: selector, ClusterIP: clusterIP, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
	svc, err := e.client.CoreV1().Services("default").Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// createStatefulSet runs two pods name-0 and name-1 under the headless
// Service name (hostname and subdomain come from the StatefulSet
// controller) and returns their addresses, sorted.
func (e *env) createStatefulSet(t *testing.T, name string) []string {
	t.Helper()
	labels := map[string]string{"app": name}
	ss := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}, Spec: appsv1.StatefulSetSpec{
		ServiceName: name, Replicas: ptr.To(int32(2)), PodManagementPolicy: appsv1.ParallelPodManagement,
		Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: new(int64), Containers: []corev1.Container{{
				Name: "netexec", Image: "registry.k8s.io/e2e-test-images/agnhost:2.53", Args: []string{"netexec", "--http-port=8080"}}}}}}}
	if _, err := e.client.AppsV1().StatefulSets("default").Create(context.Background(), ss, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, p := range []string{name + "-0", name + "-1"} {
		ips = append(ips, e.waitCreatedAndRunning(t, p))
	}
	slices.Sort(ips)
	return ips
}

// waitCreatedAndRunning waits for a pod a controller creates to run.
func (e *env) waitCreatedAndRunning(t *testing.T, name string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := e.client.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{}); err == nil {
			return e.waitRunning(t, name)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("pod %s was not created within 30s", name)
	return ""
}

package lab_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/podnet/podnet/pkg/lab"
)

// The Service scenarios of seeds 000 and 001, run once against podnet's
// proxy (in podnetd) and once against the real kube-proxy in nftables mode,
// on the same lab topology: node-1 and node-2 run the backends, node-3
// runs none, the client pod runs on node-3. Each scenario asserts the same
// answers for both proxies: which backends are reached, which client
// address they see, and whether a refused connection is refused at once or
// dropped (a timeout).

func TestLabServicesPodnet(t *testing.T)    { services(t, lab.ServiceProxyPodnet) }
func TestLabServicesKubeProxy(t *testing.T) { services(t, lab.ServiceProxyKubeProxy) }

// webPods are the backends of the Service web: name → node.
var webPods = map[string]string{"web-a": "node-1", "web-b": "node-2", "web-c": "node-2"}

func services(t *testing.T, proxy lab.ServiceProxy) {
	if testing.Short() || os.Geteuid() != 0 {
		t.Skip("lab test: needs root")
	}
	e := upLab(t, "--workers", "3", "--service-proxy", string(proxy))
	webIPs := map[string]string{} // pod name → IP
	for name, node := range webPods {
		e.runServer(t, name, node, map[string]string{"app": "web", "self": name})
	}
	for name := range webPods {
		webIPs[name] = e.waitReady(t, name)
	}
	e.runPod(t, "client", "node-3", corev1.RestartPolicyAlways, "busybox", []string{"sleep", "3600"})
	// UDP needs nc -u, which busybox's (Debian's build) lacks, and short
	// names a resolver that applies the search path: netshoot's OpenBSD
	// nc and bind9 nslookup.
	e.runPod(t, "tools", "node-3", corev1.RestartPolicyAlways, "nicolaka/netshoot", []string{"sleep", "3600"})
	e.waitRunning(t, "client")
	e.waitRunning(t, "tools")
	web := e.service(t, "web", map[string]string{"app": "web"}, func(s *corev1.ServiceSpec) { s.Type = corev1.ServiceTypeNodePort })
	cip := web.Spec.ClusterIP
	np := web.Spec.Ports[0].NodePort
	e.waitEndpoints(t, "web", 3)

	t.Run("ClusterIP spreads over every backend", func(t *testing.T) {
		const n = 90
		out, err := e.exec("client", "sh", "-c", fmt.Sprintf("for i in $(seq %d); do wget -qO- -T 3 http://%s/hostname; echo; done", n, cip))
		if err != nil {
			t.Fatalf("wget from node-3 to %s: %v\n%s", cip, err, out)
		}
		seen := count(out)
		t.Logf("%d requests: %v", n, seen)
		for name := range webPods {
			// An even spread gives 30 each; 12 or fewer has a
			// probability below 1e-5.
			if seen[name] <= 12 {
				t.Errorf("backend %s answered %d of %d requests: %v", name, seen[name], n, seen)
			}
		}
	})

	t.Run("UDP ClusterIP, and a removed backend's flows cleared", func(t *testing.T) {
		// nc from one fixed source port: every datagram belongs to one
		// conntrack flow, pinned to one backend.
		ask := func() string {
			out, _ := e.exec("tools", "sh", "-c", "echo hostname | nc -u -w 1 -p 40000 "+cip+" 81")
			return strings.TrimSpace(out)
		}
		first := ask()
		if _, ok := webPods[first]; !ok {
			t.Fatalf("UDP %s:81 from node-3: got %q, want a backend's name", cip, first)
		}
		if again := ask(); again != first {
			t.Fatalf("the same UDP flow answered by %q, then %q", first, again)
		}
		// Take that backend out of the Service (its pod keeps running, so
		// only the proxy's cleanup can move the flow).
		e.patchLabels(t, first, `{"metadata":{"labels":{"app":"out"}}}`)
		e.waitEndpoints(t, "web", 2)
		var got string
		waitFor(t, 5*time.Second, "the flow pinned to a removed backend moves to another", func() (bool, string) {
			got = ask()
			_, known := webPods[got]
			return known && got != first, got
		})
		e.patchLabels(t, first, `{"metadata":{"labels":{"app":"web"}}}`)
		e.waitEndpoints(t, "web", 3)
	})

	t.Run("NodePort from the host, on a node with and without backends", func(t *testing.T) {
		for _, node := range []string{"192.168.56.11", "192.168.56.13"} {
			seen := map[string]int{}
			for range 30 {
				body, outcome := dial(fmt.Sprintf("%s:%d", node, np), "/hostname")
				if outcome != "answered" {
					t.Fatalf("NodePort %s:%d from the host: %s", node, np, outcome)
				}
				seen[body]++
			}
			if len(seen) < 2 {
				t.Errorf("NodePort %s:%d reached only %v", node, np, seen)
			}
			// externalTrafficPolicy: Cluster masquerades, so that replies
			// come back through this node.
			if body, _ := dial(fmt.Sprintf("%s:%d", node, np), "/clientip"); strings.HasPrefix(body, "192.168.56.1:") {
				t.Errorf("NodePort %s:%d: the backend saw the client's own address %s under the Cluster policy", node, np, body)
			}
		}
	})

	t.Run("externalTrafficPolicy Local keeps the client IP, and a node without backends drops", func(t *testing.T) {
		local := e.service(t, "web-local", map[string]string{"app": "web"}, func(s *corev1.ServiceSpec) {
			s.Type = corev1.ServiceTypeLoadBalancer
			s.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		})
		lnp, hc := local.Spec.Ports[0].NodePort, local.Spec.HealthCheckNodePort
		e.waitEndpoints(t, "web-local", 3)
		waitFor(t, 5*time.Second, "node-1 serves the Local NodePort with the client's address", func() (bool, string) {
			body, outcome := dial(fmt.Sprintf("192.168.56.11:%d", lnp), "/clientip")
			return outcome == "answered" && strings.HasPrefix(body, "192.168.56.1:"), outcome + " " + body
		})
		// The health-check node port: the local ready count (once it
		// answers on node-3, node-3's proxy has the Service).
		for node, want := range map[string]int{"192.168.56.11": 1, "192.168.56.12": 2, "192.168.56.13": 0} {
			waitFor(t, 5*time.Second, fmt.Sprintf("health check %s:%d says %d local endpoints", node, hc, want), func() (bool, string) {
				code, n, err := healthCheck(fmt.Sprintf("%s:%d", node, hc))
				wantCode := http.StatusOK
				if want == 0 {
					wantCode = http.StatusServiceUnavailable
				}
				return err == nil && code == wantCode && n == want, fmt.Sprintf("%d %d %v", code, n, err)
			})
		}
		// No endpoint on node-3: both proxies drop (kube-proxy's reason: a
		// reject would tell the client that the Service has no endpoints
		// at all, while the load balancer's health check is what should
		// steer it away).
		// node-3's health check says 0 before its proxy has seen the
		// endpoints too (then the Service has none there, and a reject is
		// right): the drop comes once it has, within a few syncs.
		waitFor(t, 5*time.Second, "the Local NodePort on node-3 (no local endpoint) drops", func() (bool, string) {
			_, outcome := dial(fmt.Sprintf("192.168.56.13:%d", lnp), "/clientip")
			return outcome == "timed out", outcome
		})
		if _, outcome := dial(fmt.Sprintf("192.168.56.13:%d", lnp), "/clientip"); outcome != "timed out" {
			t.Errorf("Local NodePort on node-3 (no local endpoint): %s, want timed out (dropped)", outcome)
		}
	})

	t.Run("LoadBalancer and external IPs from a pod", func(t *testing.T) {
		const lbIP, extIP = "192.0.2.80", "192.0.2.81"
		svc := e.service(t, "web-lb", map[string]string{"app": "web"}, func(s *corev1.ServiceSpec) {
			s.Type = corev1.ServiceTypeLoadBalancer
			s.ExternalIPs = []string{extIP}
		})
		svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lbIP}}
		if _, err := e.client.CoreV1().Services("default").UpdateStatus(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, ip := range []string{lbIP, extIP} {
			waitFor(t, 10*time.Second, "node-3's client reaches "+ip, func() (bool, string) {
				out, err := e.exec("client", "wget", "-qO-", "-T", "2", "http://"+ip+"/hostname")
				_, ok := webPods[strings.TrimSpace(out)]
				return err == nil && ok, out
			})
		}
	})

	t.Run("sessionAffinity ClientIP pins a client", func(t *testing.T) {
		sticky := e.service(t, "sticky", map[string]string{"app": "web"}, func(s *corev1.ServiceSpec) {
			s.SessionAffinity = corev1.ServiceAffinityClientIP
			s.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To(int32(60))}}
		})
		e.waitEndpoints(t, "sticky", 3)
		out, err := e.exec("client", "sh", "-c", "for i in $(seq 30); do wget -qO- -T 3 http://"+sticky.Spec.ClusterIP+"/hostname; echo; done")
		if seen := count(out); err != nil || len(seen) != 1 {
			t.Errorf("30 requests with ClientIP affinity reached %v (%v), want one backend", seen, err)
		}
	})

	t.Run("scaled to zero refuses at once; scaled up serves within a second", func(t *testing.T) {
		// podnet's proxy syncs at most every 100 ms; kube-proxy's
		// nftables mode at most every second (--min-sync-period), so it
		// gets three.
		within := time.Second
		if proxy == lab.ServiceProxyKubeProxy {
			within = 3 * time.Second
		}
		scaling(t, e, within)
	})

	t.Run("hairpin: a pod reaches itself through its Service", func(t *testing.T) {
		self := e.service(t, "self", map[string]string{"self": "web-a"}, nil)
		e.waitEndpoints(t, "self", 1)
		// netexec's /dial makes web-a connect to the ClusterIP; the proxy
		// picks web-a itself, the only endpoint.
		url := fmt.Sprintf("http://%s:8080/dial?request=hostname&protocol=http&host=%s&port=80&tries=1", webIPs["web-a"], self.Spec.ClusterIP)
		waitFor(t, 10*time.Second, "web-a reaches itself through Service self", func() (bool, string) {
			out, err := e.exec("client", "wget", "-qO-", "-T", "5", url)
			var r struct{ Responses []string }
			_ = json.Unmarshal([]byte(out), &r)
			return err == nil && len(r.Responses) == 1 && r.Responses[0] == "web-a", out
		})
	})

	t.Run("seed 000: a selector that matches no pod, found and fixed", func(t *testing.T) {
		broken := e.service(t, "broken", map[string]string{"app": "wbe"}, nil) // the typo
		if out, _ := e.podnetctl("lab", "kubectl", "--", "get", "svc", "broken"); !strings.Contains(out, broken.Spec.ClusterIP) {
			t.Errorf("kubectl get svc broken does not show its ClusterIP %s:\n%s", broken.Spec.ClusterIP, out)
		}
		waitFor(t, 10*time.Second, "kubectl get endpoints broken says <none>", func() (bool, string) {
			out, _ := e.podnetctl("lab", "kubectl", "--", "get", "endpoints", "broken")
			return strings.Contains(out, "<none>"), out
		})
		e.expectLookupFrom(t, "tools", "broken", broken.Spec.ClusterIP) // DNS is fine: the name is not the problem
		start := time.Now()
		out, err := e.exec("client", "wget", "-O-", "-T", "5", "http://broken/hostname")
		if took := time.Since(start); err == nil || !strings.Contains(out, "refused") || took > 2*time.Second {
			t.Errorf("wget http://broken: want connection refused at once, got after %s: %v\n%s", took.Round(time.Millisecond), err, out)
		}
		if out, err := e.podnetctl("lab", "kubectl", "--", "patch", "svc", "broken", "-p", `{"spec":{"selector":{"app":"web"}}}`); err != nil {
			t.Fatalf("fix the selector: %v\n%s", err, out)
		}
		waitFor(t, 10*time.Second, "kubectl get endpoints broken lists the backends", func() (bool, string) {
			out, _ := e.podnetctl("lab", "kubectl", "--", "get", "endpoints", "broken")
			return strings.Contains(out, "10.244."), out
		})
		waitFor(t, 5*time.Second, "http://broken answers", func() (bool, string) {
			out, err := e.exec("client", "wget", "-qO-", "-T", "3", "http://broken/hostname")
			_, ok := webPods[strings.TrimSpace(out)]
			return err == nil && ok, out
		})
	})

	t.Run("the proxy's rules stay on the machines", func(t *testing.T) {
		proxyStaysOnMachines(t, e, proxy, lab.ControlPlane, "node-1", "node-2", "node-3")
	})
	e.downLeavesNothing(t)
}

// scaling: a Deployment of one replica on node-2 behind a NodePort. At zero
// replicas the NodePort and the ClusterIP refuse (TCP reset, not a
// timeout) within the given time of the last endpoint leaving the API, and
// then at once; back at one, the Service answers within that time of the
// endpoint being ready in the API.
func scaling(t *testing.T, e *env, within time.Duration) {
	ctx := context.Background()
	labels := map[string]string{"app": "scale"}
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "scale", Namespace: "default"}, Spec: appsv1.DeploymentSpec{
		Replicas: ptr.To(int32(1)), Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: serverSpec("node-2")}}}
	if _, err := e.client.AppsV1().Deployments("default").Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := e.service(t, "scale", labels, func(s *corev1.ServiceSpec) { s.Type = corev1.ServiceTypeNodePort })
	addr := fmt.Sprintf("192.168.56.11:%d", svc.Spec.Ports[0].NodePort)
	e.waitEndpoints(t, "scale", 1)
	waitFor(t, 10*time.Second, "NodePort "+addr+" answers", func() (bool, string) {
		_, outcome := dial(addr, "/hostname")
		return outcome == "answered", outcome
	})
	scale := func(n int32) {
		patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, n)
		if _, err := e.client.AppsV1().Deployments("default").Patch(ctx, "scale", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	scale(0)
	// Not ready at once; serving and terminating a moment longer (and
	// used meanwhile, as no endpoint is ready); then gone.
	e.waitEndpoints(t, "scale", 0)
	e.waitNoEndpoints(t, "scale")
	gone := time.Now()
	for {
		_, outcome := dial(addr, "/hostname")
		if outcome == "refused" {
			break
		}
		if time.Since(gone) > within {
			t.Fatalf("NodePort %s: %s %s after the last endpoint left, want refused", addr, outcome, time.Since(gone).Round(time.Millisecond))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("refused %s after the last endpoint left the API", time.Since(gone).Round(time.Millisecond))
	// The client is on node-3, whose proxy syncs on its own clock: its
	// ClusterIP refuses within five times the bound (kube-proxy's node-3
	// was measured 2.3 s and more than 5.5 s behind node-1 in CI; the
	// point here is the refusal, not the delay), and from then on at once.
	// One try each (GNU wget retries a timed-out connect 20 times, with
	// waits, otherwise), of 3 s: kube-proxy refuses with ICMP port
	// unreachable, which in this one-kernel lab can reach the client while
	// its connect() still holds the socket, and is then only a soft error;
	// the SYN retransmitted a second later is refused for good (podnet's
	// proxy answers with a TCP reset, which has no such race).
	clusterIP := "http://" + svc.Spec.ClusterIP + "/hostname"
	for {
		out, err := e.exec("client", "wget", "-O-", "-t", "1", "-T", "3", clusterIP)
		if err != nil && strings.Contains(out, "refused") {
			break
		}
		if time.Since(gone) > 5*within {
			t.Fatalf("ClusterIP from node-3: not refused %s after the last endpoint left: %v\n%s", time.Since(gone).Round(time.Millisecond), err, out)
		}
	}
	t.Logf("ClusterIP refused from node-3 %s after the last endpoint left the API", time.Since(gone).Round(time.Millisecond))
	start := time.Now()
	out, err := e.exec("client", "wget", "-O-", "-T", "5", clusterIP)
	if took := time.Since(start); err == nil || !strings.Contains(out, "refused") || took > 2*time.Second {
		t.Errorf("ClusterIP without endpoints: want refused at once, got after %s: %v\n%s", took.Round(time.Millisecond), err, out)
	}
	scale(1)
	ready := e.waitEndpoints(t, "scale", 1)
	var outcome string
	for time.Since(ready) < within+2*time.Second {
		if _, outcome = dial(addr, "/hostname"); outcome == "answered" {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(ready)
	t.Logf("served %s after the endpoint was ready in the API", took.Round(time.Millisecond))
	if outcome != "answered" || took > within {
		t.Errorf("scaled up: %s after %s, want answered within %s", outcome, took.Round(time.Millisecond), within)
	}
}

// proxyStaysOnMachines: the proxy's table is on every machine and not on
// the host, the other proxy's table is nowhere, and lab status shows the
// proxy answering on every machine.
func proxyStaysOnMachines(t *testing.T, e *env, proxy lab.ServiceProxy, machines ...string) {
	mine, other := "podnet-proxy", "kube-proxy"
	if proxy == lab.ServiceProxyKubeProxy {
		mine, other = other, mine
	}
	for _, m := range machines {
		out := e.onNode(m, "nft list tables")
		if !strings.Contains(out, "table ip "+mine) || strings.Contains(out, "table ip "+other) {
			t.Errorf("%s: want table ip %s and no %s:\n%s", m, mine, other, out)
		}
	}
	for _, table := range []string{mine, other} {
		if out, err := exec.Command("nft", "list", "table", "ip", table).CombinedOutput(); err == nil {
			t.Errorf("the host has a table ip %s:\n%s", table, out)
		}
	}
	// podnet-xxxxx=Running,ready,answering (or kube-proxy-xxxxx=…) per node.
	want := regexp.MustCompile(`\bpodnet-[a-z0-9]{5}=Running,ready,answering\b`)
	if proxy == lab.ServiceProxyKubeProxy {
		want = regexp.MustCompile(`\bkube-proxy-[a-z0-9]{5}=Running,ready,answering\b`)
	}
	if st, _ := e.podnetctl("lab", "status"); len(want.FindAllString(st, -1)) != len(machines) {
		t.Errorf("lab status does not show %s on every machine:\n%s", want, st)
	}
}

// serverSpec runs agnhost netexec (HTTP 8080, UDP 8081) on node, ready once
// it answers.
func serverSpec(node string) corev1.PodSpec {
	return corev1.PodSpec{NodeName: node, TerminationGracePeriodSeconds: new(int64), Containers: []corev1.Container{{
		Name: "netexec", Image: "registry.k8s.io/e2e-test-images/agnhost:2.53", Args: []string{"netexec", "--http-port=8080", "--udp-port=8081"},
		Ports:          []corev1.ContainerPort{{ContainerPort: 8080}, {ContainerPort: 8081, Protocol: corev1.ProtocolUDP}},
		ReadinessProbe: &corev1.Probe{PeriodSeconds: 1, ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(8080)}}},
	}}}
}

// runServer starts a netexec pod named name on node, with labels.
func (e *env) runServer(t *testing.T, name, node string, labels map[string]string) {
	t.Helper()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: labels}, Spec: serverSpec(node)}
	if _, err := e.client.CoreV1().Pods("default").Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitReady waits until a pod is Ready and returns its IP.
func (e *env) waitReady(t *testing.T, name string) string {
	t.Helper()
	var ip string
	waitFor(t, 30*time.Second, "pod "+name+" ready", func() (bool, string) {
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
		return false, string(p.Status.Phase)
	})
	return ip
}

// service creates a Service on port 80/TCP ("http", to the pods' 8080)
// and 81/UDP ("udp", to 8081), changed by edit.
func (e *env) service(t *testing.T, name string, selector map[string]string, edit func(*corev1.ServiceSpec)) *corev1.Service {
	t.Helper()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}, Spec: corev1.ServiceSpec{
		Selector: selector, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
			{Name: "udp", Port: 81, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(8081)}}}}
	if edit != nil {
		edit(&svc.Spec)
	}
	svc, err := e.client.CoreV1().Services("default").Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// waitEndpoints waits until the Service's EndpointSlices hold exactly n
// ready endpoints, and returns when it saw that.
func (e *env) waitEndpoints(t *testing.T, svc string, n int) time.Time {
	t.Helper()
	var at time.Time
	waitFor(t, 30*time.Second, fmt.Sprintf("Service %s has %d ready endpoints", svc, n), func() (bool, string) {
		ready, _, err := e.endpoints(svc)
		at = time.Now()
		return err == nil && ready == n, fmt.Sprintf("%d ready (%v)", ready, err)
	})
	return at
}

// waitNoEndpoints waits until the Service's EndpointSlices hold no
// endpoint at all, terminating ones included.
func (e *env) waitNoEndpoints(t *testing.T, svc string) {
	t.Helper()
	waitFor(t, 30*time.Second, "Service "+svc+" has no endpoint", func() (bool, string) {
		_, all, err := e.endpoints(svc)
		return err == nil && all == 0, fmt.Sprintf("%d endpoints (%v)", all, err)
	})
}

// endpoints counts the endpoints in a Service's EndpointSlices: the ready
// ones, and all.
func (e *env) endpoints(svc string) (ready, all int, err error) {
	list, err := e.client.DiscoveryV1().EndpointSlices("default").List(context.Background(),
		metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
	if err != nil {
		return 0, 0, err
	}
	for _, s := range list.Items {
		for _, ep := range s.Endpoints {
			all++
			if ep.Conditions.Ready == nil || *ep.Conditions.Ready {
				ready++
			}
		}
	}
	return ready, all, nil
}

func (e *env) patchLabels(t *testing.T, pod, patch string) {
	t.Helper()
	if _, err := e.client.CoreV1().Pods("default").Patch(context.Background(), pod, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// count counts the non-empty lines of out.
func count(out string) map[string]int {
	seen := map[string]int{}
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			seen[l]++
		}
	}
	return seen
}

// dial sends GET path to addr from the host and says what happened:
// "answered" (with the body), "refused", "timed out", or the error.
func dial(addr, path string) (string, string) {
	c := &http.Client{Timeout: 1500 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + path)
	var nerr net.Error
	switch {
	case err == nil:
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(b)), "answered"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "", "refused"
	case errors.As(err, &nerr) && nerr.Timeout():
		return "", "timed out"
	}
	return "", err.Error()
}

// healthCheck asks a health-check node port, as a load balancer does.
func healthCheck(addr string) (int, int, error) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	var body struct {
		LocalEndpoints int `json:"localEndpoints"`
	}
	err = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body.LocalEndpoints, err
}

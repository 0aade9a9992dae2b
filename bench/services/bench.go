package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/podnet/podnet/bench/internal/benchenv"
	"github.com/podnet/podnet/internal/cnitest"
	"github.com/podnet/podnet/pkg/lab"
	"github.com/podnet/podnet/pkg/lab/pki"
)

const (
	ns       = "bench"
	node     = "node-1" // where the proxies and the clients run
	server   = "node-2" // where the servers run
	probeSvc = "probe"
	iperfSvc = "iperf"
)

var nodeIP = netip.MustParseAddr("192.168.56.11")

// proxyKind is one of the two proxies compared.
type proxyKind struct {
	name    string
	table   string // its nftables table (family ip)
	metrics string // its metrics URL, inside node-1's namespace
	full    string // the metric of its full syncs' duration (a histogram)
	partial string // the metric of its partial syncs' duration
}

var (
	kubeProxy = proxyKind{name: "kube-proxy", table: "kube-proxy", metrics: "http://127.0.0.1:10249/metrics",
		full:    `kubeproxy_sync_full_proxy_rules_duration_seconds{ip_family="IPv4"}`,
		partial: `kubeproxy_sync_partial_proxy_rules_duration_seconds{ip_family="IPv4"}`}
	podnet = proxyKind{name: "podnet", table: "podnet-proxy", metrics: "http://127.0.0.1:9966/metrics",
		full:    `podnet_proxy_sync_duration_seconds{mode="full"}`,
		partial: `podnet_proxy_sync_duration_seconds{mode="partial"}`}
	proxies = []proxyKind{kubeProxy, podnet}
)

// bench is one run.
type bench struct {
	opts   options
	root   string // the module root
	dir    string // the run's directory (the lab's, logs)
	cli    string // podnetctl
	client kubernetes.Interface
	labUp  bool

	mu      sync.Mutex
	running *exec.Cmd // the proxy running now

	probeEPs []string // the netexec pods' addresses
	iperfPod string   // the iperf3 pod's address
	probeIP  string   // bench/probe's ClusterIP
	iperfIP  string   // bench/iperf's ClusterIP
	created  int      // Services created so far

	results map[string]*result // by proxy name
}

// result is what one proxy measured.
type result struct {
	program     map[int]syncTime // by number of Services
	change      []time.Duration
	changeSync  []float64 // the partial syncs' own durations (s)
	connect     map[int]latency
	tput, ratio []float64 // ClusterIP Gbit/s, ClusterIP/direct
	direct      []float64
}

type syncTime struct {
	own  float64       // the proxy's own first full sync (s)
	wall time.Duration // process start → every Service in the kernel
}

type latency struct{ p50, p99 time.Duration }

func (b *bench) run(ctx context.Context) error {
	root, err := cnitest.ModuleRoot()
	if err != nil {
		return err
	}
	b.root, b.cli = root, filepath.Join(root, "bin", "podnetctl")
	for _, bin := range []string{b.cli, filepath.Join(root, "bin", "podnetd"), filepath.Join(lab.DefaultK8sDir(), "kube-proxy")} {
		if _, err := os.Stat(bin); err != nil {
			return fmt.Errorf("%s missing: run `make build k8s` first (`make bench` does)", bin)
		}
	}
	if _, err := benchenv.LookPath("iperf3", "iperf3"); err != nil {
		return err
	}
	if _, err := os.Stat("/run/netns/" + lab.ControlPlane); err == nil {
		return fmt.Errorf("a lab is up on this machine (one at a time): `podnetctl lab down` first")
	}
	if b.dir, err = os.MkdirTemp("", "pnbench-services-"); err != nil {
		return err
	}
	b.results = map[string]*result{}
	for _, p := range proxies {
		b.results[p.name] = &result{program: map[int]syncTime{}, connect: map[int]latency{}}
	}
	start := time.Now()
	if err := b.up(ctx); err != nil {
		return err
	}
	fmt.Printf("lab up, servers ready: %s\n", time.Since(start).Round(100*time.Millisecond))
	for _, n := range b.opts.sizes {
		t := time.Now()
		if err := b.createServices(ctx, n); err != nil {
			return err
		}
		fmt.Printf("%d Services with %d endpoints each in the API (%s)\n", n, b.opts.endpoints, time.Since(t).Round(100*time.Millisecond))
		for _, p := range order(proxies, n) {
			if err := b.measure(ctx, p, n); err != nil {
				return fmt.Errorf("%s with %d Services: %w", p.name, n, err)
			}
		}
	}
	b.report()
	return nil
}

// order alternates which proxy goes first from one size to the next.
func order(ps []proxyKind, n int) []proxyKind {
	if n%2 == 0 {
		return ps
	}
	return []proxyKind{ps[1], ps[0]}
}

// measure starts p with n Services in the API and measures what the
// size calls for.
func (b *bench) measure(ctx context.Context, p proxyKind, n int) error {
	r := b.results[p.name]
	want := n + 3 // kubernetes, probe, iperf
	start := time.Now()
	if err := b.startProxy(p); err != nil {
		return err
	}
	defer b.stopProxy(p)
	if err := waitFor(ctx, 5*time.Minute, func() (bool, error) {
		got, err := mapElements(p.table, "service-ips")
		return got >= want, err
	}); err != nil {
		return fmt.Errorf("waiting for %d Services in the kernel: %w", want, err)
	}
	wall := time.Since(start)
	sum, count, err := histogram(p, p.full)
	if err != nil {
		return err
	}
	if count == 0 {
		return fmt.Errorf("%s reports no full sync", p.name)
	}
	r.program[n] = syncTime{own: sum / count, wall: wall}
	fmt.Printf("  %-10s %5d Services: first full sync %7.3f s (its own metric, %g syncs); start to programmed %s\n",
		p.name, n, sum/count, count, wall.Round(10*time.Millisecond))
	last := n == b.opts.sizes[len(b.opts.sizes)-1]
	if n == 10 || last {
		l, err := b.connectLatency(ctx)
		if err != nil {
			return err
		}
		r.connect[n] = l
		fmt.Printf("  %-10s %5d Services: connect p50 %s p99 %s\n", p.name, n, l.p50, l.p99)
	}
	if n == 10 {
		if err := b.throughput(ctx, r); err != nil {
			return err
		}
	}
	if last {
		for i := range b.opts.changes {
			d, own, err := b.oneChange(ctx, p)
			if err != nil {
				return err
			}
			r.change, r.changeSync = append(r.change, d), append(r.changeSync, own)
			fmt.Printf("  %-10s %5d Services: one endpoint change #%d served after %s (its partial sync %.1f ms)\n",
				p.name, n, i+1, d.Round(time.Millisecond), own*1000)
		}
	}
	return nil
}

// up brings the lab up and starts the servers.
func (b *bench) up(ctx context.Context) error {
	b.labUp = true
	if out, err := b.podnetctl(ctx, "lab", "up", "--workers", "2", "--service-proxy", "none"); err != nil {
		return fmt.Errorf("lab up: %w\n%s", err, out)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(b.labDir(), "pki", pki.AdminKubeconfig))
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = 1000, 2000
	if b.client, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	if _, err := b.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	// Pods wait for the namespace's default ServiceAccount, which a
	// controller creates a moment later.
	if err := waitFor(ctx, 30*time.Second, func() (bool, error) {
		_, err := b.client.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		return fmt.Errorf("no default ServiceAccount in namespace %s: %w", ns, err)
	}
	netexec := corev1.Container{Name: "netexec", Image: "registry.k8s.io/e2e-test-images/agnhost:2.53",
		Args: []string{"netexec", "--http-port=8080", "--udp-port=-1"}}
	pods := []*corev1.Pod{
		pod("probe-a", map[string]string{"app": "probe"}, netexec),
		pod("probe-b", map[string]string{"app": "probe"}, netexec),
		pod("iperf", map[string]string{"app": "iperf"}, corev1.Container{Name: "iperf3", Image: "nicolaka/netshoot", Command: []string{"iperf3", "-s"}}),
	}
	for _, p := range pods {
		if _, err := b.client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	ips := map[string]string{}
	if err := waitFor(ctx, time.Minute, func() (bool, error) {
		for _, p := range pods {
			got, err := b.client.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
			if err != nil || got.Status.Phase != corev1.PodRunning || got.Status.PodIP == "" {
				return false, nil
			}
			ips[p.Name] = got.Status.PodIP
		}
		return true, nil
	}); err != nil {
		return fmt.Errorf("servers not running: %w", err)
	}
	b.probeEPs, b.iperfPod = []string{ips["probe-a"], ips["probe-b"]}, ips["iperf"]
	// bench/probe is selectorless: the benchmark writes its endpoints.
	if b.probeIP, err = b.createService(ctx, probeSvc, 80, nil); err != nil {
		return err
	}
	if err := b.setProbe(ctx, b.probeEPs); err != nil {
		return err
	}
	b.iperfIP, err = b.createService(ctx, iperfSvc, 5201, map[string]string{"app": "iperf"})
	return err
}

func pod(name string, labels map[string]string, c corev1.Container) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{NodeName: server, TerminationGracePeriodSeconds: new(int64), Containers: []corev1.Container{c}}}
}

// createService makes a Service of one TCP port and returns its ClusterIP.
func (b *bench) createService(ctx context.Context, name string, port int32, selector map[string]string) (string, error) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: corev1.ServiceSpec{
		Selector: selector, Ports: []corev1.ServicePort{{Name: "p", Port: port, TargetPort: intstr.FromInt32(port)}}}}
	if name == probeSvc {
		svc.Spec.Ports[0].TargetPort = intstr.FromInt32(8080)
	}
	got, err := b.client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("create Service %s: %w", name, err)
	}
	return got.Spec.ClusterIP, nil
}

// slice is the EndpointSlice of a selectorless Service.
func slice(svc string, port int32, addrs []string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: svc, Namespace: ns, Labels: map[string]string{
		discoveryv1.LabelServiceName: svc, discoveryv1.LabelManagedBy: "bench.podnet.io"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("p"), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)}}}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	return s
}

// setProbe makes bench/probe's endpoints addrs (none: no endpoint).
func (b *bench) setProbe(ctx context.Context, addrs []string) error {
	s := slice(probeSvc, 8080, addrs)
	old, err := b.client.DiscoveryV1().EndpointSlices(ns).Get(ctx, probeSvc, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = b.client.DiscoveryV1().EndpointSlices(ns).Create(ctx, s, metav1.CreateOptions{})
	case err == nil:
		s.ResourceVersion = old.ResourceVersion
		_, err = b.client.DiscoveryV1().EndpointSlices(ns).Update(ctx, s, metav1.UpdateOptions{})
	}
	return err
}

// createServices adds Services (and their slices) up to n, 32 at a time.
func (b *bench) createServices(ctx context.Context, n int) error {
	jobs := make(chan int)
	errs := make(chan error, 32)
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				name := fmt.Sprintf("svc-%05d", i)
				if _, err := b.createService(ctx, name, 80, nil); err != nil {
					errs <- err
					return
				}
				var addrs []string
				for k := range b.opts.endpoints {
					addrs = append(addrs, fakeAddr(i*b.opts.endpoints+k))
				}
				if _, err := b.client.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice(name, 8080, addrs), metav1.CreateOptions{}); err != nil {
					errs <- fmt.Errorf("create EndpointSlice %s: %w", name, err)
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := b.created; i < n; i++ {
		select {
		case jobs <- i:
		case err = <-errs:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	close(errs)
	if err == nil {
		err = <-errs
	}
	if err == nil {
		b.created = n
	}
	return err
}

// fakeAddr is the i-th endpoint address of the synthetic Services, in
// 10.248.0.0/13: no pod, node or Service uses it, and nothing connects to
// it.
func fakeAddr(i int) string {
	base := uint32(10)<<24 | uint32(248)<<16
	a := base + uint32(i) + 1
	return fmt.Sprintf("%d.%d.%d.%d", a>>24, a>>16&0xff, a>>8&0xff, a&0xff)
}

// startProxy starts p in node-1's network namespace, from an empty table.
func (b *bench) startProxy(p proxyKind) error {
	var argv []string
	pkiDir := filepath.Join(b.labDir(), "pki")
	switch p.name {
	case kubeProxy.name:
		// The lab's flags; the admin's credentials (a lab without
		// kube-proxy has no kube-proxy kubeconfig).
		argv = lab.KubeProxyArgv(filepath.Join(lab.DefaultK8sDir(), "kube-proxy"), filepath.Join(pkiDir, pki.AdminKubeconfig),
			lab.MachineSpec{Name: node, IP: nodeIP})
	case podnet.name:
		argv = []string{filepath.Join(b.root, "bin", "podnetd"), "--node", node, "--kubeconfig", filepath.Join(pkiDir, pki.AdminKubeconfig),
			"--run-network=false", "--run-service-proxy=true", "--cluster-cidr", lab.ClusterCIDR.String(),
			"--nodeport-addresses", netip.PrefixFrom(nodeIP, 32).String(), "--listen", "127.0.0.1:9966"}
	}
	log, err := os.Create(filepath.Join(b.dir, p.name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", node}, argv...)...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	log.Close()
	b.mu.Lock()
	b.running = cmd
	b.mu.Unlock()
	return nil
}

// stopProxy stops the running proxy and deletes its tables, so that the
// next one starts from nothing; established flows are flushed too.
func (b *bench) stopProxy(p proxyKind) {
	b.mu.Lock()
	cmd := b.running
	b.running = nil
	b.mu.Unlock()
	if cmd != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	for _, fam := range []string{"ip", "ip6"} {
		_ = inNode("nft", "delete", "table", fam, p.table).Run()
	}
	_ = inNode("conntrack", "-F").Run()
}

func (b *bench) labDir() string { return filepath.Join(b.dir, "lab") }

func (b *bench) podnetctl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, b.cli, args...)
	cmd.Env = append(os.Environ(), "PODNET_LAB_DIR="+b.labDir())
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// cleanup stops the proxy and takes the lab down; it is safe to call more
// than once.
func (b *bench) cleanup() []error {
	var errs []error
	b.mu.Lock()
	running := b.running
	b.mu.Unlock()
	if running != nil {
		for _, p := range proxies {
			b.stopProxy(p)
		}
	}
	if b.labUp {
		if out, err := b.podnetctl(context.Background(), "lab", "down"); err != nil {
			errs = append(errs, fmt.Errorf("lab down: %w: %s", err, out))
		} else {
			b.labUp = false
		}
	}
	if b.dir != "" && len(errs) == 0 {
		if os.Getenv("KEEP_LOGS") == "" {
			if err := os.RemoveAll(b.dir); err != nil {
				errs = append(errs, err)
			}
		} else {
			fmt.Println("logs kept in", b.dir)
		}
		b.dir = ""
	}
	return errs
}

// inNode is a command in node-1's network namespace.
func inNode(argv ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", node}, argv...)...)
}

// mapElements counts the elements of a map of table ip t in node-1.
func mapElements(t, m string) (int, error) {
	out, err := inNode("nft", "list", "map", "ip", t, m).Output()
	if err != nil {
		return 0, nil // not there yet
	}
	return strings.Count(string(out), " : "), nil
}

// waitFor polls cond every 100 ms until it holds, d passes or ctx ends.
func waitFor(ctx context.Context, d time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(d)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

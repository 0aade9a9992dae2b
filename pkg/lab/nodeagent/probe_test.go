package nodeagent

import (
	"context"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// probeTestUnit is a Kubernetes "second" in these tests.
const probeTestUnit = 10 * time.Millisecond

var loopback = netip.MustParseAddr("127.0.0.1")

// newTestProbeManager returns a manager on the test's time scale whose
// workers must all be gone when the test ends.
func newTestProbeManager(t *testing.T, exec execFunc) (*probeManager, *atomic.Int64) {
	t.Helper()
	changes := new(atomic.Int64)
	m := newProbeManager(exec, func() { changes.Add(1) }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	m.unit = probeTestUnit
	t.Cleanup(func() {
		m.Close()
		if n := m.live.Load(); n != 0 {
			t.Errorf("%d probe workers still running after Close", n)
		}
	})
	return m, changes
}

// eventually waits up to 3 s for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// never checks that cond stays false for n probe periods.
func never(t *testing.T, what string, n int, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Duration(n) * probeTestUnit)
	for time.Now().Before(deadline) {
		if cond() {
			t.Fatalf("unexpected: %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// switchServer answers every request with the status it is set to.
type switchServer struct {
	code     atomic.Int32
	requests atomic.Int64
	mu       sync.Mutex
	last     *http.Request
}

func newSwitchServer(t *testing.T, code int) (*switchServer, int) {
	s := &switchServer{}
	s.code.Store(int32(code))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		s.mu.Lock()
		s.last = r
		s.mu.Unlock()
		w.WriteHeader(int(s.code.Load()))
	}))
	t.Cleanup(srv.Close)
	port, _ := strconv.Atoi(srv.URL[strings.LastIndexByte(srv.URL, ':')+1:])
	return s, port
}

func (s *switchServer) lastRequest() *http.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

func httpProbe(port intstr.IntOrString) *corev1.Probe {
	return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz?full=1", Port: port,
		HTTPHeaders: []corev1.HTTPHeader{{Name: "X-Probe", Value: "yes"}, {Name: "Host", Value: "app.example"}}}},
		PeriodSeconds: 1, TimeoutSeconds: 100, SuccessThreshold: 2, FailureThreshold: 2}
}

func TestProbeReadinessFollowsHTTP(t *testing.T) {
	srv, port := newSwitchServer(t, http.StatusServiceUnavailable)
	m, changes := newTestProbeManager(t, nil)
	spec := corev1.Container{Name: "web", ReadinessProbe: httpProbe(intstr.FromInt32(int32(port)))}
	m.Start("uid/web", spec, probeTarget{PodIP: loopback})

	if !m.Started("uid/web") {
		t.Fatal("a container without startup probe is started at once")
	}
	eventually(t, "failures", func() bool { return srv.requests.Load() >= 3 })
	if m.Ready("uid/web") {
		t.Fatal("ready while the probe answers 503")
	}
	ev, ok := m.LastFailure("uid/web")
	if want := "Readiness probe failed: HTTP probe failed with statuscode: 503"; !ok || ev.Message != want || ev.Probe != "Readiness" {
		t.Fatalf("last failure = %+v, want %q", ev, want)
	}
	r := srv.lastRequest()
	if r.URL.Path != "/healthz" || r.URL.RawQuery != "full=1" || r.Header.Get("X-Probe") != "yes" ||
		r.Host != "app.example" || r.Header.Get("User-Agent") != probeUserAgent || r.Header.Get("Accept") != "*/*" {
		t.Fatalf("probe request: %s %s host %s headers %v", r.Method, r.URL, r.Host, r.Header)
	}

	before := changes.Load()
	srv.code.Store(http.StatusOK)
	eventually(t, "ready", func() bool { return m.Ready("uid/web") })
	if changes.Load() == before {
		t.Error("onChange not called when the container became ready")
	}
	srv.code.Store(http.StatusNotFound)
	eventually(t, "not ready", func() bool { return !m.Ready("uid/web") })
	srv.code.Store(http.StatusNotModified) // 3xx: a success
	eventually(t, "ready again", func() bool { return m.Ready("uid/web") })
}

// TestProbeThresholds drives the state machine result by result, as
// kubelet's worker counts them.
func TestProbeThresholds(t *testing.T) {
	m, _ := newTestProbeManager(t, nil)
	pc := &probedContainer{key: "uid/c", hasReadiness: true}
	w := newProbeWorker(readinessProbe, &corev1.Probe{SuccessThreshold: 2, FailureThreshold: 2}, time.Second)
	steps := []struct {
		res   probeResult
		ready bool
	}{
		{probeFailure, false}, {probeSuccess, false}, {probeUnknown, false}, {probeSuccess, true},
		{probeFailure, true}, {probeSuccess, true}, {probeFailure, true}, {probeUnknown, true}, {probeFailure, false},
	}
	for i, s := range steps {
		m.mu.Lock()
		m.apply(pc, w, s.res, "out", errors.New("boom"))
		ready := pc.ready
		m.mu.Unlock()
		if ready != s.ready {
			t.Fatalf("step %d (%v): ready = %v, want %v", i, s.res, ready, s.ready)
		}
	}

	pc = &probedContainer{key: "uid/c"}
	w = newProbeWorker(livenessProbe, &corev1.Probe{}, time.Second) // failureThreshold 3 by default
	for i, res := range []probeResult{probeFailure, probeFailure, probeSuccess, probeFailure, probeFailure, probeFailure} {
		m.mu.Lock()
		keepGoing, _ := m.apply(pc, w, res, "dead", nil)
		restart := pc.restart
		m.mu.Unlock()
		if last := i == 5; restart != last || keepGoing == last {
			t.Fatalf("liveness step %d: restart %v keepGoing %v", i, restart, keepGoing)
		}
	}
	if pc.restartMsg != "Liveness probe failed: dead" {
		t.Fatalf("restart message %q", pc.restartMsg)
	}
}

func TestProbeDefaults(t *testing.T) {
	w := newProbeWorker(livenessProbe, &corev1.Probe{InitialDelaySeconds: -1}, time.Second)
	if w.period != 10*time.Second || w.timeout != time.Second || w.successThr != 1 || w.failureThr != 3 || w.delay != 0 {
		t.Fatalf("defaults: %+v", w)
	}
}

func TestProbeNamedPort(t *testing.T) {
	_, port := newSwitchServer(t, http.StatusOK)
	m, _ := newTestProbeManager(t, nil)
	p := httpProbe(intstr.FromString("http"))
	p.SuccessThreshold = 1
	spec := corev1.Container{Name: "web", ReadinessProbe: p,
		Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 1}, {Name: "http", ContainerPort: int32(port)}}}
	m.Start("uid/web", spec, probeTarget{PodIP: loopback})
	eventually(t, "ready", func() bool { return m.Ready("uid/web") })

	for _, c := range []struct {
		port intstr.IntOrString
		want int
		err  string
	}{
		{intstr.FromString("metrics"), 1, ""},
		{intstr.FromString("8080"), 8080, ""}, // kubelet's last resort
		{intstr.FromInt32(443), 443, ""},
		{intstr.FromString("grpc"), 0, `container web has no port named "grpc"`},
		{intstr.FromInt32(0), 0, "invalid port number: 0"},
		{intstr.FromInt32(70000), 0, "invalid port number: 70000"},
	} {
		got, err := probePort(c.port, spec)
		if got != c.want || (err == nil) != (c.err == "") || (err != nil && err.Error() != c.err) {
			t.Errorf("probePort(%v) = %d, %v; want %d, %q", c.port, got, err, c.want, c.err)
		}
	}
}

func TestProbeTCP(t *testing.T) {
	open, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()

	m, _ := newTestProbeManager(t, nil)
	tcp := func(port int) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(int32(port))}},
			PeriodSeconds: 1, TimeoutSeconds: 100, FailureThreshold: 1}
	}
	m.Start("uid/open", corev1.Container{Name: "open", ReadinessProbe: tcp(open.Addr().(*net.TCPAddr).Port)}, probeTarget{PodIP: loopback})
	m.Start("uid/closed", corev1.Container{Name: "closed", ReadinessProbe: tcp(closedPort)}, probeTarget{PodIP: loopback})
	eventually(t, "open port ready", func() bool { return m.Ready("uid/open") })
	eventually(t, "closed port failure", func() bool { _, ok := m.LastFailure("uid/closed"); return ok })
	ev, _ := m.LastFailure("uid/closed")
	if m.Ready("uid/closed") || !strings.HasPrefix(ev.Message, "Readiness probe failed: dial tcp 127.0.0.1:") ||
		!strings.Contains(ev.Message, "connection refused") {
		t.Fatalf("closed port: ready %v, last failure %q", m.Ready("uid/closed"), ev.Message)
	}
}

// fakeExec answers exec probes per command with the exit code it is set
// to, and counts the calls.
type fakeExec struct {
	mu    sync.Mutex
	codes map[string]int
	calls map[string]int
	pids  map[int]bool
}

func newFakeExec(codes map[string]int) *fakeExec {
	return &fakeExec{codes: codes, calls: map[string]int{}, pids: map[int]bool{}}
}

func (f *fakeExec) exec(ctx context.Context, pid int, cmd []string) (int, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := strings.Join(cmd, " ")
	f.calls[c]++
	f.pids[pid] = true
	switch code := f.codes[c]; code {
	case -1: // hang until the timeout
		f.mu.Unlock()
		<-ctx.Done()
		f.mu.Lock()
		return -1, "", ctx.Err()
	case -2:
		return -1, "", errors.New("nsenter: no such process")
	case 0:
		return 0, "ok\n", nil
	default:
		return code, "", nil
	}
}

func (f *fakeExec) set(cmd string, code int) {
	f.mu.Lock()
	f.codes[cmd] = code
	f.mu.Unlock()
}

func (f *fakeExec) count(cmd string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[cmd]
}

func execProbe(cmd string, failures int32) *corev1.Probe {
	return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: strings.Fields(cmd)}},
		PeriodSeconds: 1, TimeoutSeconds: 5, FailureThreshold: failures}
}

func TestProbeExec(t *testing.T) {
	f := newFakeExec(map[string]int{"cat /tmp/healthy": 1, "sleep": -1, "gone": -2})
	m, _ := newTestProbeManager(t, f.exec)
	m.Start("uid/a", corev1.Container{ReadinessProbe: execProbe("cat /tmp/healthy", 1)}, probeTarget{PID: 42})
	m.Start("uid/b", corev1.Container{ReadinessProbe: execProbe("sleep", 1)}, probeTarget{PID: 43})
	m.Start("uid/c", corev1.Container{ReadinessProbe: execProbe("gone", 1)}, probeTarget{PID: 44})

	eventually(t, "failures", func() bool {
		_, a := m.LastFailure("uid/a")
		_, b := m.LastFailure("uid/b")
		_, c := m.LastFailure("uid/c")
		return a && b && c
	})
	want := map[string]string{
		"uid/a": `Readiness probe failed: command "cat /tmp/healthy" exited with code 1`,
		"uid/b": `Readiness probe failed: command "sleep" timed out after 50ms`,
		"uid/c": `Readiness probe errored: exec "gone": nsenter: no such process`,
	}
	for key, msg := range want {
		if ev, _ := m.LastFailure(key); ev.Message != msg {
			t.Errorf("%s: last failure %q, want %q", key, ev.Message, msg)
		}
	}
	f.set("cat /tmp/healthy", 0)
	eventually(t, "ready", func() bool { return m.Ready("uid/a") })
	f.mu.Lock()
	if !f.pids[42] || !f.pids[43] {
		t.Errorf("exec pids %v", f.pids)
	}
	f.mu.Unlock()
}

func TestProbeLivenessOncePerInstance(t *testing.T) {
	f := newFakeExec(map[string]int{"alive": 1})
	m, changes := newTestProbeManager(t, f.exec)
	spec := corev1.Container{Name: "app", LivenessProbe: execProbe("alive", 3)}
	m.Start("uid/app", spec, probeTarget{PID: 1})
	if !m.Ready("uid/app") {
		t.Fatal("a running container without readiness probe is ready")
	}
	var failed bool
	var msg string
	eventually(t, "liveness failure", func() bool { failed, msg = m.TakeLivenessFailure("uid/app"); return failed })
	if n := f.count("alive"); n != 3 {
		t.Errorf("liveness failure after %d probes, want 3", n)
	}
	if msg != `Liveness probe failed: command "alive" exited with code 1` {
		t.Errorf("message %q", msg)
	}
	if changes.Load() == 0 {
		t.Error("onChange not called")
	}
	// On hold until the container restarts: no more probes, no second report.
	never(t, "second liveness failure", 5, func() bool { ok, _ := m.TakeLivenessFailure("uid/app"); return ok })
	if n := f.count("alive"); n != 3 {
		t.Errorf("%d probes of a container on hold, want 3", n)
	}

	m.Start("uid/app", spec, probeTarget{PID: 2}) // the restarted instance
	eventually(t, "liveness failure of the new instance", func() bool { ok, _ := m.TakeLivenessFailure("uid/app"); return ok })
	if n := f.count("alive"); n != 6 {
		t.Errorf("second failure after %d probes in all, want 6", n)
	}
}

func TestProbeStartupGates(t *testing.T) {
	f := newFakeExec(map[string]int{"started": 1, "ready": 0, "alive": 1})
	m, _ := newTestProbeManager(t, f.exec)
	spec := corev1.Container{Name: "slow", StartupProbe: execProbe("started", 30),
		ReadinessProbe: execProbe("ready", 3), LivenessProbe: execProbe("alive", 1)}
	m.Start("uid/slow", spec, probeTarget{PID: 7})
	eventually(t, "startup probes", func() bool { return f.count("started") >= 3 })
	if m.Started("uid/slow") || m.Ready("uid/slow") || f.count("ready") != 0 || f.count("alive") != 0 {
		t.Fatalf("before startup: started %v ready %v, %d readiness and %d liveness probes",
			m.Started("uid/slow"), m.Ready("uid/slow"), f.count("ready"), f.count("alive"))
	}
	if ok, _ := m.TakeLivenessFailure("uid/slow"); ok {
		t.Fatal("liveness failure before startup")
	}
	f.set("started", 0)
	eventually(t, "started and ready", func() bool { return m.Started("uid/slow") && m.Ready("uid/slow") })
	n := f.count("started")
	eventually(t, "liveness probed after startup", func() bool { ok, _ := m.TakeLivenessFailure("uid/slow"); return ok })
	if f.count("started") != n {
		t.Error("startup probe still running after success")
	}

	// A startup probe that never succeeds restarts the container.
	spec.StartupProbe = execProbe("never", 2)
	f.set("never", 1)
	m.Start("uid/slow", spec, probeTarget{PID: 8})
	var msg string
	eventually(t, "startup failure", func() bool { ok, s := m.TakeLivenessFailure("uid/slow"); msg = s; return ok })
	if !strings.HasPrefix(msg, "Startup probe failed: ") || m.Started("uid/slow") {
		t.Fatalf("startup failure %q, started %v", msg, m.Started("uid/slow"))
	}
}

func TestProbeInitialDelay(t *testing.T) {
	var mu sync.Mutex
	first := map[int]time.Time{}
	exec := func(_ context.Context, pid int, _ []string) (int, string, error) {
		mu.Lock()
		if _, ok := first[pid]; !ok {
			first[pid] = time.Now()
		}
		mu.Unlock()
		return 0, "", nil
	}
	m, _ := newTestProbeManager(t, exec)
	p := execProbe("ready", 3)
	p.InitialDelaySeconds = 15
	start := time.Now()
	m.Start("uid/late", corev1.Container{ReadinessProbe: p}, probeTarget{PID: 1, StartedAt: start})
	// Started long ago (an agent restart): no delay left.
	m.Start("uid/old", corev1.Container{ReadinessProbe: p}, probeTarget{PID: 2, StartedAt: start.Add(-time.Hour)})
	eventually(t, "both ready", func() bool { return m.Ready("uid/late") && m.Ready("uid/old") })
	mu.Lock()
	defer mu.Unlock()
	if d := first[1].Sub(start); d < 15*probeTestUnit {
		t.Errorf("first probe %v after start, want at least %v", d, 15*probeTestUnit)
	}
	if d := first[2].Sub(start); d >= 15*probeTestUnit {
		t.Errorf("first probe of a container started long ago came after %v", d)
	}
}

func TestProbeNoProbesAndUnknown(t *testing.T) {
	m, _ := newTestProbeManager(t, nil)
	if m.Ready("uid/x") || m.Started("uid/x") {
		t.Fatal("a container never started is neither ready nor started")
	}
	m.Start("uid/x", corev1.Container{Name: "x"}, probeTarget{PodIP: loopback})
	if !m.Ready("uid/x") || !m.Started("uid/x") || m.live.Load() != 0 {
		t.Fatalf("no probes: ready %v started %v workers %d", m.Ready("uid/x"), m.Started("uid/x"), m.live.Load())
	}
	m.Stop("uid/x")
	if m.Ready("uid/x") || m.Started("uid/x") {
		t.Fatal("a stopped container is neither ready nor started")
	}
}

func TestProbeGRPCUnsupported(t *testing.T) {
	m, _ := newTestProbeManager(t, nil)
	p := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9090}}, PeriodSeconds: 1}
	m.Start("uid/g", corev1.Container{ReadinessProbe: p}, probeTarget{PodIP: loopback})
	eventually(t, "failure", func() bool { _, ok := m.LastFailure("uid/g"); return ok })
	ev, _ := m.LastFailure("uid/g")
	if ev.Message != "Readiness probe failed: gRPC probe (port 9090) is not supported in the lab" || m.Ready("uid/g") {
		t.Fatalf("gRPC: %q", ev.Message)
	}
}

func TestProbeHTTPSAndRedirects(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/away":
			http.Redirect(w, r, "http://elsewhere.invalid/", http.StatusFound)
		case "/here":
			http.Redirect(w, r, "/fail", http.StatusFound)
		case "/fail":
			w.WriteHeader(http.StatusInternalServerError)
		default:
			_, _ = io.WriteString(w, "ok")
		}
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the plain HTTP request below
	srv.StartTLS()
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	m, _ := newTestProbeManager(t, nil)
	for path, want := range map[string]probeResult{"/": probeSuccess, "/away": probeSuccess, "/here": probeFailure} {
		res, out, err := m.doHTTP(context.Background(), &corev1.HTTPGetAction{Path: path, Scheme: corev1.URISchemeHTTPS}, addr, time.Second)
		if res != want || err != nil {
			t.Errorf("GET %s: %v %q %v, want %v", path, res, out, err, want)
		}
	}
	// Plain HTTP to a TLS server is answered 400: a failure.
	res, out, _ := m.doHTTP(context.Background(), &corev1.HTTPGetAction{Path: "/"}, addr, time.Second)
	if res != probeFailure || out != "HTTP probe failed with statuscode: 400" {
		t.Errorf("HTTP to HTTPS: %v %q", res, out)
	}
}

func TestProbeStopEndsWorkers(t *testing.T) {
	f := newFakeExec(map[string]int{"hang": -1, "ok": 0})
	m, _ := newTestProbeManager(t, f.exec)
	hang := execProbe("hang", 3)
	hang.TimeoutSeconds = 1000 // 10 s: only Stop ends it
	spec := corev1.Container{ReadinessProbe: hang, LivenessProbe: execProbe("ok", 3),
		StartupProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"ok"}}}, InitialDelaySeconds: 1000}}
	m.Start("uid/a", spec, probeTarget{PID: 1})                                                                      // workers waiting: delay, startup gate
	m.Start("uid/b", corev1.Container{ReadinessProbe: hang, LivenessProbe: execProbe("ok", 3)}, probeTarget{PID: 2}) // a probe in flight
	eventually(t, "probe in flight", func() bool { return f.count("hang") == 1 })
	if n := m.live.Load(); n != 5 {
		t.Fatalf("%d workers, want 5", n)
	}
	m.Stop("uid/a")
	m.Stop("uid/b")
	eventually(t, "workers gone", func() bool { return m.live.Load() == 0 })
	m.Stop("uid/a") // twice is fine
	if m.Ready("uid/b") {
		t.Fatal("ready after Stop")
	}
}

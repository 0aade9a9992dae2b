package nodeagent

// Container probes as kubelet runs them (pkg/kubelet/prober): one worker
// goroutine per probe of a running container, results turned into state
// only once a run of equal results reaches the probe's threshold, the
// startup probe gating the other two, and a liveness (or startup) failure
// handed to the agent once so that it restarts the container.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// execFunc runs cmd in the namespaces of the container whose main process
// is pid and returns its exit code and combined output. err is for a
// command that could not be run at all (or did not finish before ctx
// ended), not for a non-zero exit code.
type execFunc func(ctx context.Context, pid int, cmd []string) (exitCode int, output string, err error)

// probeTarget is where a container's probes go.
type probeTarget struct {
	// PodIP is the default host of HTTP and TCP probes: the agent runs in
	// the node's network namespace, where pod IPs are routable.
	PodIP netip.Addr
	// PID is the container's main process, for exec probes.
	PID int
	// StartedAt is when the container started: initialDelaySeconds
	// counts from it. Zero means the time of Start.
	StartedAt time.Time
}

// probeEvent is one probe failure, as kubelet reports it in an Unhealthy
// event.
type probeEvent struct {
	// Seq grows with every event the manager records, across containers
	// and restarts: keep the last one emitted and ask for those after it.
	Seq   uint64
	Probe string // "Readiness", "Liveness" or "Startup"
	// Message is kubelet's: "Readiness probe failed: HTTP probe failed
	// with statuscode: 503", or "… probe errored: …" when the probe could
	// not be run at all (which does not count as a failure).
	Message string
	At      time.Time
}

// Kubernetes' probe defaults, in seconds.
const (
	probeDefaultPeriod  = 10
	probeDefaultTimeout = 1
	probeDefaultSuccess = 1
	probeDefaultFailure = 3
	// probeUserAgent is what kubelet sends, with the lab's Kubernetes
	// minor version (lab.KubernetesVersion).
	probeUserAgent = "kube-probe/1.36"
	// probeMaxOutput bounds what is kept of a body or a command's output.
	probeMaxOutput = 10 * 1024
	probeEventRing = 16
)

type probeKind int

const (
	readinessProbe probeKind = iota
	livenessProbe
	startupProbe
)

func (k probeKind) String() string {
	return [...]string{"Readiness", "Liveness", "Startup"}[k]
}

type probeResult int

const (
	probeUnknown probeResult = iota // the probe could not be run: not counted
	probeSuccess
	probeFailure
)

// probeManager runs the probes of the containers the agent runs.
type probeManager struct {
	exec     execFunc
	onChange func()
	log      *slog.Logger
	client   *http.Client
	// unit is a Kubernetes "second": tests shrink it.
	unit time.Duration

	seq  atomic.Uint64
	live atomic.Int64 // running workers, for tests
	wg   sync.WaitGroup

	mu         sync.Mutex
	containers map[string]*probedContainer // by "uid/container"
}

// probedContainer is the probe state of one container instance. A restart
// replaces it: workers of the old instance only ever write to their own.
type probedContainer struct {
	key    string
	spec   corev1.Container
	target probeTarget
	cancel context.CancelFunc
	// startedCh is closed when the startup probe succeeds (nil without
	// one): readiness and liveness wait for it.
	startedCh chan struct{}

	// Guarded by probeManager.mu.
	hasReadiness, hasStartup bool
	ready, startupPassed     bool
	restart                  bool // a liveness or startup failure not yet taken
	restartMsg               string
	events                   []probeEvent // the last probeEventRing failures
}

// newProbeManager returns a manager that runs exec probes with exec and
// calls onChange (which may be nil, and must not block) after anything the
// agent reports changed: readiness, started, a pending restart, or a new
// probe failure to emit as an event.
func newProbeManager(exec execFunc, onChange func(), log *slog.Logger) *probeManager {
	if log == nil {
		log = slog.Default()
	}
	if onChange == nil {
		onChange = func() {}
	}
	tr := &http.Transport{
		Proxy:              nil, // kubelet probes never go through a proxy
		DisableKeepAlives:  true,
		DisableCompression: true,
		TLSClientConfig:    &tls.Config{InsecureSkipVerify: true}, // kubelet does not verify probe certificates
	}
	client := &http.Client{Transport: tr, CheckRedirect: probeRedirect}
	return &probeManager{exec: exec, onChange: onChange, log: log, client: client, unit: time.Second,
		containers: map[string]*probedContainer{}}
}

// probeRedirect follows redirects to the same host only, as kubelet does;
// a redirect elsewhere ends the probe on the 3xx response (a success).
func probeRedirect(req *http.Request, via []*http.Request) error {
	if req.URL.Hostname() != via[0].URL.Hostname() {
		return http.ErrUseLastResponse
	}
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	return nil
}

// Start starts probing a container that has just started, replacing the
// probes of a previous instance under the same key ("uid/container"): a
// restart is Start with the new PID. Call it for every container started,
// with or without probes, since Ready and Started are false for keys never
// started.
func (m *probeManager) Start(key string, spec corev1.Container, target probeTarget) {
	if target.StartedAt.IsZero() {
		target.StartedAt = time.Now()
	}
	ctx, cancel := context.WithCancel(context.Background())
	pc := &probedContainer{key: key, spec: spec, target: target, cancel: cancel,
		hasReadiness: spec.ReadinessProbe != nil, hasStartup: spec.StartupProbe != nil}
	if pc.hasStartup {
		pc.startedCh = make(chan struct{})
	}
	m.mu.Lock()
	old := m.containers[key]
	m.containers[key] = pc
	m.mu.Unlock()
	if old != nil {
		old.cancel()
	}
	for kind, p := range map[probeKind]*corev1.Probe{readinessProbe: spec.ReadinessProbe,
		livenessProbe: spec.LivenessProbe, startupProbe: spec.StartupProbe} {
		if p == nil {
			continue
		}
		if p.GRPC != nil {
			m.log.Warn("gRPC probes are not supported in the lab: the probe always fails",
				"container", key, "probe", kind.String())
		}
		m.wg.Add(1)
		m.live.Add(1)
		go m.run(ctx, pc, newProbeWorker(kind, p, m.unit))
	}
}

// Stop ends the probes of a container (it stopped or is being deleted).
// It does not wait for a probe in flight: its result is thrown away.
func (m *probeManager) Stop(key string) {
	m.mu.Lock()
	pc := m.containers[key]
	delete(m.containers, key)
	m.mu.Unlock()
	if pc != nil {
		pc.cancel()
	}
}

// Close stops every container's probes and waits for the workers to end.
func (m *probeManager) Close() {
	m.mu.Lock()
	var keys []string
	for k := range m.containers {
		keys = append(keys, k)
	}
	m.mu.Unlock()
	for _, k := range keys {
		m.Stop(k)
	}
	m.wg.Wait()
}

// Ready is the container's readiness as kubelet reports it: false until
// started (Started), then true without a readiness probe, and with one
// once it succeeded successThreshold times in a row, until it fails
// failureThreshold times in a row.
func (m *probeManager) Ready(key string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	pc := m.containers[key]
	return pc != nil && (!pc.hasStartup || pc.startupPassed) && (!pc.hasReadiness || pc.ready)
}

// Started is true once the startup probe succeeded, and at once for a
// container without one; false for a container not started.
func (m *probeManager) Started(key string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	pc := m.containers[key]
	return pc != nil && (!pc.hasStartup || pc.startupPassed)
}

// TakeLivenessFailure reports, once, that the liveness probe failed
// failureThreshold times in a row (or the startup probe did: kubelet
// restarts the container for both), with the last failure's message
// ("Liveness probe failed: …"). The agent then kills the container. The
// failed probe stays on hold until the next Start, so a container being
// killed is not reported again.
func (m *probeManager) TakeLivenessFailure(key string) (failed bool, msg string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	pc := m.containers[key]
	if pc == nil || !pc.restart {
		return false, ""
	}
	pc.restart = false
	return true, pc.restartMsg
}

// LastFailure is the container's last probe failure, if any.
func (m *probeManager) LastFailure(key string) (probeEvent, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	pc := m.containers[key]
	if pc == nil || len(pc.events) == 0 {
		return probeEvent{}, false
	}
	return pc.events[len(pc.events)-1], true
}

// Failures are the container's probe failures with a Seq after after,
// oldest first (the manager keeps the last 16 of each container instance).
func (m *probeManager) Failures(key string, after uint64) []probeEvent {
	m.mu.Lock()
	defer m.mu.Unlock()
	pc := m.containers[key]
	if pc == nil {
		return nil
	}
	var out []probeEvent
	for _, e := range pc.events {
		if e.Seq > after {
			out = append(out, e)
		}
	}
	return out
}

// probeWorker is one probe of one container instance.
type probeWorker struct {
	kind                   probeKind
	probe                  *corev1.Probe
	delay, period, timeout time.Duration
	successThr, failureThr int
	lastResult             probeResult
	run                    int // how many times in a row lastResult came
}

func newProbeWorker(kind probeKind, p *corev1.Probe, unit time.Duration) *probeWorker {
	orDefault := func(v, def int32) int32 {
		if v <= 0 {
			return def
		}
		return v
	}
	return &probeWorker{kind: kind, probe: p,
		delay:      time.Duration(max(p.InitialDelaySeconds, 0)) * unit,
		period:     time.Duration(orDefault(p.PeriodSeconds, probeDefaultPeriod)) * unit,
		timeout:    time.Duration(orDefault(p.TimeoutSeconds, probeDefaultTimeout)) * unit,
		successThr: int(orDefault(p.SuccessThreshold, probeDefaultSuccess)),
		failureThr: int(orDefault(p.FailureThreshold, probeDefaultFailure)),
	}
}

// run probes at StartedAt+initialDelay (and, for readiness and liveness,
// not before the startup probe succeeded), then every period, until the
// container is stopped or the worker's job is done.
func (m *probeManager) run(ctx context.Context, pc *probedContainer, w *probeWorker) {
	defer m.wg.Done()
	defer m.live.Add(-1)
	if w.kind != startupProbe && pc.startedCh != nil {
		select {
		case <-ctx.Done():
			return
		case <-pc.startedCh:
		}
	}
	if d := time.Until(pc.target.StartedAt.Add(w.delay)); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
	tick := time.NewTicker(w.period)
	defer tick.Stop()
	for m.probeOnce(ctx, pc, w) {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// probeOnce runs the probe and applies its result; false ends the worker.
func (m *probeManager) probeOnce(ctx context.Context, pc *probedContainer, w *probeWorker) bool {
	pctx, cancel := context.WithTimeout(ctx, w.timeout)
	res, out, err := m.do(pctx, pc, w)
	cancel()
	if ctx.Err() != nil {
		return false // stopped while probing: the result belongs to nobody
	}
	m.mu.Lock()
	keepGoing, changed := m.apply(pc, w, res, out, err)
	m.mu.Unlock()
	if changed {
		m.onChange()
	}
	return keepGoing
}

// apply turns one result into state, as kubelet's worker.doProbe does: a
// state changes only when a run of equal results reaches its threshold.
// Called with m.mu held.
func (m *probeManager) apply(pc *probedContainer, w *probeWorker, res probeResult, out string, err error) (keepGoing, changed bool) {
	log := m.log.With("container", pc.key, "probe", w.kind.String())
	switch res {
	case probeUnknown:
		m.record(pc, w.kind, w.kind.String()+" probe errored: "+err.Error())
		log.Debug("probe errored", "err", err)
		return true, true
	case probeFailure:
		m.record(pc, w.kind, w.kind.String()+" probe failed: "+out)
		log.Debug("probe failed", "output", out)
		changed = true
	}
	if res == w.lastResult {
		w.run++
	} else {
		w.lastResult, w.run = res, 1
	}
	if (res == probeSuccess && w.run < w.successThr) || (res == probeFailure && w.run < w.failureThr) {
		return true, changed
	}
	switch w.kind {
	case readinessProbe:
		if ready := res == probeSuccess; pc.ready != ready {
			pc.ready = ready
			log.Info("readiness changed", "ready", ready)
			changed = true
		}
		return true, changed
	case startupProbe:
		if res == probeSuccess {
			pc.startupPassed = true
			close(pc.startedCh)
			log.Info("startup probe succeeded")
			return false, true // kubelet stops probing a started container
		}
	}
	// A liveness or startup failure: the container must be restarted.
	// Hold the probe until a new instance starts, as kubelet does, so a
	// container being killed is not reported twice.
	if res == probeFailure {
		pc.restart, pc.restartMsg = true, w.kind.String()+" probe failed: "+out
		log.Info("container failed its probe, will be restarted", "output", out)
		return false, true
	}
	return true, changed
}

func (m *probeManager) record(pc *probedContainer, kind probeKind, msg string) {
	pc.events = append(pc.events, probeEvent{Seq: m.seq.Add(1), Probe: kind.String(), Message: msg, At: time.Now()})
	if len(pc.events) > probeEventRing {
		pc.events = pc.events[len(pc.events)-probeEventRing:]
	}
}

// do runs the probe once: success or failure with kubelet's output, or
// unknown with the reason the probe could not run.
func (m *probeManager) do(ctx context.Context, pc *probedContainer, w *probeWorker) (probeResult, string, error) {
	p := w.probe
	switch {
	case p.Exec != nil:
		return m.doExec(ctx, pc.target.PID, p.Exec.Command, w.timeout)
	case p.HTTPGet != nil:
		addr, err := probeAddr(p.HTTPGet.Host, p.HTTPGet.Port, pc)
		if err != nil {
			return probeUnknown, "", err
		}
		return m.doHTTP(ctx, p.HTTPGet, addr, w.timeout)
	case p.TCPSocket != nil:
		addr, err := probeAddr(p.TCPSocket.Host, p.TCPSocket.Port, pc)
		if err != nil {
			return probeUnknown, "", err
		}
		return doTCP(ctx, addr, w.timeout)
	case p.GRPC != nil:
		return probeFailure, fmt.Sprintf("gRPC probe (port %d) is not supported in the lab", p.GRPC.Port), nil
	}
	return probeUnknown, "", errors.New("missing probe handler")
}

// probeAddr is host:port of an HTTP or TCP probe, the host defaulting to
// the pod's IP.
func probeAddr(host string, p intstr.IntOrString, pc *probedContainer) (string, error) {
	port, err := probePort(p, pc.spec)
	if err != nil {
		return "", err
	}
	if host == "" {
		if !pc.target.PodIP.IsValid() {
			return "", errors.New("pod has no IP")
		}
		host = pc.target.PodIP.String()
	}
	return net.JoinHostPort(host, strconv.Itoa(port)), nil
}

// probePort resolves a probe's port: a number, or the name of one of the
// container's ports (or, as kubelet's last resort, a number in a string).
func probePort(p intstr.IntOrString, spec corev1.Container) (int, error) {
	port := -1
	if p.Type == intstr.Int {
		port = p.IntValue()
	} else {
		for _, cp := range spec.Ports {
			if cp.Name == p.StrVal {
				port = int(cp.ContainerPort)
				break
			}
		}
		if port == -1 {
			n, err := strconv.Atoi(p.StrVal)
			if err != nil {
				return 0, fmt.Errorf("container %s has no port named %q", spec.Name, p.StrVal)
			}
			port = n
		}
	}
	if port <= 0 || port > 65535 {
		return 0, fmt.Errorf("invalid port number: %d", port)
	}
	return port, nil
}

func (m *probeManager) doExec(ctx context.Context, pid int, cmd []string, timeout time.Duration) (probeResult, string, error) {
	if m.exec == nil {
		return probeUnknown, "", errors.New("exec probes are not available")
	}
	if len(cmd) == 0 {
		return probeUnknown, "", errors.New("exec probe has no command")
	}
	if pid <= 0 {
		return probeUnknown, "", errors.New("container has no process")
	}
	code, out, err := m.exec(ctx, pid, cmd)
	if len(out) > probeMaxOutput {
		out = out[:probeMaxOutput]
	}
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return probeFailure, fmt.Sprintf("command %q timed out after %s", strings.Join(cmd, " "), timeout), nil
		}
		return probeUnknown, "", fmt.Errorf("exec %q: %w", strings.Join(cmd, " "), err)
	}
	if code != 0 {
		if strings.TrimSpace(out) == "" {
			// kubelet prints the (empty) output; say what happened instead.
			out = fmt.Sprintf("command %q exited with code %d", strings.Join(cmd, " "), code)
		}
		return probeFailure, out, nil
	}
	return probeSuccess, out, nil
}

// doHTTP is kubelet's HTTP probe: 200–399 is a success (a 3xx only when it
// redirects elsewhere), anything else or no answer within the timeout a
// failure.
func (m *probeManager) doHTTP(ctx context.Context, h *corev1.HTTPGetAction, addr string, timeout time.Duration) (probeResult, string, error) {
	scheme := strings.ToLower(string(h.Scheme))
	if scheme == "" {
		scheme = "http"
	}
	u, err := url.Parse(h.Path)
	if err != nil {
		u = &url.URL{Path: h.Path}
	}
	u.Scheme, u.Host = scheme, addr
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return probeUnknown, "", fmt.Errorf("build probe request: %w", err)
	}
	for _, hd := range h.HTTPHeaders {
		if strings.EqualFold(hd.Name, "Host") {
			req.Host = hd.Value
			continue
		}
		req.Header.Add(hd.Name, hd.Value)
	}
	if _, ok := req.Header["User-Agent"]; !ok {
		req.Header.Set("User-Agent", probeUserAgent)
	}
	if _, ok := req.Header["Accept"]; !ok {
		req.Header.Set("Accept", "*/*")
	}
	client := *m.client
	client.Timeout = timeout
	res, err := client.Do(req)
	if err != nil {
		return probeFailure, err.Error(), nil
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, probeMaxOutput))
	if res.StatusCode < http.StatusOK || res.StatusCode >= http.StatusBadRequest {
		return probeFailure, fmt.Sprintf("HTTP probe failed with statuscode: %d", res.StatusCode), nil
	}
	return probeSuccess, string(b), nil
}

// doTCP is kubelet's TCP probe: a connection opened within the timeout.
func doTCP(ctx context.Context, addr string, timeout time.Duration) (probeResult, string, error) {
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return probeFailure, err.Error(), nil
	}
	_ = conn.Close()
	return probeSuccess, "", nil
}

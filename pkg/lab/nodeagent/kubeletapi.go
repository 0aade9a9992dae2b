package nodeagent

// The kubelet API of the lab node: what kube-apiserver calls on
// https://<node InternalIP>:10250 for `kubectl logs`, `exec`, `attach` and
// `port-forward`. The paths and parameters are kubelet's
// (pkg/kubelet/server/server.go); the streaming protocols (SPDY, and the v4
// WebSocket channel protocols) are those of k8s.io/cri-streaming, the
// library containerd's and CRI-O's streaming servers use. kube-apiserver
// speaks SPDY to this server: kubectl's WebSocket v5.channel.k8s.io (exec,
// attach) and its SPDY-over-WebSocket tunnel (port-forward) are translated
// by kube-apiserver, because the Node does not declare the
// ExtendWebSocketsToKubelet feature.
//
// The containers themselves are reached through LookupContainer: exec is
// nsenter into the container's main process, logs are its log file, and
// port-forward dials the pod's address from the node's network namespace,
// in which the agent runs.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"

	"github.com/podnet/podnet/pkg/lab/pki"
)

const (
	// KubeletPort is where kubelet, and so the node agent, serves its API.
	KubeletPort = 10250
	// streamIdleTimeout is kubelet's default streamingConnectionIdleTimeout.
	streamIdleTimeout = 4 * time.Hour
	// logPollInterval is how often `logs -f` and attach look for new output.
	logPollInterval = 250 * time.Millisecond
)

// podLookup is what the kubelet API needs of the agent; a fake in tests.
type podLookup interface {
	LookupContainer(namespace, pod, container string) (Container, error)
	// PodIP is the first address of a pod this agent runs.
	PodIP(namespace, pod string) (netip.Addr, error)
}

// PodIP returns the first address of a pod this agent runs.
func (a *Agent) PodIP(namespace, pod string) (netip.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, ps := range a.pods {
		if ps.namespace == namespace && ps.name == pod && ps.sb != nil && len(ps.sb.ips) > 0 {
			return ps.sb.ips[0], nil
		}
	}
	return netip.Addr{}, fmt.Errorf("pod %s/%s is not running on node %s", namespace, pod, a.cfg.NodeName)
}

// KubeletTLSConfig loads the kubelet API's serving certificate and the CA
// that clients' certificates must chain to (kube-apiserver's
// --kubelet-client-certificate is issued by the lab CA).
func KubeletTLSConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load kubelet serving certificate %s: %w", certFile, err)
	}
	caPEM, err := os.ReadFile(clientCAFile)
	if err != nil {
		return nil, fmt.Errorf("read client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("client CA %s: no PEM certificate in it", clientCAFile)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}, nil
}

// ServeKubeletAPI serves the kubelet API on addr (":10250") until ctx ends.
// tlsConfig must carry the serving certificate and ClientCAs: every client
// must present a certificate that chains to them, and only kube-apiserver's
// kubelet client (or a member of system:masters) may use the API.
func (a *Agent) ServeKubeletAPI(ctx context.Context, addr string, tlsConfig *tls.Config) error {
	k := &kubeletAPI{pods: a, log: a.log.With("component", "kubelet-api")}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("kubelet API: listen on %s: %w", addr, err)
	}
	k.log.Info("serving the kubelet API", "addr", ln.Addr().String())
	return k.serve(ctx, ln, tlsConfig)
}

type kubeletAPI struct {
	pods podLookup
	log  *slog.Logger
}

// serve serves on ln until ctx ends. It closes ln.
func (k *kubeletAPI) serve(ctx context.Context, ln net.Listener, tlsConfig *tls.Config) error {
	if tlsConfig == nil || tlsConfig.ClientCAs == nil || len(tlsConfig.Certificates) == 0 && tlsConfig.GetCertificate == nil {
		ln.Close()
		return errors.New("kubelet API: the TLS configuration needs a serving certificate and ClientCAs")
	}
	cfg := tlsConfig.Clone()
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	if cfg.MinVersion < tls.VersionTLS12 {
		cfg.MinVersion = tls.VersionTLS12
	}
	// SPDY and WebSocket upgrades need HTTP/1.1; kube-apiserver uses it.
	cfg.NextProtos = []string{"http/1.1"}
	srv := &http.Server{
		Handler:           k.handler(),
		TLSConfig:         cfg,
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(k.log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(tls.NewListener(ln, cfg)) }()
	select {
	case err := <-done:
		return fmt.Errorf("kubelet API: %w", err)
	case <-ctx.Done():
	}
	// Exec and port-forward sessions are hijacked connections, which
	// Shutdown does not wait for; they end with the agent or their client.
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	<-done
	return nil
}

// handler routes kubelet's paths. The forms with a pod UID
// (/exec/NS/POD/UID/CONTAINER) are accepted and the UID ignored, as
// kube-apiserver never sends it.
func (k *kubeletAPI) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") })
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", k.authorized(k.containerLogs))
	for _, p := range []string{"/{namespace}/{pod}/{container}", "/{namespace}/{pod}/{uid}/{container}"} {
		for _, m := range []string{"GET ", "POST "} {
			mux.HandleFunc(m+"/exec"+p, k.authorized(k.exec))
			mux.HandleFunc(m+"/attach"+p, k.authorized(k.attach))
		}
		mux.HandleFunc("POST /run"+p, k.authorized(k.run))
	}
	for _, m := range []string{"GET ", "POST "} {
		mux.HandleFunc(m+"/portForward/{namespace}/{pod}", k.authorized(k.portForward))
		mux.HandleFunc(m+"/portForward/{namespace}/{pod}/{uid}", k.authorized(k.portForward))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, fmt.Sprintf("%s %s: not found: the lab node agent serves /healthz, /containerLogs, /exec, /attach, /portForward and /run", r.Method, r.URL.Path), http.StatusNotFound)
	})
	return k.authenticated(mux)
}

// clientIdentity is the user and groups of a verified client certificate,
// as kube-apiserver reads them (CN and O).
func clientIdentity(r *http.Request) (user string, groups []string, ok bool) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return "", nil, false
	}
	leaf := r.TLS.VerifiedChains[0][0]
	return leaf.Subject.CommonName, leaf.Subject.Organization, true
}

// authenticated lets through only clients with a verified certificate (the
// TLS handshake already demands one; this guards against a looser config).
// /healthz is open to any of them.
func (k *kubeletAPI) authenticated(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, _, ok := clientIdentity(r); !ok {
			http.Error(w, "Unauthorized: the kubelet API needs a client certificate issued by the lab CA", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// authorized admits kube-apiserver's kubelet client and system:masters,
// which is what kubelet's webhook authorization grants in the lab (only
// those identities hold the nodes/proxy permission); everyone else gets 403.
func (k *kubeletAPI) authorized(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		user, groups, _ := clientIdentity(r)
		if user != pki.KubeletClientUser && !slices.Contains(groups, pki.MastersGroup) {
			k.log.Warn("kubelet API: forbidden", "user", user, "groups", groups, "path", r.URL.Path)
			http.Error(w, fmt.Sprintf("Forbidden: user %q (groups %q) may not use the kubelet API: only %s or group %s may",
				user, groups, pki.KubeletClientUser, pki.MastersGroup), http.StatusForbidden)
			return
		}
		h(w, r)
	}
}

// lookup finds the container a request names, answering 404 when the agent
// does not run it.
func (k *kubeletAPI) lookup(w http.ResponseWriter, r *http.Request) (Container, bool) {
	ns, pod, name := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	c, err := k.pods.LookupContainer(ns, pod, name)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return Container{}, false
	}
	return c, true
}

// running is lookup for a container that must be running (exec, attach).
func (k *kubeletAPI) running(w http.ResponseWriter, r *http.Request) (Container, bool) {
	c, ok := k.lookup(w, r)
	if ok && c.PID == 0 {
		http.Error(w, fmt.Sprintf("container %q in pod %s/%s is not running", r.PathValue("container"),
			r.PathValue("namespace"), r.PathValue("pod")), http.StatusBadRequest)
		return Container{}, false
	}
	return c, ok
}

// logOptions are the parameters of /containerLogs that the lab honours.
type logOptions struct {
	follow     bool
	previous   bool  // the instance before the current one
	tailLines  int64 // -1: all
	limitBytes int64 // 0: no limit
}

// parseLogOptions reads kubelet's /containerLogs query. timestamps,
// sinceSeconds and sinceTime are accepted and ignored: the log file holds
// plain text with no time per line. previous reads the log of the
// container's instance before the current one (the agent keeps one file
// per instance, as kubelet does). stream may only be All: stdout and
// stderr go to one file.
func parseLogOptions(q map[string][]string) (logOptions, error) {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	o := logOptions{tailLines: -1}
	if v := get("follow"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return o, fmt.Errorf("follow=%q: not a boolean", v)
		}
		o.follow = b
	}
	tail := get("tailLines")
	if tail == "" {
		tail = get("tail") // kubelet's older name
	}
	if tail != "" && tail != "all" {
		n, err := strconv.ParseInt(tail, 10, 64)
		if err != nil || n < 0 {
			return o, fmt.Errorf("tailLines=%q: want a number >= 0", tail)
		}
		o.tailLines = n
	}
	if v := get("limitBytes"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			return o, fmt.Errorf("limitBytes=%q: want a number >= 1", v)
		}
		o.limitBytes = n
	}
	for _, k := range []string{"previous", "timestamps"} {
		if v := get(k); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return o, fmt.Errorf("%s=%q: not a boolean", k, v)
			}
			if k == "previous" {
				o.previous = b
			}
		}
	}
	if v := get("stream"); v != "" && v != "All" {
		return o, fmt.Errorf("stream=%q: the lab keeps a container's stdout and stderr in one file; only All is available", v)
	}
	return o, nil
}

// containerLogs serves GET /containerLogs/NS/POD/CONTAINER.
func (k *kubeletAPI) containerLogs(w http.ResponseWriter, r *http.Request) {
	opts, err := parseLogOptions(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c, ok := k.lookup(w, r)
	if !ok {
		return
	}
	ns, pod, name := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	path := c.LogPath
	if opts.previous {
		if c.PreviousLogPath == "" {
			http.Error(w, fmt.Sprintf("previous terminated container %q in pod %s/%s not found", name, ns, pod), http.StatusBadRequest)
			return
		}
		path, opts.follow = c.PreviousLogPath, false
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		http.Error(w, fmt.Sprintf("container %q in pod %s/%s has not started yet: no logs", name, ns, pod), http.StatusBadRequest)
		return
	}
	if err != nil {
		http.Error(w, fmt.Sprintf("open the log of container %q in pod %s/%s: %v", name, ns, pod, err), http.StatusInternalServerError)
		return
	}
	defer f.Close()
	if opts.tailLines >= 0 {
		st, err := f.Stat()
		if err == nil {
			var off int64
			if off, err = tailOffset(f, st.Size(), opts.tailLines); err == nil {
				_, err = f.Seek(off, io.SeekStart)
			}
		}
		if err != nil {
			http.Error(w, fmt.Sprintf("read the log of container %q in pod %s/%s: %v", name, ns, pod, err), http.StatusInternalServerError)
			return
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	var out io.Writer = &flushWriter{w: w, rc: http.NewResponseController(w)}
	if opts.limitBytes > 0 {
		out = &limitWriter{w: out, left: opts.limitBytes}
	}
	// Follow only the instance that runs now, as kubelet does: the stream
	// ends when it exits (or restarts), or when the client goes away.
	var until func() bool
	if opts.follow && c.PID != 0 {
		until = func() bool {
			now, err := k.pods.LookupContainer(ns, pod, name)
			return err != nil || now.PID != c.PID
		}
	}
	if err := copyLog(r.Context(), out, f, until); err != nil && !errors.Is(err, errLimitReached) {
		k.log.Debug("kubelet API: logs", "pod", ns+"/"+pod, "container", name, "err", err)
	}
}

// copyLog copies f to out; with done set, it keeps copying what is
// appended until done() says the writer has gone, then drains the rest.
func copyLog(ctx context.Context, out io.Writer, f io.Reader, done func() bool) error {
	for {
		if _, err := io.Copy(out, f); err != nil {
			return err
		}
		if done == nil {
			return nil
		}
		if done() {
			_, err := io.Copy(out, f)
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(logPollInterval):
		}
	}
}

// tailOffset returns where the last n lines of the first size bytes of f
// begin. A newline at the very end ends the last line; it starts none.
func tailOffset(f io.ReaderAt, size, n int64) (int64, error) {
	if n == 0 {
		return size, nil
	}
	const block = 32 << 10
	buf := make([]byte, block)
	found := int64(0)
	for end := size; end > 0; {
		start := max(0, end-block)
		chunk := buf[:end-start]
		if _, err := f.ReadAt(chunk, start); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		for i := len(chunk) - 1; i >= 0; i-- {
			if pos := start + int64(i); chunk[i] == '\n' && pos != size-1 {
				if found++; found == n {
					return pos + 1, nil
				}
			}
		}
		end = start
	}
	return 0, nil
}

// flushWriter flushes every write, so `logs -f` shows lines as they come.
type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f *flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = f.rc.Flush()
	}
	return n, err
}

var errLimitReached = errors.New("limitBytes reached")

// limitWriter passes on at most left bytes, then fails with errLimitReached.
type limitWriter struct {
	w    io.Writer
	left int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, errLimitReached
	}
	short := int64(len(p)) > l.left
	if short {
		p = p[:l.left]
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	if err == nil && short {
		err = errLimitReached
	}
	return n, err
}

// exec serves /exec/NS/POD/CONTAINER?command=…&input=1&output=1&error=1&tty=1.
func (k *kubeletAPI) exec(w http.ResponseWriter, r *http.Request) {
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cmd := r.URL.Query()["command"]
	if len(cmd) == 0 {
		http.Error(w, "exec: no command given (query parameter \"command\")", http.StatusBadRequest)
		return
	}
	c, ok := k.running(w, r)
	if !ok {
		return
	}
	ns, pod, name := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	k.log.Info("exec", "pod", ns+"/"+pod, "container", name, "command", cmd, "tty", opts.TTY)
	remotecommand.ServeExec(w, r, &containerStreams{k: k, c: c}, ns+"/"+pod, "", name, cmd, opts,
		streamIdleTimeout, remotecommand.DefaultStreamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

// attach serves /attach/NS/POD/CONTAINER (see attachContainer).
func (k *kubeletAPI) attach(w http.ResponseWriter, r *http.Request) {
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ns, pod, name := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	if opts.TTY {
		http.Error(w, fmt.Sprintf("attach: container %q in pod %s/%s has no tty: the lab runs containers without one (use exec -it)", name, ns, pod), http.StatusBadRequest)
		return
	}
	c, ok := k.running(w, r)
	if !ok {
		return
	}
	remotecommand.ServeAttach(w, r, &containerStreams{k: k, c: c}, ns+"/"+pod, "", name, opts,
		streamIdleTimeout, remotecommand.DefaultStreamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

// run serves POST /run/NS/POD/CONTAINER?cmd=…: the command (split at
// spaces, as kubelet does) runs to completion and its output is the body.
func (k *kubeletAPI) run(w http.ResponseWriter, r *http.Request) {
	cmd := strings.Fields(r.URL.Query().Get("cmd"))
	if len(cmd) == 0 {
		http.Error(w, "run: no command given (query parameter \"cmd\")", http.StatusBadRequest)
		return
	}
	c, ok := k.running(w, r)
	if !ok {
		return
	}
	out, err := k.runOutput(r.Context(), c, cmd)
	status := http.StatusOK
	if err != nil {
		status = http.StatusInternalServerError
		out = append(out, err.Error()+"\n"...)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(out)
}

// portForward serves /portForward/NS/POD (SPDY, or WebSocket with ?port=).
func (k *kubeletAPI) portForward(w http.ResponseWriter, r *http.Request) {
	ns, pod := r.PathValue("namespace"), r.PathValue("pod")
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ip, err := k.pods.PodIP(ns, pod)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	k.log.Info("port-forward", "pod", ns+"/"+pod, "ip", ip)
	portforward.ServePortForward(w, r, &podForwarder{k: k, ip: ip}, ns+"/"+pod, "", opts,
		streamIdleTimeout, remotecommand.DefaultStreamCreationTimeout, portforward.SupportedProtocols)
}

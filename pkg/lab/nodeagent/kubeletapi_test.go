package nodeagent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	utilexec "k8s.io/utils/exec"

	"github.com/podnet/podnet/pkg/lab/pki"
)

// fakePods is a podLookup over a fixed set of containers.
type fakePods struct {
	mu         sync.Mutex
	containers map[string]Container // "ns/pod/container"
}

func (f *fakePods) LookupContainer(ns, pod, name string) (Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.containers[ns+"/"+pod+"/"+name]
	if !ok {
		return Container{}, fmt.Errorf("pod %s/%s is not running on node node-1", ns, pod)
	}
	return c, nil
}

func (f *fakePods) PodIP(ns, pod string) (netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, c := range f.containers {
		if strings.HasPrefix(k, ns+"/"+pod+"/") {
			return c.PodIP, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("pod %s/%s is not running on node node-1", ns, pod)
}

func (f *fakePods) set(key string, c Container) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.containers[key] = c
}

// kubeletEnv is a kubelet API served on loopback with the lab's PKI.
type kubeletEnv struct {
	t    *testing.T
	url  string
	b    *pki.Bundle
	pods *fakePods
}

func startKubeletAPI(t *testing.T) *kubeletEnv {
	t.Helper()
	b, err := pki.Create(filepath.Join(t.TempDir(), "pki"), pki.DefaultSpec())
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := b.NodeServingCert("node-1", []netip.Addr{netip.MustParseAddr("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := KubeletTLSConfig(cert, key, b.Path(pki.CACert))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pods := &fakePods{containers: map[string]Container{}}
	k := &kubeletAPI{pods: pods, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.serve(ctx, ln, cfg) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return &kubeletEnv{t: t, url: "https://" + ln.Addr().String(), b: b, pods: pods}
}

// client returns an HTTP client that trusts the lab CA and presents cert.
func (e *kubeletEnv) client(cert *tls.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.b.CACertPEM())
	cfg := &tls.Config{RootCAs: pool}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
}

// apiserverCert is kube-apiserver's --kubelet-client-certificate.
func (e *kubeletEnv) apiserverCert() *tls.Certificate {
	c, err := tls.LoadX509KeyPair(e.b.Path(pki.APIServerKubeletCert), e.b.Path(pki.APIServerKubeletKey))
	if err != nil {
		e.t.Fatal(err)
	}
	return &c
}

// nodeCert is a certificate of the lab CA that may not use the API
// (system:node:node-2, as in node-2's kubeconfig).
func (e *kubeletEnv) nodeCert() *tls.Certificate {
	path, err := e.b.NodeKubeconfig("node-2")
	if err != nil {
		e.t.Fatal(err)
	}
	kc, err := clientcmd.LoadFromFile(path)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, ai := range kc.AuthInfos {
		c, err := tls.X509KeyPair(ai.ClientCertificateData, ai.ClientKeyData)
		if err != nil {
			e.t.Fatal(err)
		}
		return &c
	}
	e.t.Fatal("no user in the node kubeconfig")
	return nil
}

// strangerCert is a self-signed certificate claiming the apiserver's name.
func strangerCert(t *testing.T) *tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		Subject:     pkix.Name{CommonName: pki.KubeletClientUser, Organization: []string{pki.MastersGroup}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func (e *kubeletEnv) get(c *http.Client, path string) (int, string) {
	e.t.Helper()
	resp, err := c.Get(e.url + path)
	if err != nil {
		e.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestKubeletAPIAuth(t *testing.T) {
	e := startKubeletAPI(t)
	e.pods.set("default/web/web", Container{PID: 1, LogPath: writeLog(t, "hello\n")})
	const logs = "/containerLogs/default/web/web"

	if code, body := e.get(e.client(e.apiserverCert()), logs); code != http.StatusOK || body != "hello\n" {
		t.Errorf("kube-apiserver's kubelet client: %d %q, want 200 %q", code, body, "hello\n")
	}
	node := e.client(e.nodeCert())
	if code, body := e.get(node, logs); code != http.StatusForbidden || !strings.Contains(body, "system:node:node-2") {
		t.Errorf("a node's certificate: %d %q, want 403 naming the user", code, body)
	}
	for _, p := range []string{"/exec/default/web/web?command=id&output=1", "/portForward/default/web", "/attach/default/web/web?output=1"} {
		if code, _ := e.get(node, p); code != http.StatusForbidden {
			t.Errorf("a node's certificate on %s: %d, want 403", p, code)
		}
	}
	if code, body := e.get(node, "/healthz"); code != http.StatusOK || body != "ok" {
		t.Errorf("/healthz with a node's certificate: %d %q, want 200 ok", code, body)
	}
	// Without a certificate of the lab CA, the handshake fails.
	for name, c := range map[string]*http.Client{"no certificate": e.client(nil), "foreign CA": e.client(strangerCert(t))} {
		if resp, err := c.Get(e.url + "/healthz"); err == nil {
			resp.Body.Close()
			t.Errorf("%s: got %s, want a failed TLS handshake", name, resp.Status)
		}
	}
}

func writeLog(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.log")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestKubeletAPILogs(t *testing.T) {
	e := startKubeletAPI(t)
	c := e.client(e.apiserverCert())
	e.pods.set("default/web/web", Container{PID: 1, LogPath: writeLog(t, "one\ntwo\nthree\n")})
	e.pods.set("default/web/partial", Container{PID: 1, LogPath: writeLog(t, "one\ntwo\nthree")})
	e.pods.set("default/web/restarted", Container{PID: 1, LogPath: writeLog(t, "second run\n"), PreviousLogPath: writeLog(t, "first run\n")})
	e.pods.set("default/web/waiting", Container{LogPath: filepath.Join(t.TempDir(), "never.log")})
	for _, tc := range []struct {
		path string
		code int
		want string // the body, or a part of it for errors
	}{
		{"/containerLogs/default/web/web", 200, "one\ntwo\nthree\n"},
		{"/containerLogs/default/web/web?tailLines=2", 200, "two\nthree\n"},
		{"/containerLogs/default/web/web?tailLines=1", 200, "three\n"},
		{"/containerLogs/default/web/web?tailLines=0", 200, ""},
		{"/containerLogs/default/web/web?tailLines=10", 200, "one\ntwo\nthree\n"},
		{"/containerLogs/default/web/web?tail=all", 200, "one\ntwo\nthree\n"},
		{"/containerLogs/default/web/partial?tailLines=2", 200, "two\nthree"},
		{"/containerLogs/default/web/web?limitBytes=5", 200, "one\nt"},
		{"/containerLogs/default/web/web?tailLines=2&limitBytes=3", 200, "two"},
		{"/containerLogs/default/web/web?timestamps=true&sinceSeconds=10&stream=All", 200, "one\ntwo\nthree\n"},
		{"/containerLogs/default/web/restarted", 200, "second run\n"},
		{"/containerLogs/default/web/restarted?previous=true", 200, "first run\n"},
		{"/containerLogs/default/web/web?previous=true", 400, "previous terminated container"},
		{"/containerLogs/default/web/web?tailLines=-1", 400, "tailLines"},
		{"/containerLogs/default/web/web?stream=Stderr", 400, "one file"},
		{"/containerLogs/default/nosuch/web", 404, "pod default/nosuch is not running"},
		{"/containerLogs/default/web/waiting", 400, `container "waiting" in pod default/web has not started`},
		{"/nosuch", 404, "not found"},
	} {
		code, body := e.get(c, tc.path)
		if code != tc.code || code == 200 && body != tc.want || code != 200 && !strings.Contains(body, tc.want) {
			t.Errorf("GET %s: %d %q, want %d %q", tc.path, code, body, tc.code, tc.want)
		}
	}
}

func TestKubeletAPILogsFollow(t *testing.T) {
	e := startKubeletAPI(t)
	logPath := writeLog(t, "first\n")
	e.pods.set("default/web/web", Container{PID: 42, LogPath: logPath})
	resp, err := e.client(e.apiserverCert()).Get(e.url + "/containerLogs/default/web/web?follow=true")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := make(chan string)
	go func() { b, _ := io.ReadAll(resp.Body); got <- string(b) }()
	f, err := os.OpenFile(logPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * logPollInterval)
	fmt.Fprintln(f, "second")
	time.Sleep(3 * logPollInterval)
	fmt.Fprintln(f, "last words")
	f.Close()
	select {
	case s := <-got:
		t.Fatalf("follow ended while the container ran: %q", s)
	case <-time.After(3 * logPollInterval):
	}
	e.pods.set("default/web/web", Container{LogPath: logPath}) // it exits
	select {
	case s := <-got:
		if s != "first\nsecond\nlast words\n" {
			t.Errorf("followed %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follow did not end when the container exited")
	}
}

func TestTailOffset(t *testing.T) {
	long := strings.Repeat("x", 70000) + "\n"
	for _, tc := range []struct {
		content string
		n       int64
		want    string
	}{
		{"", 3, ""},
		{"a\nb\nc\n", 2, "b\nc\n"},
		{"a\nb\nc", 2, "b\nc"},
		{"a\nb\nc\n", 3, "a\nb\nc\n"},
		{"a\nb\nc\n", 0, ""},
		{"\n\n\n", 2, "\n\n"},
		{long + long + "end\n", 2, long + "end\n"},
		{long + long + long, 2, long + long},
	} {
		r := strings.NewReader(tc.content)
		off, err := tailOffset(r, int64(len(tc.content)), tc.n)
		if err != nil {
			t.Fatal(err)
		}
		if got := tc.content[off:]; got != tc.want {
			t.Errorf("tail %d of %.20q: %.20q (len %d), want %.20q (len %d)", tc.n, tc.content, got, len(got), tc.want, len(tc.want))
		}
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// restConfig is kube-apiserver's view of the kubelet, for client-go's
// SPDY clients.
func (e *kubeletEnv) restConfig() *rest.Config {
	return &rest.Config{Host: e.url, TLSClientConfig: rest.TLSClientConfig{
		CertFile: e.b.Path(pki.APIServerKubeletCert), KeyFile: e.b.Path(pki.APIServerKubeletKey), CAFile: e.b.Path(pki.CACert)}}
}

func TestKubeletAPIPortForward(t *testing.T) {
	e := startKubeletAPI(t)
	// The "pod" is a listener on loopback that answers a line with a line.
	pod, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pod.Close()
	go func() {
		for {
			conn, err := pod.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				b := make([]byte, 64)
				n, _ := conn.Read(b)
				fmt.Fprintf(conn, "pong %s", b[:n])
			}()
		}
	}()
	e.pods.set("default/web/web", Container{PID: 1, PodIP: netip.MustParseAddr("127.0.0.1")})
	podPort := pod.Addr().(*net.TCPAddr).Port

	rt, upgrader, err := spdy.RoundTripperFor(e.restConfig())
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(e.url + "/portForward/default/web")
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, u)
	stop, ready := make(chan struct{}), make(chan struct{})
	var errOut lockedBuffer // client-go writes to it from every connection's goroutine
	pf, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", podPort)}, stop, ready, io.Discard, &errOut)
	if err != nil {
		t.Fatal(err)
	}
	fwdDone := make(chan error, 1)
	go func() { fwdDone <- pf.ForwardPorts() }()
	defer func() {
		close(stop)
		<-fwdDone
	}()
	select {
	case <-ready:
	case err := <-fwdDone:
		t.Fatalf("port-forward: %v: %s", err, errOut.String())
	case <-time.After(10 * time.Second):
		t.Fatal("port-forward not ready")
	}
	ports, err := pf.GetPorts()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // two connections over one forwarding session
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", ports[0].Local))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "ping%d", i)
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(conn)
		conn.Close()
		if want := fmt.Sprintf("pong ping%d", i); string(b) != want || err != nil {
			t.Errorf("through port-forward: %q, %v; want %q", b, err, want)
		}
	}

	// Forwarding to a pod the node does not run is refused with 404.
	code, body := e.get(e.client(e.apiserverCert()), "/portForward/default/nosuch")
	if code != http.StatusNotFound || !strings.Contains(body, "default/nosuch") {
		t.Errorf("port-forward to an unknown pod: %d %q", code, body)
	}
}

// startTarget runs a process to exec "into": as root, entering the
// namespaces of a child that shares ours is allowed and harmless.
func startTarget(t *testing.T) int {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("exec: nsenter needs root")
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Skip("exec: no nsenter")
	}
	cmd := exec.Command("sleep", "60")
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "FROM_CONTAINER=yes"}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd.Process.Pid
}

type fixedSize struct{ sent bool }

func (f *fixedSize) Next() *remotecommand.TerminalSize {
	if f.sent {
		select {} // no more resizes; the stream ends without them
	}
	f.sent = true
	return &remotecommand.TerminalSize{Width: 77, Height: 33}
}

func TestKubeletAPIExec(t *testing.T) {
	pid := startTarget(t)
	e := startKubeletAPI(t)
	e.pods.set("default/web/web", Container{PID: pid, LogPath: writeLog(t, "")})
	// execute runs argv with the streams named in flags (output, error, input, tty).
	execute := func(argv []string, flags string, opts remotecommand.StreamOptions) error {
		q := url.Values{"command": argv}
		for _, f := range strings.Fields(flags) {
			q.Set(f, "1")
		}
		u, _ := url.Parse(e.url + "/exec/default/web/web?" + q.Encode())
		ex, err := remotecommand.NewSPDYExecutor(e.restConfig(), http.MethodPost, u)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return ex.StreamWithContext(ctx, opts)
	}

	var out, errOut bytes.Buffer
	err := execute([]string{"sh", "-c", "echo out $FROM_CONTAINER; echo err >&2; exit 3"}, "output error",
		remotecommand.StreamOptions{Stdout: &out, Stderr: &errOut})
	var ee utilexec.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 3 {
		t.Errorf("exit 3: err %v, want exit code 3", err)
	}
	if out.String() != "out yes\n" || errOut.String() != "err\n" {
		t.Errorf("stdout %q stderr %q, want %q %q", out.String(), errOut.String(), "out yes\n", "err\n")
	}

	out.Reset()
	if err := execute([]string{"cat"}, "input output", remotecommand.StreamOptions{Stdin: strings.NewReader("through stdin"), Stdout: &out}); err != nil || out.String() != "through stdin" {
		t.Errorf("cat: %q, %v", out.String(), err)
	}

	out.Reset()
	err = execute([]string{"sh", "-c", "stty size; test -t 0"}, "output tty", remotecommand.StreamOptions{Stdout: &out, Tty: true, TerminalSizeQueue: &fixedSize{}})
	if err != nil || strings.TrimSpace(out.String()) != "33 77" {
		t.Errorf("with a tty: %q, %v; want the size 33 77 and a terminal on stdin", out.String(), err)
	}

	out.Reset()
	errOut.Reset()
	err = execute([]string{"no-such-command"}, "output error", remotecommand.StreamOptions{Stdout: &out, Stderr: &errOut})
	if !errors.As(err, &ee) || ee.ExitStatus() != 127 || !strings.Contains(errOut.String(), "no-such-command") {
		t.Errorf("a missing command: %v, %q; want exit code 127 and a message naming it", err, errOut.String())
	}

	// /run runs a command and returns its output.
	resp, err := e.client(e.apiserverCert()).Post(e.url+"/run/default/web/web?cmd=echo+ran", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(b) != "ran\n" {
		t.Errorf("/run: %s %q", resp.Status, b)
	}

	// Exec in a container that is not running is refused.
	e.pods.set("default/web/stopped", Container{})
	code, body := e.get(e.client(e.apiserverCert()), "/exec/default/web/stopped?command=id&output=1")
	if code != http.StatusBadRequest || !strings.Contains(body, "not running") {
		t.Errorf("exec in a stopped container: %d %q", code, body)
	}
}

package images

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestNetexec(t *testing.T) {
	hostname, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	httpPort, udpPort := freePort(t, "tcp"), freePort(t, "udp")
	r := startBuiltin(t, BuiltinAgnhost, "netexec", "--http-port="+strconv.Itoa(httpPort),
		"--udp-port", strconv.Itoa(udpPort), "--sctp-port=8082")
	waitTCP(t, r, httpPort)
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	eventually(t, "/healthz", func() bool { resp, _ := get(t, base+"/healthz"); return resp.StatusCode == 200 })

	for path, want := range map[string]string{
		"/hostname":           hostname,
		"/hostName":           hostname,
		"/echo?msg=hi":        "hi",
		"/serverport":         strconv.Itoa(httpPort),
		"/readyz":             "ok",
		"/header?key=X-Probe": "",
	} {
		if resp, body := get(t, base+path); resp.StatusCode != 200 || body != want {
			t.Errorf("GET %s = %s %q, want 200 %q", path, resp.Status, body, want)
		}
	}
	if resp, body := get(t, base+"/echo?msg=gone&code=410"); resp.StatusCode != 410 || body != "gone" {
		t.Errorf("GET /echo with code = %s %q", resp.Status, body)
	}
	if resp, _ := get(t, base+"/redirect?location=/echo%3Fmsg=x&code=307"); resp.StatusCode != 307 ||
		resp.Header.Get("Location") != "/echo?msg=x" {
		t.Errorf("GET /redirect = %s, Location %q", resp.Status, resp.Header.Get("Location"))
	}
	if resp, body := get(t, base+"/shell?cmd=id"); resp.StatusCode != http.StatusNotImplemented {
		t.Errorf("GET /shell = %s %q, want 501", resp.Status, body)
	}
	if _, body := get(t, base+"/"); !strings.HasPrefix(body, "NOW: ") {
		t.Errorf("GET / = %q", body)
	}
	if got, local := clientIP(t, httpPort); got != local {
		t.Errorf("/clientip = %q, want the client's address %q", got, local)
	}

	// UDP protocol.
	if got, _ := udpAsk(t, udpPort, "hostname"); got != hostname {
		t.Errorf("UDP hostname = %q, want %q", got, hostname)
	}
	if got, _ := udpAsk(t, udpPort, "echo hi\n"); got != "hi" {
		t.Errorf("UDP echo = %q, want hi", got)
	}
	if got, local := udpAsk(t, udpPort, "clientip"); got != local {
		t.Errorf("UDP clientip = %q, want %q", got, local)
	}
	if got, _ := udpAsk(t, udpPort, "serverport"); got != strconv.Itoa(udpPort) {
		t.Errorf("UDP serverport = %q", got)
	}

	// /dial, as the e2e tests use it between pods.
	for _, tc := range []struct{ protocol, port string }{{"http", strconv.Itoa(httpPort)}, {"udp", strconv.Itoa(udpPort)}} {
		_, body := get(t, fmt.Sprintf("%s/dial?request=hostname&protocol=%s&host=127.0.0.1&port=%s&tries=2", base, tc.protocol, tc.port))
		var out map[string][]string
		if err := json.Unmarshal([]byte(body), &out); err != nil {
			t.Fatalf("dial %s: %v in %q", tc.protocol, err, body)
		}
		if want := map[string][]string{"responses": {hostname, hostname}}; !reflect.DeepEqual(out, want) {
			t.Errorf("dial %s = %v, want %v", tc.protocol, out, want)
		}
	}
	if resp, _ := get(t, base+"/dial?host=127.0.0.1&port=1"); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("dial without request = %s, want 400", resp.Status)
	}

	if code := r.stop(t); code != 0 {
		t.Errorf("exit code = %d, want 0", code)
	}
	mustContain(t, "netexec log", r.stderr.String(), "Started HTTP server on port", "GET /hostname",
		"SCTP is not supported")
}

// clientIP asks /clientip over a connection whose local address it knows.
func clientIP(t *testing.T, port int) (got, local string) {
	t.Helper()
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	io.WriteString(c, "GET /clientip HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	return string(body), c.LocalAddr().String()
}

func TestNetexecExit(t *testing.T) {
	port := freePort(t, "tcp")
	r := startBuiltin(t, BuiltinAgnhost, "netexec", "--http-port="+strconv.Itoa(port), "--udp-port=-1")
	waitTCP(t, r, port)
	// The server may close the connection before answering, as agnhost does.
	client := &http.Client{Timeout: 3 * time.Second}
	if resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/exit?code=3", port)); err == nil {
		resp.Body.Close()
	}
	if code := r.wait(t); code != 3 {
		t.Errorf("exit code = %d, want 3", code)
	}
}

func TestNetexecDelayedShutdown(t *testing.T) {
	port := freePort(t, "tcp")
	r := startBuiltin(t, BuiltinAgnhost, "netexec", "--http-port="+strconv.Itoa(port), "--udp-port=-1", "--delay-shutdown=1")
	waitTCP(t, r, port)
	r.cancel()
	eventually(t, "/readyz to say 503", func() bool {
		resp, body := get(t, fmt.Sprintf("http://127.0.0.1:%d/readyz", port))
		return resp.StatusCode == http.StatusServiceUnavailable && body == "shutting down"
	})
	if code := r.wait(t); code != 0 {
		t.Errorf("exit code = %d, want 0", code)
	}
}

func TestConnect(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	closed := freePort(t, "tcp")

	// A UDP server that answers, and one that never does.
	answering, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer answering.Close()
	go func() {
		buf := make([]byte, 100)
		for {
			n, from, err := answering.ReadFrom(buf)
			if err != nil {
				return
			}
			answering.WriteTo(buf[:n], from)
		}
	}()
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	closedUDP := freePort(t, "udp")

	for _, tc := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{ln.Addr().String()}, 0, ""},
		{[]string{"--timeout=2s", ln.Addr().String(), "--protocol=tcp"}, 0, ""},
		{[]string{fmt.Sprintf("127.0.0.1:%d", closed), "--timeout=2s"}, 1, "REFUSED\n"},
		{[]string{"no-port-here"}, 1, "UNKNOWN: "},
		{[]string{answering.LocalAddr().String(), "--protocol=udp", "--timeout=2s"}, 0, ""},
		{[]string{silent.LocalAddr().String(), "--protocol=udp", "--timeout=100ms"}, 1, "TIMEOUT: "},
		{[]string{fmt.Sprintf("127.0.0.1:%d", closedUDP), "--protocol=udp", "--timeout=2s"}, 1, "REFUSED: "},
		{[]string{"127.0.0.1:80", "--protocol=sctp"}, 1, "OTHER: SCTP is not supported"},
		{[]string{"127.0.0.1:80", "--protocol=quic"}, 1, "Unsupported protocol quic"},
		{nil, 1, "Error: accepts 1 arg(s), received 0"},
	} {
		var stdout, stderr syncBuffer
		code := RunBuiltin(context.Background(), BuiltinAgnhost, append([]string{"connect"}, tc.args...), &stdout, &stderr)
		if code != tc.code || !strings.HasPrefix(stderr.String(), tc.stderr) || (tc.stderr == "" && stderr.String() != "") {
			t.Errorf("connect %q = %d, stderr %q; want %d, stderr %q", tc.args, code, stderr.String(), tc.code, tc.stderr)
		}
	}
}

func TestPause(t *testing.T) {
	r := startBuiltin(t, BuiltinPause)
	if code := r.stop(t); code != 0 {
		t.Errorf("pause exit code = %d, want 0", code)
	}

	r = startBuiltin(t, BuiltinAgnhost, "pause")
	eventually(t, "agnhost pause to start", func() bool { return strings.Contains(r.stdout.String(), "Signals registered") })
	if code := r.stop(t); code != 0 {
		t.Errorf("agnhost pause exit code = %d, want 0", code)
	}
	mustContain(t, "agnhost pause output", r.stdout.String(), "Paused\n", `exiting because of signal "terminated"`)
}

func TestPauseSignal(t *testing.T) {
	r := startBuiltin(t, BuiltinAgnhost, "pause")
	// The signal handler is installed before "Paused" is printed.
	eventually(t, "agnhost pause to start", func() bool { return strings.Contains(r.stdout.String(), "Paused") })
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if code := r.wait(t); code != 0 {
		t.Errorf("exit code = %d, want 0", code)
	}
	mustContain(t, "agnhost pause output", r.stdout.String(), `exiting because of signal "interrupt"`)
}

func TestServeHostname(t *testing.T) {
	hostname, _ := os.Hostname()
	port := freePort(t, "tcp")
	r := startBuiltin(t, BuiltinAgnhost, "serve-hostname", "--port="+strconv.Itoa(port))
	waitTCP(t, r, port)
	if _, body := get(t, fmt.Sprintf("http://127.0.0.1:%d/anything", port)); body != hostname {
		t.Errorf("HTTP = %q, want %q", body, hostname)
	}

	port = freePort(t, "udp")
	r = startBuiltin(t, BuiltinAgnhost, "serve-hostname", "--udp", "--http=false", "--port="+strconv.Itoa(port))
	eventually(t, "serve-hostname --udp to start", func() bool { return strings.Contains(r.stderr.String(), "Serving on port") })
	if got, _ := udpAsk(t, port, "x"); got != hostname {
		t.Errorf("UDP = %q, want %q", got, hostname)
	}

	r = startBuiltin(t, BuiltinAgnhost, "serve-hostname", "--tcp")
	if code := r.wait(t); code != 1 {
		t.Errorf("--tcp with --http: exit %d, want 1", code)
	}
}

func TestAgnhostCommandLine(t *testing.T) {
	var stdout, stderr syncBuffer
	if code := RunBuiltin(context.Background(), BuiltinAgnhost, nil, &stdout, &stderr); code != 0 {
		t.Errorf("agnhost without subcommand: exit %d, want 0", code)
	}
	mustContain(t, "usage", stdout.String(), "netexec", "connect")
	if code := RunBuiltin(context.Background(), BuiltinAgnhost, []string{"porter"}, &stdout, &stderr); code != 1 {
		t.Errorf("agnhost porter: exit %d, want 1", code)
	}
	mustContain(t, "stderr", stderr.String(), `unknown command "porter"`)
	if code := RunBuiltin(context.Background(), BuiltinAgnhost, []string{"netexec", "--no-such-flag"}, &stdout, &stderr); code != 1 {
		t.Errorf("bad flag: exit %d, want 1", code)
	}
	if code := RunBuiltin(context.Background(), "sshd", nil, &stdout, &stderr); code != 127 {
		t.Errorf("unknown built-in: exit %d, want 127", code)
	}
}

func TestParseArgs(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	timeout := fs.Duration("timeout", 0, "")
	proto := fs.String("protocol", "tcp", "")
	rest, err := parseArgs(fs, []string{"a:1", "--timeout", "1s", "b", "--protocol=udp", "--", "--c"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a:1", "b", "--c"}; !reflect.DeepEqual(rest, want) || *timeout != time.Second || *proto != "udp" {
		t.Errorf("parseArgs = %q, timeout %v, protocol %q", rest, *timeout, *proto)
	}
}

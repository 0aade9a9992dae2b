package images

import (
	"net"
	"net/http"
	"regexp"
	"strconv"
	"testing"
)

func TestWebServers(t *testing.T) {
	for _, tc := range []struct {
		builtin, text, server string
		logLine               *regexp.Regexp
	}{
		{BuiltinHTTPD, "<h1>It works!</h1>", "Apache",
			regexp.MustCompile(`(?m)^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [-+]\d{4}\] "GET / HTTP/1\.1" 200 \d+$`)},
		{BuiltinNginx, "Welcome to nginx!", "nginx",
			regexp.MustCompile(`(?m)^127\.0\.0\.1 - - \[[^]]+\] "GET / HTTP/1\.1" 200 \d+ "-" "Go-http-client/1\.1"$`)},
	} {
		t.Run(tc.builtin, func(t *testing.T) {
			port, port2 := freePort(t, "tcp"), freePort(t, "tcp")
			r := startBuiltin(t, tc.builtin, "--port="+strconv.Itoa(port), "--port", strconv.Itoa(port2))
			waitTCP(t, r, port)
			base := "http://127.0.0.1:" + strconv.Itoa(port)

			resp, body := get(t, base+"/")
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Server") != tc.server {
				t.Errorf("GET / = %s, Server %q", resp.Status, resp.Header.Get("Server"))
			}
			mustContain(t, "GET / body", body, tc.text)
			eventually(t, "an access log line", func() bool { return tc.logLine.MatchString(r.stdout.String()) })

			if resp, _ := get(t, base+"/missing"); resp.StatusCode != http.StatusNotFound {
				t.Errorf("GET /missing = %s, want 404", resp.Status)
			}
			eventually(t, "a 404 log line", func() bool {
				return regexp.MustCompile(`"GET /missing HTTP/1\.1" 404 `).MatchString(r.stdout.String())
			})
			_, body = get(t, "http://127.0.0.1:"+strconv.Itoa(port2)+"/index.html")
			mustContain(t, "second port's /index.html", body, tc.text)
			if code := r.stop(t); code != 0 {
				t.Errorf("exit code after stop = %d, want 0", code)
			}
		})
	}
}

func TestWebServerPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	r := startBuiltin(t, BuiltinNginx, "--port="+strconv.Itoa(port))
	if code := r.wait(t); code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	mustContain(t, "stderr", r.stderr.String(), "listen on port "+strconv.Itoa(port))
}

func TestWebServerBadFlag(t *testing.T) {
	r := startBuiltin(t, BuiltinHTTPD, "--port=http")
	if code := r.wait(t); code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	mustContain(t, "stderr", r.stderr.String(), `invalid port "http"`)
}

package agentapi

import (
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestHealthzFollowsSyncs(t *testing.T) {
	now := time.Unix(1000, 0)
	h := &SyncHealth{MaxAge: 30 * time.Second, Now: func() time.Time { return now }}
	reg := prometheus.NewRegistry()
	syncs := prometheus.NewCounter(prometheus.CounterOpts{Name: "podnet_syncs_total", Help: "test"})
	reg.MustRegister(syncs)
	srv := httptest.NewServer(Handler(reg, h))
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 503 || !strings.Contains(body, "no sync yet") {
		t.Fatalf("before any sync: %d %q", code, body)
	}
	// Alive (kubelet's liveness probe) while not yet ready.
	if code, body := get("/livez"); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Fatalf("/livez before any sync: %d %q", code, body)
	}
	h.Record(errors.New("boom"))
	if code, body := get("/healthz"); code != 503 || !strings.Contains(body, "boom") {
		t.Fatalf("after a failed sync: %d %q", code, body)
	}
	h.Record(nil)
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("after a good sync: %d", code)
	}
	now = now.Add(31 * time.Second)
	if code, body := get("/healthz"); code != 503 || !strings.Contains(body, "31s ago") {
		t.Fatalf("after a stale sync: %d %q", code, body)
	}
	syncs.Inc()
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "podnet_syncs_total 1") {
		t.Fatalf("metrics: %d %q", code, body)
	}
}

// Package agentapi serves podnetd's local HTTP endpoints: /healthz, which
// answers 200 only while the agent's dataplane is in sync (its last sync
// succeeded and is recent), /livez, which answers 200 while the agent
// serves at all (kubelet's liveness probe: a restart cannot bring a
// dataplane into sync while the agent waits for its pod subnet or for an
// API server that does not answer, and would only delay it once the API
// server is back), and /metrics, the Prometheus metrics of a registry the
// caller passes in (no global registry).
package agentapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Health reports why the agent is not healthy, or nil.
type Health interface {
	Healthy() error
}

// Handler returns the endpoints' handler.
func Handler(reg *prometheus.Registry, h Health) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := h.Healthy(); err != nil {
			http.Error(w, "unhealthy: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return mux
}

// Serve serves the endpoints on addr until ctx ends.
func Serve(ctx context.Context, addr string, reg *prometheus.Registry, h Health) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s for /healthz, /livez and /metrics: %w", addr, err)
	}
	srv := &http.Server{Handler: Handler(reg, h), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// SyncHealth is a Health for a level-triggered agent: healthy once a sync
// has succeeded, and while the last success is no older than MaxAge.
type SyncHealth struct {
	MaxAge  time.Duration
	Now     func() time.Time // for tests; time.Now when nil
	mu      sync.Mutex       // Record runs in the agent's loop, Healthy in the server
	lastOK  time.Time
	lastErr error
}

// Record notes the outcome of a sync.
func (s *SyncHealth) Record(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastErr = err
	if err == nil {
		s.lastOK = s.now()
	}
}

func (s *SyncHealth) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Healthy implements Health.
func (s *SyncHealth) Healthy() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.lastOK.IsZero() && s.lastErr != nil:
		return fmt.Errorf("no successful sync yet; last error: %w", s.lastErr)
	case s.lastOK.IsZero():
		return errors.New("no sync yet")
	case s.now().Sub(s.lastOK) > s.MaxAge:
		return fmt.Errorf("last successful sync %s ago (last error: %v)", s.now().Sub(s.lastOK).Round(time.Second), s.lastErr)
	}
	return nil
}

package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// HealthService is what the health-check node port of one Service reports.
type HealthService struct {
	Namespace, Name string
	// LocalEndpoints is the number of ready endpoints on this node.
	LocalEndpoints int
}

// HealthChecks is the Proxier's view of the health-check node ports: after
// each successful sync it gets the whole set, keyed by node port.
type HealthChecks interface {
	SyncServices(map[uint16]HealthService) error
}

// healthServices collects the health checks st asks for: every
// externalTrafficPolicy: Local LoadBalancer with a healthCheckNodePort,
// counting its distinct local ready endpoints over all its ports.
func healthServices(st *State) map[uint16]HealthService {
	out := map[uint16]HealthService{}
	seen := map[uint16]map[netip.Addr]bool{}
	for _, sp := range st.Ports {
		p := sp.HealthCheckNodePort
		if p == 0 {
			continue
		}
		if seen[p] == nil {
			seen[p] = map[netip.Addr]bool{}
		}
		for _, e := range sp.Endpoints {
			if e.Local && e.Ready {
				seen[p][e.IP] = true
			}
		}
		out[p] = HealthService{Namespace: sp.Name.Namespace, Name: sp.Name.Name, LocalEndpoints: len(seen[p])}
	}
	return out
}

// HealthServerConfig configures a HealthServer.
type HealthServerConfig struct {
	// Listen opens the listener of a node port (default: TCP on every
	// address of the node, ":port").
	Listen func(port uint16) (net.Listener, error)
	// ProxyHealthy reports whether the proxy itself is healthy (default:
	// always); an unhealthy proxy answers 503 whatever the count.
	ProxyHealthy func() bool
	Log          *slog.Logger
}

// HealthServer answers load balancers' health checks for
// externalTrafficPolicy: Local Services, one HTTP listener per
// healthCheckNodePort, as kube-proxy does: JSON with the local endpoint
// count, status 200 when there is at least one, 503 when there is none, so
// the load balancer sends traffic only to nodes that can serve it.
type HealthServer struct {
	cfg HealthServerConfig

	mu        sync.Mutex
	listeners map[uint16]*healthListener
}

type healthListener struct {
	svc atomic.Pointer[HealthService]
	srv *http.Server
}

// NewHealthServer returns a HealthServer with no listener yet.
func NewHealthServer(cfg HealthServerConfig) *HealthServer {
	if cfg.Listen == nil {
		cfg.Listen = func(port uint16) (net.Listener, error) { return net.Listen("tcp", ":"+strconv.Itoa(int(port))) }
	}
	if cfg.ProxyHealthy == nil {
		cfg.ProxyHealthy = func() bool { return true }
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &HealthServer{cfg: cfg, listeners: map[uint16]*healthListener{}}
}

// SyncServices opens a listener for each new port, closes those of ports
// gone, and updates the counts. A port that cannot be opened is an error
// (and is tried again at the next sync); the others are served anyway.
func (h *HealthServer) SyncServices(services map[uint16]HealthService) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for port, l := range h.listeners {
		if _, keep := services[port]; !keep {
			_ = l.srv.Close()
			delete(h.listeners, port)
		}
	}
	var errs []error
	for port, svc := range services {
		s := svc
		l := h.listeners[port]
		if l == nil {
			ln, err := h.cfg.Listen(port)
			if err != nil {
				errs = append(errs, fmt.Errorf("listen on health-check node port %d of %s/%s: %w", port, svc.Namespace, svc.Name, err))
				continue
			}
			l = &healthListener{}
			l.svc.Store(&s) // before Serve: a request may come at once
			l.srv = &http.Server{Handler: &healthHandler{l: l, healthy: h.cfg.ProxyHealthy}, ReadHeaderTimeout: 5 * time.Second}
			h.listeners[port] = l
			go func() {
				if err := l.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
					h.cfg.Log.Warn("health-check node port stopped", "port", port, "err", err)
				}
			}()
		}
		l.svc.Store(&s)
	}
	return errors.Join(errs...)
}

// Close closes every listener.
func (h *HealthServer) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var errs []error
	for port, l := range h.listeners {
		errs = append(errs, l.srv.Close())
		delete(h.listeners, port)
	}
	return errors.Join(errs...)
}

type healthHandler struct {
	l       *healthListener
	healthy func() bool
}

type healthReply struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

func (hh *healthHandler) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	svc := hh.l.svc.Load()
	var r healthReply
	r.Service.Namespace, r.Service.Name = svc.Namespace, svc.Name
	r.LocalEndpoints, r.ServiceProxyHealthy = svc.LocalEndpoints, hh.healthy()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(r.LocalEndpoints))
	if r.LocalEndpoints > 0 && r.ServiceProxyHealthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(r)
}

package proxy

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

func TestHealthHandler(t *testing.T) {
	for _, c := range []struct {
		name    string
		count   int
		healthy bool
		status  int
	}{
		{"local endpoints", 2, true, http.StatusOK},
		{"none here", 0, true, http.StatusServiceUnavailable},
		{"proxy unhealthy", 3, false, http.StatusServiceUnavailable},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := &healthListener{}
			l.svc.Store(&HealthService{Namespace: "default", Name: "lb", LocalEndpoints: c.count})
			rec := httptest.NewRecorder()
			(&healthHandler{l: l, healthy: func() bool { return c.healthy }}).ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
			if rec.Code != c.status {
				t.Errorf("status %d, want %d", rec.Code, c.status)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if w := rec.Header().Get("X-Load-Balancing-Endpoint-Weight"); w != fmt.Sprint(c.count) {
				t.Errorf("weight header %q, want %d", w, c.count)
			}
			var r healthReply
			if err := json.Unmarshal(rec.Body.Bytes(), &r); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
			if r.Service.Namespace != "default" || r.Service.Name != "lb" || r.LocalEndpoints != c.count || r.ServiceProxyHealthy != c.healthy {
				t.Errorf("reply %+v", r)
			}
		})
	}
}

// loopbackListen opens each node port as an ephemeral port on 127.0.0.1
// (real ports may be taken on the test machine) and remembers where.
type loopbackListen struct {
	mu    sync.Mutex
	addrs map[uint16]string
}

func (l *loopbackListen) listen(port uint16) (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.addrs[port] = ln.Addr().String()
	return ln, nil
}

func (l *loopbackListen) get(t *testing.T, port uint16) (int, HealthService) {
	t.Helper()
	l.mu.Lock()
	addr := l.addrs[port]
	l.mu.Unlock()
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		return 0, HealthService{}
	}
	defer resp.Body.Close()
	var r healthReply
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatalf("health check on %d: %v", port, err)
	}
	return resp.StatusCode, HealthService{Namespace: r.Service.Namespace, Name: r.Service.Name, LocalEndpoints: r.LocalEndpoints}
}

// The Proxier tells the health server each ETP=Local LoadBalancer's local
// ready endpoints after every sync; the server answers on its node port.
func TestHealthCheckNodePorts(t *testing.T) {
	ll := &loopbackListen{addrs: map[uint16]string{}}
	hs := NewHealthServer(HealthServerConfig{Listen: ll.listen})
	defer hs.Close()
	p := New(newFake(), Config{Health: hs})
	ports := []discoveryv1.EndpointPort{esPort("http", corev1.ProtocolTCP, 8080), esPort("https", corev1.ProtocolTCP, 8443)}
	svcs := []*corev1.Service{
		service("default", "lb", "10.96.0.70", []corev1.ServicePort{tcp("http", 80), tcp("https", 443)}, nodePorts(30070, 30071), loadBalancer("198.51.100.9"), etpLocal(32070)),
		service("default", "cluster-lb", "10.96.0.71", []corev1.ServicePort{tcp("http", 80)}, nodePorts(30072), loadBalancer("198.51.100.10")),
	}
	withEndpoints := func(eps ...discoveryv1.Endpoint) []*discoveryv1.EndpointSlice {
		return []*discoveryv1.EndpointSlice{epSlice("default", "lb", "lb-1", ports, eps...)}
	}
	// Two pods here (counted once each, whatever the number of ports), one
	// elsewhere, one here terminating (not counted: the node drains).
	syncState(t, p, labNode, svcs, withEndpoints(endpointOn("10.244.1.5", "node-1"), endpointOn("10.244.1.6", "node-1"),
		endpointOn("10.244.2.7", "node-2"), endpointOn("10.244.1.8", "node-1", terminating)))
	if len(ll.addrs) != 1 {
		t.Fatalf("listening on %v, want only the ETP=Local Service's health-check node port", ll.addrs)
	}
	if code, svc := ll.get(t, 32070); code != 200 || svc != (HealthService{"default", "lb", 2}) {
		t.Errorf("with two local endpoints: %d %+v", code, svc)
	}
	syncState(t, p, labNode, svcs, withEndpoints(endpointOn("10.244.2.7", "node-2")))
	if code, svc := ll.get(t, 32070); code != 503 || svc.LocalEndpoints != 0 {
		t.Errorf("with no local endpoint: %d %+v", code, svc)
	}
	syncState(t, p, labNode, svcs[1:], nil) // the Service is gone: so is its listener
	if code, _ := ll.get(t, 32070); code != 0 {
		t.Errorf("the health-check port still answers (%d) after its Service went", code)
	}
}

func TestHealthServerListenFailure(t *testing.T) {
	hs := NewHealthServer(HealthServerConfig{Listen: func(port uint16) (net.Listener, error) {
		if port == 1 {
			return nil, fmt.Errorf("address already in use")
		}
		return net.Listen("tcp", "127.0.0.1:0")
	}})
	defer hs.Close()
	err := hs.SyncServices(map[uint16]HealthService{1: {"a", "b", 1}, 2: {"c", "d", 1}})
	if err == nil || len(hs.listeners) != 1 {
		t.Errorf("err %v, %d listeners", err, len(hs.listeners))
	}
	t.Logf("error: %v", err)
}

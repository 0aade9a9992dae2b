// Package announce is the handshake that makes podnetd's per-pod rules
// hold from a pod's first packet: the CNI plugin, on ADD, tells podnetd on
// the same node the new pod's name, addresses and host interface over a
// unix socket, and returns only once podnetd answers that the pod's rules
// are in the kernel — its anti-spoofing entry (package antispoof: until
// then its veth can send nothing) and its NetworkPolicy. The pod's
// containers start after ADD returns, so they never send or receive a
// packet the rules forbid; the API server learns the pod's IP only later
// (kubelet's status update), which is why waiting for the Pod informer
// alone would be too late.
//
// A pod that no policy selects waits only for its anti-spoofing entry. If
// podnetd does not answer (it is restarting, say), ADD fails and the
// runtime retries it: the pod waits, closed, rather than start unpoliced.
package announce

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"
)

// DefaultSocket is where podnetd listens (a hostPath in its DaemonSet).
const DefaultSocket = "/run/podnet/podnetd.sock"

// Pod is one announcement: a pod on this node, its addresses and the host
// end of its veth. Namespace and Name are empty for a container that is
// not a Kubernetes pod (no K8S_POD_* in CNI_ARGS): it has no policy, only
// its anti-spoofing entry.
type Pod struct {
	Namespace string   `json:"namespace,omitempty"`
	Name      string   `json:"name,omitempty"`
	IPs       []string `json:"ips"`
	HostIf    string   `json:"hostInterface,omitempty"`
}

// Check says what is wrong with p, or nil.
func (p Pod) Check() error {
	if (p.Namespace == "") != (p.Name == "") {
		return errors.New("namespace and name go together")
	}
	if len(p.IPs) == 0 {
		return errors.New("no address")
	}
	if p.HostIf != "" && (len(p.HostIf) > 15 || strings.ContainsAny(p.HostIf, "/ \t\n\x00")) {
		return fmt.Errorf("host interface %q: not an interface name", p.HostIf)
	}
	for _, ip := range p.IPs {
		if _, err := netip.ParseAddr(ip); err != nil {
			return fmt.Errorf("address %q: %w", ip, err)
		}
	}
	return nil
}

// String names the pod ("pod ns/name", or its addresses).
func (p Pod) String() string {
	if p.Name == "" {
		return fmt.Sprintf("container at %v", p.IPs)
	}
	return "pod " + p.Namespace + "/" + p.Name
}

// Reply is podnetd's answer.
type Reply struct {
	// Isolated says whether some policy selects the pod (its rules are
	// in place); false: no policy selects it, nothing to wait for.
	Isolated bool `json:"isolated"`
	// Error says why podnetd could not program the pod.
	Error string `json:"error,omitempty"`
}

// Path is the HTTP path of an announcement.
const Path = "/v1/pods"

// Send announces p to the podnetd listening on socket and waits for its
// answer, at most until ctx ends.
func Send(ctx context.Context, socket string, p Pod) (Reply, error) {
	var r Reply
	body, err := json.Marshal(p)
	if err != nil {
		return r, err
	}
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://podnetd"+Path, bytes.NewReader(body))
	if err != nil {
		return r, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return r, fmt.Errorf("announce %s to podnetd at %s: %w", p, socket, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("announce %s to podnetd at %s: %s: %q", p, socket, resp.Status, b)
	}
	if resp.StatusCode != http.StatusOK {
		return r, fmt.Errorf("podnetd at %s could not program %s: %s", socket, p, r.Error)
	}
	return r, nil
}

// Handler serves announcements: program is called for each valid one and
// answers whether the pod is isolated, once its policy is in the kernel.
func Handler(program func(ctx context.Context, p Pod) (isolated bool, err error)) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+Path, func(w http.ResponseWriter, req *http.Request) {
		var p Pod
		reply := func(code int, r Reply) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			_ = json.NewEncoder(w).Encode(r)
		}
		if err := json.NewDecoder(io.LimitReader(req.Body, 64<<10)).Decode(&p); err != nil {
			reply(http.StatusBadRequest, Reply{Error: "not an announcement: " + err.Error()})
			return
		}
		if err := p.Check(); err != nil {
			reply(http.StatusBadRequest, Reply{Error: err.Error()})
			return
		}
		isolated, err := program(req.Context(), p)
		if err != nil {
			reply(http.StatusServiceUnavailable, Reply{Error: err.Error()})
			return
		}
		reply(http.StatusOK, Reply{Isolated: isolated})
	})
	return mux
}

// Listen opens the socket (replacing a stale one a crashed podnetd left)
// and serves h on it until ctx ends.
func Listen(ctx context.Context, socket string, h http.Handler) error {
	if err := removeStale(socket); err != nil {
		return err
	}
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", socket, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", socket, err)
	}
	return nil
}

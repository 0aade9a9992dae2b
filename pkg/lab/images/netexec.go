package images

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// netexec is agnhost netexec: an HTTP server with test endpoints and a UDP
// server answering "hostname", "echo MSG", "clientip" and "serverport".
type netexec struct {
	log         *log.Logger
	httpPort    int
	ready       atomic.Bool      // a UDP server is up (or UDP is disabled)
	terminating chan struct{}    // closed when told to stop: /readyz says 503
	exit        chan exitRequest // from /exit and /shutdown
	fatal       chan error       // a server failed
}

type exitRequest struct {
	code    int
	timeout time.Duration // 0: stop at once, without a graceful shutdown
}

func runNetexec(ctx context.Context, args []string, logger *log.Logger, stderr io.Writer) int {
	fs := newFlagSet("netexec", stderr)
	httpPort := fs.Int("http-port", 8080, "HTTP Listen Port")
	udpPort := fs.Int("udp-port", 8081, "UDP Listen Port (-1 disables UDP)")
	sctpPort := fs.Int("sctp-port", -1, "SCTP Listen Port (SCTP is not supported by the podnet lab)")
	certFile := fs.String("tls-cert-file", "", "File containing an x509 certificate for HTTPS")
	keyFile := fs.String("tls-private-key-file", "", "File containing an x509 private key matching --tls-cert-file")
	override := fs.String("http-override", "", "Override the HTTP handler to always respond as if it were a GET with this path & params")
	udpAddresses := fs.String("udp-listen-addresses", "", "A comma separated list of ip addresses the udp servers listen from")
	delayShutdown := fs.Int("delay-shutdown", 0, "Number of seconds to delay shutdown when receiving SIGTERM.")
	if code, ok := parseNoArgs(fs, args, stderr); !ok {
		return code
	}

	n := &netexec{
		log:         logger,
		httpPort:    *httpPort,
		terminating: make(chan struct{}),
		exit:        make(chan exitRequest, 1),
		fatal:       make(chan error, 1),
	}
	if *sctpPort != -1 {
		logger.Printf("SCTP is not supported by the podnet lab: not serving SCTP on port %d", *sctpPort)
	}

	if *udpPort == -1 {
		n.ready.Store(true)
	} else {
		conns, err := listenUDP(*udpAddresses, *udpPort)
		if err != nil {
			logger.Printf("Error occurred: %v", err)
			return 1
		}
		for _, c := range conns {
			defer c.Close()
			go n.serveUDP(c, *udpPort)
		}
	}

	ln, err := net.Listen("tcp", ":"+strconv.Itoa(*httpPort))
	if err != nil {
		logger.Printf("listen on HTTP port %d: %v", *httpPort, err)
		return 1
	}
	srv := &http.Server{Handler: n.handler(*override), ErrorLog: logger, ReadHeaderTimeout: 30 * time.Second}
	logger.Printf("Started HTTP server on port %d", *httpPort)
	go func() {
		var err error
		if *certFile != "" {
			err = srv.ServeTLS(ln, *certFile, *keyFile)
		} else {
			err = srv.Serve(ln)
		}
		if !errors.Is(err, http.ErrServerClosed) {
			n.fail(fmt.Errorf("serve HTTP: %w", err))
		}
	}()

	select {
	case <-ctx.Done():
		close(n.terminating)
		if *delayShutdown > 0 {
			logger.Printf("Sleeping %d seconds before terminating...", *delayShutdown)
			time.Sleep(time.Duration(*delayShutdown) * time.Second)
		}
		srv.Close()
		return 0
	case req := <-n.exit:
		if req.timeout == 0 {
			srv.Close()
			return req.code
		}
		sctx, cancel := context.WithTimeout(context.Background(), req.timeout)
		defer cancel()
		logger.Printf("Graceful shutdown completed with: %v", srv.Shutdown(sctx))
		return req.code
	case err := <-n.fatal:
		logger.Printf("Error occurred: %v", err)
		srv.Close()
		return 1
	}
}

func (n *netexec) fail(err error) {
	select {
	case n.fatal <- err:
	default:
	}
}

// listenUDP opens the UDP sockets: one on every address, or one per address
// of the comma-separated list.
func listenUDP(addresses string, port int) ([]*net.UDPConn, error) {
	ips := []net.IP{nil}
	if addresses != "" {
		ips = nil
		seen := map[netip.Addr]bool{}
		for _, s := range strings.Split(addresses, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(s))
			if err != nil {
				return nil, fmt.Errorf("parseAddress: invalid address %s", s)
			}
			if !seen[a] {
				seen[a] = true
				ips = append(ips, a.AsSlice())
			}
		}
	}
	var conns []*net.UDPConn
	for _, ip := range ips {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip, Port: port})
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, fmt.Errorf("failed to create listener for UDP port %d: %w", port, err)
		}
		conns = append(conns, c)
	}
	return conns, nil
}

// serveUDP answers agnhost's UDP commands until conn is closed. Like agnhost,
// it lower-cases what it receives, so "echo Hi" answers "hi".
func (n *netexec) serveUDP(conn *net.UDPConn, port int) {
	n.log.Printf("Started UDP server on %s", conn.LocalAddr())
	n.ready.Store(true)
	defer n.log.Printf("UDP server exited")
	buf := make([]byte, 2048)
	for {
		size, client, err := conn.ReadFromUDP(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				n.ready.Store(false)
				n.fail(fmt.Errorf("failed accepting UDP connections: %w", err))
			}
			return
		}
		text := strings.ToLower(strings.TrimSpace(string(buf[:size])))
		var resp string
		switch {
		case text == "hostname":
			n.log.Println("Sending udp hostName response")
			resp = n.hostname()
		case strings.HasPrefix(text, "echo "):
			resp = strings.SplitN(text, " ", 2)[1]
			n.log.Printf("Echoing %v to UDP client %s", resp, client)
		case text == "clientip":
			n.log.Printf("Sending clientip back to UDP client %s", client)
			resp = client.String()
		case text == "serverport":
			n.log.Printf("Sending server port to UDP client %s", client)
			resp = strconv.Itoa(port)
		default:
			if text != "" {
				n.log.Printf("Unknown UDP command received from %s: %v", client, text)
			}
			continue
		}
		if _, err := conn.WriteToUDP([]byte(resp), client); err != nil {
			n.log.Printf("write to UDP client %s: %v", client, err)
		}
	}
}

func (n *netexec) hostname() string {
	h, err := os.Hostname()
	if err != nil {
		n.log.Printf("get hostname: %v", err)
	}
	return h
}

// handler routes netexec's HTTP endpoints. With override, every request is
// served as a GET of that path and query.
func (n *netexec) handler(override string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		n.log.Printf("GET /")
		fmt.Fprintf(w, "NOW: %v", time.Now())
	})
	mux.HandleFunc("/clientip", func(w http.ResponseWriter, r *http.Request) {
		n.log.Printf("GET /clientip")
		io.WriteString(w, r.RemoteAddr)
	})
	mux.HandleFunc("/serverport", func(w http.ResponseWriter, r *http.Request) {
		n.log.Printf("GET /serverport")
		io.WriteString(w, strconv.Itoa(n.httpPort))
	})
	hostname := func(w http.ResponseWriter, r *http.Request) {
		n.log.Printf("GET %s", r.URL.Path)
		io.WriteString(w, n.hostname())
	}
	mux.HandleFunc("/hostname", hostname)
	mux.HandleFunc("/hostName", hostname)
	mux.HandleFunc("/echo", n.echo)
	mux.HandleFunc("/header", n.header)
	mux.HandleFunc("/redirect", n.redirect)
	mux.HandleFunc("/dial", n.dialHandler)
	mux.HandleFunc("/exit", n.exitHandler)
	mux.HandleFunc("/shutdown", func(w http.ResponseWriter, r *http.Request) {
		n.log.Printf("GET /shutdown")
		n.requestExit(exitRequest{})
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		n.log.Printf("GET /healthz")
		if !n.ready.Load() {
			w.WriteHeader(http.StatusPreconditionFailed)
		}
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		n.log.Printf("GET /readyz")
		select {
		case <-n.terminating:
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "shutting down")
		default:
			if !n.ready.Load() {
				w.WriteHeader(http.StatusPreconditionFailed)
				return
			}
			io.WriteString(w, "ok")
		}
	})
	unsupported := func(w http.ResponseWriter, r *http.Request) {
		n.log.Printf("GET %s (not supported by the podnet lab)", r.URL.Path)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotImplemented)
		json.NewEncoder(w).Encode(map[string]string{
			"error": r.URL.Path + " is not supported by the podnet lab's built-in agnhost"})
	}
	mux.HandleFunc("/shell", unsupported)
	mux.HandleFunc("/upload", unsupported)
	if override == "" {
		return mux
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, override, nil)
		if err != nil {
			http.Error(w, fmt.Sprintf("override request failed: %v", err), http.StatusInternalServerError)
			return
		}
		req.RemoteAddr, req.Header = r.RemoteAddr, r.Header
		mux.ServeHTTP(w, req)
	})
}

func (n *netexec) echo(w http.ResponseWriter, r *http.Request) {
	msg, codeString := r.FormValue("msg"), r.FormValue("code")
	n.log.Printf("GET /echo?msg=%s&code=%s", msg, codeString)
	if codeString != "" {
		code, err := strconv.Atoi(codeString)
		if err != nil || code < 100 || code > 999 {
			fmt.Fprintf(w, "argument 'code' must be an integer or empty, got %q\n", codeString)
			return
		}
		w.WriteHeader(code)
	}
	io.WriteString(w, msg)
}

func (n *netexec) header(w http.ResponseWriter, r *http.Request) {
	if key := r.FormValue("key"); key != "" {
		n.log.Printf("GET /header?key=%s", key)
		io.WriteString(w, r.Header.Get(key))
		return
	}
	n.log.Printf("GET /header")
	data, err := json.Marshal(r.Header)
	if err != nil {
		fmt.Fprintf(w, "error marshalling header, err: %v", err)
		return
	}
	w.Write(data)
}

func (n *netexec) redirect(w http.ResponseWriter, r *http.Request) {
	location, codeString := r.FormValue("location"), r.FormValue("code")
	n.log.Printf("%s /redirect?msg=%s&code=%s", r.Method, location, codeString)
	code := http.StatusFound
	if codeString != "" {
		var err error
		if code, err = strconv.Atoi(codeString); err != nil || code < 100 || code > 999 {
			fmt.Fprintf(w, "argument 'code' must be an integer or empty, got %q\n", codeString)
			return
		}
	}
	http.Redirect(w, r, location, code)
}

// exitHandler stops netexec with the given code, after "wait" and with a
// graceful shutdown of at most "timeout" (none when 0: the server stops at
// once and the caller may see its connection closed).
func (n *netexec) exitHandler(w http.ResponseWriter, r *http.Request) {
	waitString, timeoutString, codeString := r.FormValue("wait"), r.FormValue("timeout"), r.FormValue("code")
	n.log.Printf("GET /exit?code=%s&timeout=%s&wait=%s", codeString, timeoutString, waitString)
	var req exitRequest
	var wait time.Duration
	var err error
	if timeoutString != "" {
		if req.timeout, err = time.ParseDuration(timeoutString); err != nil {
			fmt.Fprintf(w, "argument 'timeout' must be a valid golang duration or empty, got %q\n", timeoutString)
			return
		}
	}
	if waitString != "" {
		if wait, err = time.ParseDuration(waitString); err != nil {
			fmt.Fprintf(w, "argument 'wait' must be a valid golang duration or empty, got %q\n", waitString)
			return
		}
	}
	if codeString != "" {
		if req.code, err = strconv.Atoi(codeString); err != nil {
			fmt.Fprintf(w, "argument 'code' must be an integer [0-127] or empty, got %q\n", codeString)
			return
		}
	}
	n.log.Printf("Will begin shutdown in %s, allowing %s for connections to close, then will exit with %d",
		wait, req.timeout, req.code)
	time.Sleep(wait)
	n.requestExit(req)
}

func (n *netexec) requestExit(req exitRequest) {
	select {
	case n.exit <- req:
	default: // already exiting
	}
}

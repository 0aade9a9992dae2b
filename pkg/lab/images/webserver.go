package images

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// site is what distinguishes the nginx and httpd built-ins: their pages,
// Server header and access log format.
type site struct {
	name     string
	server   string // Server response header
	index    string // the default page at /
	notFound string
	notAllow string
	// accessLog formats one access log line (without newline).
	accessLog func(r *http.Request, status, bytes int, now time.Time) string
}

// nginxSite answers like the nginx image with its default configuration.
var nginxSite = site{
	name:   BuiltinNginx,
	server: "nginx",
	index: `<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
<style>
html { color-scheme: light dark; }
body { width: 35em; margin: 0 auto;
font-family: Tahoma, Verdana, Arial, sans-serif; }
</style>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and
working. Further configuration is required.</p>

<p>For online documentation and support please refer to
<a href="http://nginx.org/">nginx.org</a>.<br/>
Commercial support is available at
<a href="http://nginx.com/">nginx.com</a>.</p>

<p><em>Thank you for using nginx.</em></p>
</body>
</html>
`,
	notFound:  nginxError("404 Not Found"),
	notAllow:  nginxError("405 Not Allowed"),
	accessLog: combinedLog,
}

// httpdSite answers like the httpd (Apache) image with its default
// configuration.
var httpdSite = site{
	name:   BuiltinHTTPD,
	server: "Apache",
	index:  "<html><body><h1>It works!</h1></body></html>\n",
	notFound: apacheError("404 Not Found", "Not Found",
		"The requested URL was not found on this server."),
	notAllow: apacheError("405 Method Not Allowed", "Method Not Allowed",
		"The requested method is not allowed for this URL."),
	accessLog: commonLog,
}

func nginxError(title string) string {
	return "<html>\r\n<head><title>" + title + "</title></head>\r\n<body>\r\n<center><h1>" + title +
		"</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
}

func apacheError(title, heading, text string) string {
	return "<!DOCTYPE HTML PUBLIC \"-//IETF//DTD HTML 2.0//EN\">\n<html><head>\n<title>" + title +
		"</title>\n</head><body>\n<h1>" + heading + "</h1>\n<p>" + text + "</p>\n</body></html>\n"
}

// runWebServer serves s on every --port until ctx is done.
func runWebServer(ctx context.Context, s site, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet(s.name, stderr)
	var ports portList
	fs.Var(&ports, "port", "TCP port to serve HTTP on (repeatable)")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return flagExit(err)
	}
	if len(rest) > 0 {
		fmt.Fprintf(stderr, "%s: unexpected arguments %q\n", s.name, rest)
		return 1
	}
	if len(ports) == 0 {
		ports = portList{DefaultHTTPPort}
	}

	var listeners []net.Listener
	closeAll := func() {
		for _, ln := range listeners {
			ln.Close()
		}
	}
	for _, port := range ports {
		ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
		if err != nil {
			closeAll()
			fmt.Fprintf(stderr, "%s: listen on port %d: %v\n", s.name, port, err)
			return 1
		}
		listeners = append(listeners, ln)
	}

	srv := &http.Server{
		Handler:           s.handler(stdout),
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          log.New(stderr, s.name+": ", log.LstdFlags),
	}
	errs := make(chan error, len(listeners))
	for _, ln := range listeners {
		go func() { errs <- srv.Serve(ln) }()
	}
	fmt.Fprintf(stderr, "podnet lab: built-in %s serving HTTP on port %s\n", s.name, joinPorts(ports))

	select {
	case <-ctx.Done():
		shutdown(srv)
		return 0
	case err := <-errs:
		srv.Close()
		fmt.Fprintf(stderr, "%s: serve: %v\n", s.name, err)
		return 1
	}
}

// shutdown stops srv, giving requests in flight a moment to finish.
func shutdown(srv *http.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if srv.Shutdown(ctx) != nil {
		srv.Close()
	}
}

func joinPorts(ports []int) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(p)
	}
	return strings.Join(s, ", ")
}

// handler serves the site's pages and writes one access log line per request.
func (s site) handler(access io.Writer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &recorder{ResponseWriter: w, status: http.StatusOK}
		s.serve(rec, r)
		fmt.Fprintln(access, s.accessLog(r, rec.status, rec.bytes, time.Now()))
	})
}

func (s site) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Server", s.server)
	status, body := http.StatusOK, s.index
	switch {
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		status, body = http.StatusMethodNotAllowed, s.notAllow
	case r.URL.Path != "/" && r.URL.Path != "/index.html":
		status, body = http.StatusNotFound, s.notFound
	}
	w.Header().Set("Content-Type", "text/html")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		io.WriteString(w, body)
	}
}

// recorder remembers the status and body size of a response for the log.
type recorder struct {
	http.ResponseWriter
	status, bytes int
}

func (r *recorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	n, err := r.ResponseWriter.Write(p)
	r.bytes += n
	return n, err
}

const logTime = "02/Jan/2006:15:04:05 -0700"

// commonLog is Apache's "common" format: %h %l %u %t "%r" %>s %b.
func commonLog(r *http.Request, status, bytes int, now time.Time) string {
	size := "-"
	if bytes > 0 {
		size = strconv.Itoa(bytes)
	}
	return fmt.Sprintf("%s - - [%s] \"%s\" %d %s", remoteHost(r), now.Format(logTime), requestLine(r), status, size)
}

// combinedLog is nginx's default "combined" format.
func combinedLog(r *http.Request, status, bytes int, now time.Time) string {
	return fmt.Sprintf("%s - - [%s] \"%s\" %d %d \"%s\" \"%s\"", remoteHost(r), now.Format(logTime),
		requestLine(r), status, bytes, logField(r.Referer()), logField(r.UserAgent()))
}

func requestLine(r *http.Request) string {
	return logField(r.Method + " " + r.RequestURI + " " + r.Proto)
}

// logField escapes quotes as nginx does, and stands "-" for empty.
func logField(s string) string {
	if s == "" {
		return "-"
	}
	return strings.ReplaceAll(s, `"`, `\x22`)
}

func remoteHost(r *http.Request) string {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}

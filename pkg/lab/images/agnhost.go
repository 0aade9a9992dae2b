package images

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// agnhostSubcommands lists the agnhost subcommands the lab implements.
const agnhostSubcommands = "netexec, connect, pause or serve-hostname"

func agnhostSupports(sub string) bool {
	switch sub {
	case "netexec", "connect", "pause", "serve-hostname":
		return true
	}
	return false
}

// runAgnhost runs an agnhost subcommand. As with agnhost's command line, the
// subcommand is the first argument that is not a flag.
func runAgnhost(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	sub, rest := "", args
	for i, a := range args {
		if !strings.HasPrefix(a, "-") {
			sub, rest = a, concat(args[:i], args[i+1:])
			break
		}
	}
	logger := log.New(stderr, "", log.LstdFlags)
	switch sub {
	case "":
		fmt.Fprintf(stdout, "agnhost (podnet lab built-in subset)\n\nUsage:\n  agnhost [command]\n\n"+
			"Available commands: %s\n", agnhostSubcommands)
		return 0
	case "netexec":
		return runNetexec(ctx, rest, logger, stderr)
	case "connect":
		return runConnect(ctx, rest, stderr)
	case "pause":
		return runAgnhostPause(ctx, rest, stdout, stderr)
	case "serve-hostname":
		return runServeHostname(ctx, rest, logger, stderr)
	}
	fmt.Fprintf(stderr, "Error: unknown command %q for \"agnhost\" (the podnet lab's agnhost has %s)\n",
		sub, agnhostSubcommands)
	return 1
}

// runAgnhostPause is agnhost pause: it blocks until stopped. Unlike agnhost,
// which exits 1 on SIGINT and 2 on SIGTERM, it exits 0, as the pause image
// does, and writes no termination-log file.
func runAgnhostPause(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("pause", stderr)
	if code, ok := parseNoArgs(fs, args, stderr); !ok {
		return code
	}
	fmt.Fprintln(stdout, "Paused")
	fmt.Fprintln(stdout, "Signals registered")
	<-ctx.Done()
	fmt.Fprintf(stdout, "exiting because of signal %q\n", stopReason(ctx))
	return 0
}

// runConnect is agnhost connect: it tries one connection to HOST:PORT and
// reports failures on stderr with agnhost's fixed prefixes (UNKNOWN, TIMEOUT,
// DNS, REFUSED, OTHER), exiting 1; success exits 0 silently.
func runConnect(ctx context.Context, args []string, stderr io.Writer) int {
	fs := newFlagSet("connect", stderr)
	timeout := fs.Duration("timeout", 0, "Maximum time before returning an error")
	protocol := fs.String("protocol", "tcp", "The protocol to use to perform the connection, can be tcp or udp")
	udpData := fs.String("udp-data", "hostname", "The UDP payload send to the server")
	fs.String("sctp-data", "hostname", "The SCTP payload send to the server (SCTP is not supported)")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return flagExit(err)
	}
	if len(rest) != 1 {
		fmt.Fprintf(stderr, "Error: accepts 1 arg(s), received %d\n", len(rest))
		return 1
	}
	dest := rest[0]
	switch *protocol {
	case "", "tcp":
		return connectTCP(ctx, dest, *timeout, stderr)
	case "udp":
		return connectUDP(ctx, dest, *timeout, *udpData, stderr)
	case "sctp":
		fmt.Fprintln(stderr, "OTHER: SCTP is not supported by the podnet lab")
		return 1
	}
	fmt.Fprintf(stderr, "Unsupported protocol %s\n", *protocol)
	return 1
}

func connectTCP(ctx context.Context, dest string, timeout time.Duration, stderr io.Writer) int {
	if _, _, err := net.SplitHostPort(dest); err != nil {
		fmt.Fprintf(stderr, "UNKNOWN: %v\n", err)
		return 1
	}
	if _, err := net.ResolveTCPAddr("tcp", dest); err != nil {
		fmt.Fprintf(stderr, "DNS: %v\n", err)
		return 1
	}
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", dest)
	if err == nil {
		conn.Close()
		return 0
	}
	var nerr net.Error
	switch {
	case errors.As(err, &nerr) && nerr.Timeout():
		fmt.Fprintln(stderr, "TIMEOUT")
	case errors.Is(err, syscall.ECONNREFUSED):
		fmt.Fprintln(stderr, "REFUSED")
	default:
		fmt.Fprintf(stderr, "OTHER: %v\n", err)
	}
	return 1
}

func connectUDP(ctx context.Context, dest string, timeout time.Duration, data string, stderr io.Writer) int {
	if _, err := net.ResolveUDPAddr("udp", dest); err != nil {
		fmt.Fprintf(stderr, "DNS: %v\n", err)
		return 1
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", dest)
	if err != nil {
		fmt.Fprintf(stderr, "OTHER: %v\n", err)
		return 1
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	if timeout > 0 {
		if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
			fmt.Fprintf(stderr, "OTHER: %v\n", err)
			return 1
		}
	}
	if _, err := conn.Write([]byte(data + "\n")); err != nil {
		return udpFailure(err, stderr)
	}
	buf := make([]byte, 1024)
	n, err := conn.Read(buf)
	if err != nil {
		return udpFailure(err, stderr)
	}
	if n == 0 {
		fmt.Fprintln(stderr, "OTHER: No data received from the server. Cannot guarantee the server received the request.")
		return 1
	}
	return 0
}

func udpFailure(err error, stderr io.Writer) int {
	var nerr net.Error
	switch {
	case errors.As(err, &nerr) && nerr.Timeout():
		fmt.Fprintf(stderr, "TIMEOUT: %v\n", err)
	case strings.Contains(err.Error(), "connection refused"):
		fmt.Fprintf(stderr, "REFUSED: %v\n", err)
	default:
		fmt.Fprintf(stderr, "UNKNOWN: %v\n", err)
	}
	return 1
}

// runServeHostname is agnhost serve-hostname: it answers every HTTP request
// (or, with --tcp/--udp, every connection or datagram) with the hostname.
func runServeHostname(ctx context.Context, args []string, logger *log.Logger, stderr io.Writer) int {
	fs := newFlagSet("serve-hostname", stderr)
	doTCP := fs.Bool("tcp", false, "Serve raw over TCP.")
	doUDP := fs.Bool("udp", false, "Serve raw over UDP.")
	doHTTP := fs.Bool("http", true, "Serve HTTP.")
	doClose := fs.Bool("close", false, "Close connection per each HTTP request.")
	port := fs.Int("port", 9376, "Port number.")
	if code, ok := parseNoArgs(fs, args, stderr); !ok {
		return code
	}
	if *doHTTP && (*doTCP || *doUDP) {
		logger.Print("Can't server TCP/UDP mode and HTTP mode at the same time")
		return 1
	}
	hostname, err := os.Hostname()
	if err != nil {
		logger.Printf("Error from os.Hostname(): %s", err)
		return 1
	}
	addr := ":" + strconv.Itoa(*port)
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	if *doTCP {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			logger.Printf("Error from net.Listen(): %s", err)
			return 1
		}
		closers = append(closers, ln)
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				logger.Printf("TCP request from %s", conn.RemoteAddr())
				conn.Write([]byte(hostname))
				conn.Close()
			}
		}()
	}
	if *doUDP {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			logger.Printf("Error from ListenUDP(): %s", err)
			return 1
		}
		closers = append(closers, pc)
		go func() {
			buf := make([]byte, 16)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				logger.Printf("UDP request from %s", from)
				pc.WriteTo([]byte(hostname), from)
			}
		}()
	}
	if *doHTTP {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			logger.Printf("Error from net.Listen(): %s", err)
			return 1
		}
		srv := &http.Server{ReadHeaderTimeout: 30 * time.Second, ErrorLog: logger,
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				logger.Printf("HTTP request from %s", r.RemoteAddr)
				if *doClose {
					w.Header().Add("Connection", "close")
				}
				io.WriteString(w, hostname)
			})}
		closers = append(closers, srv)
		go srv.Serve(ln)
	}
	logger.Printf("Serving on port %d.", *port)
	<-ctx.Done()
	logger.Printf("Shutting down after receiving signal: %s.", stopReason(ctx))
	return 0
}

package main

// The TCP request/response latency test: this program, re-executed inside
// a namespace with `ip netns exec`, as an echo server or as a client. Both
// use blocking sockets on a locked OS thread (as netperf's TCP_RR does), so
// a reply wakes the waiting thread directly and the Go scheduler's network
// poller adds nothing to the round trip.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// rrCommand is the hidden first argument that selects the latency test.
const rrCommand = "__rr"

// rrReady is what the server prints once it listens.
const rrReady = "rr listening"

// rrResult is what a client prints: the round trips' percentiles.
type rrResult struct {
	N   int           `json:"n"`
	P50 time.Duration `json:"p50_ns"`
	P99 time.Duration `json:"p99_ns"`
	Avg time.Duration `json:"avg_ns"`
}

// rrMain runs `__rr server <port>` or `__rr client <ip> <port> <size>
// <warmup> <n>`.
func rrMain(args []string) int {
	var err error
	switch {
	case len(args) == 2 && args[0] == "server":
		err = rrServe(args[1])
	case len(args) == 6 && args[0] == "client":
		err = rrClientMain(args[1:])
	default:
		err = fmt.Errorf("usage: %s server <port> | %s client <ip> <port> <size> <warmup> <n>", rrCommand, rrCommand)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/net rr:", err)
		return 1
	}
	return 0
}

// rrServe echoes what every connection sends, one connection per locked
// thread, until killed.
func rrServe(portArg string) error {
	port, err := strconv.Atoi(portArg)
	if err != nil {
		return fmt.Errorf("port %q: %w", portArg, err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fmt.Errorf("set SO_REUSEADDR: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port}); err != nil {
		return fmt.Errorf("bind port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		return fmt.Errorf("listen on port %d: %w", port, err)
	}
	fmt.Println(rrReady)
	for {
		c, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
			continue
		}
		if err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		go echo(c)
	}
}

// echo sends back every byte it reads until the peer closes.
func echo(fd int) {
	runtime.LockOSThread()
	defer unix.Close(fd)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	buf := make([]byte, 65536)
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n == 0 {
			return
		}
		if err := writeAll(fd, buf[:n]); err != nil {
			return
		}
	}
}

func rrClientMain(args []string) error {
	ip, err := parseIPv4(args[0])
	if err != nil {
		return err
	}
	var num [4]int
	for i, a := range args[1:] {
		if num[i], err = strconv.Atoi(a); err != nil {
			return fmt.Errorf("argument %q: %w", a, err)
		}
	}
	res, err := rrClient(ip, num[0], num[1], num[2], num[3])
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func parseIPv4(s string) ([4]byte, error) {
	var a [4]byte
	if _, err := fmt.Sscanf(s, "%d.%d.%d.%d", &a[0], &a[1], &a[2], &a[3]); err != nil {
		return a, fmt.Errorf("IPv4 address %q: %w", s, err)
	}
	return a, nil
}

// rrClient connects, runs warmup untimed round trips of size bytes, then
// n timed ones.
func rrClient(ip [4]byte, port, size, warmup, n int) (rrResult, error) {
	runtime.LockOSThread()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return rrResult{}, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return rrResult{}, fmt.Errorf("set TCP_NODELAY: %w", err)
	}
	// A send timeout and a receive timeout: a path that stops carrying
	// packets fails the run instead of hanging it.
	tv := unix.Timeval{Sec: 5}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: ip, Port: port}); err != nil {
		return rrResult{}, fmt.Errorf("connect to %d.%d.%d.%d:%d: %w", ip[0], ip[1], ip[2], ip[3], port, err)
	}
	req, resp := make([]byte, size), make([]byte, size)
	lat := make([]time.Duration, n)
	for i := -warmup; i < n; i++ {
		t0 := time.Now()
		if err := writeAll(fd, req); err != nil {
			return rrResult{}, fmt.Errorf("round trip %d: send: %w", i+warmup, err)
		}
		if err := readFull(fd, resp); err != nil {
			return rrResult{}, fmt.Errorf("round trip %d: receive: %w", i+warmup, err)
		}
		if i >= 0 {
			lat[i] = time.Since(t0)
		}
	}
	return summarizeRR(lat), nil
}

func summarizeRR(lat []time.Duration) rrResult {
	slices.Sort(lat)
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	return rrResult{N: len(lat), P50: pctDur(lat, 50), P99: pctDur(lat, 99), Avg: sum / time.Duration(max(1, len(lat)))}
}

// pctDur is the nearest-rank percentile p of sorted durations.
func pctDur(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p/100*float64(len(sorted))+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func readFull(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Read(fd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("connection closed by the server")
		}
		b = b[n:]
	}
	return nil
}

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// probeCommand is how the benchmark re-executes itself inside node-1's
// namespace to connect as a client there.
const probeCommand = "probe"

// probeMain is the client:
//
//	probe latency ADDR N   N connects to ADDR; prints p50 and p99 in ns
//	probe until ADDR       prints "ready" once ADDR refuses, then the
//	                       Unix time (ns) of the first accepted connect
func probeMain(args []string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "probe:", err); return 1 }
	if len(args) < 2 {
		return fail(errors.New("usage: probe latency ADDR N | probe until ADDR"))
	}
	addr := args[1]
	switch args[0] {
	case "latency":
		n, err := strconv.Atoi(args[2])
		if err != nil {
			return fail(err)
		}
		ds := make([]time.Duration, 0, n)
		for range n {
			start := time.Now()
			c, err := net.DialTimeout("tcp", addr, 2*time.Second)
			if err != nil {
				return fail(err)
			}
			ds = append(ds, time.Since(start))
			_ = c.(*net.TCPConn).SetLinger(0) // no TIME_WAIT pile-up across thousands of connects
			c.Close()
		}
		slices.Sort(ds)
		fmt.Println(int64(ds[len(ds)/2]), int64(ds[len(ds)*99/100]))
		return 0
	case "until":
		ready := false
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
			c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
			switch {
			case err == nil && ready:
				at := time.Now().UnixNano()
				c.Close()
				fmt.Println(at)
				return 0
			case err == nil:
				c.Close() // still the old endpoints
			case errors.Is(err, syscall.ECONNREFUSED) && !ready:
				ready = true
				fmt.Println("ready")
			}
		}
		return fail(fmt.Errorf("%s: no change within 30s", addr))
	}
	return fail(fmt.Errorf("unknown probe %q", args[0]))
}

// self is the probe: this program inside node-1's namespace.
func self(args ...string) (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return inNode(append([]string{exe, probeCommand}, args...)...), nil
}

// connectLatency measures connects to bench/probe's ClusterIP.
func (b *bench) connectLatency(ctx context.Context) (latency, error) {
	cmd, err := self("latency", net.JoinHostPort(b.probeIP, "80"), strconv.Itoa(b.opts.connects))
	if err != nil {
		return latency{}, err
	}
	out, err := cmd.Output()
	if err != nil {
		return latency{}, fmt.Errorf("connect latency: %w: %s", err, stderrOf(err))
	}
	var p50, p99 int64
	if _, err := fmt.Sscan(string(out), &p50, &p99); err != nil {
		return latency{}, fmt.Errorf("connect latency: %q: %w", out, err)
	}
	return latency{time.Duration(p50), time.Duration(p99)}, ctx.Err()
}

// oneChange takes bench/probe's endpoints away, waits until the kernel
// refuses it, gives it one endpoint back, and returns the time from the
// API's acknowledgement to the first accepted connect, with the proxy's
// own duration of the partial sync(s) in between.
func (b *bench) oneChange(ctx context.Context, p proxyKind) (time.Duration, float64, error) {
	if err := b.setProbe(ctx, nil); err != nil {
		return 0, 0, err
	}
	cmd, err := self("until", net.JoinHostPort(b.probeIP, "80"))
	if err != nil {
		return 0, 0, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	defer func() { _ = cmd.Wait() }()
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "ready" {
		return 0, 0, fmt.Errorf("the probe never saw bench/probe refused: %q", lines.Text())
	}
	sum0, n0, err := histogram(p, p.partial)
	if err != nil {
		return 0, 0, err
	}
	if err := b.setProbe(ctx, b.probeEPs[:1]); err != nil {
		return 0, 0, err
	}
	acked := time.Now()
	if !lines.Scan() {
		return 0, 0, errors.New("the probe ended without a connect")
	}
	at, err := strconv.ParseInt(lines.Text(), 10, 64)
	if err != nil {
		return 0, 0, err
	}
	// The proxy records its sync's duration just after the kernel took
	// it: the connect may win that race by a little.
	var sum1, n1 float64
	_ = waitFor(ctx, 2*time.Second, func() (bool, error) {
		sum1, n1, err = histogram(p, p.partial)
		return n1 > n0, err
	})
	if err != nil {
		return 0, 0, err
	}
	own := math.NaN() // not reported
	if n1 > n0 {
		own = (sum1 - sum0) / (n1 - n0)
	}
	if err := b.setProbe(ctx, b.probeEPs); err != nil {
		return 0, 0, err
	}
	return time.Unix(0, at).Sub(acked), own, nil
}

// throughput runs iperf3 from node-1 to the iperf pod through its
// ClusterIP and directly, alternating, -rounds times.
func (b *bench) throughput(ctx context.Context, r *result) error {
	for i := range b.opts.rounds {
		targets := []string{b.iperfIP, b.iperfPod}
		if i%2 == 1 {
			targets = []string{b.iperfPod, b.iperfIP}
		}
		got := map[string]float64{}
		for _, t := range targets {
			g, err := iperf(ctx, t, b.opts.iperf)
			if err != nil {
				return err
			}
			got[t] = g
		}
		r.tput, r.direct = append(r.tput, got[b.iperfIP]), append(r.direct, got[b.iperfPod])
		r.ratio = append(r.ratio, got[b.iperfIP]/got[b.iperfPod])
	}
	return nil
}

// iperf runs one iperf3 TCP stream to addr:5201 and returns Gbit/s.
func iperf(ctx context.Context, addr string, d time.Duration) (float64, error) {
	var out []byte
	var err error
	for try := 0; try < 5; try++ { // the server takes one client at a time; it may still be closing the last
		out, err = inNode("iperf3", "-c", addr, "-t", strconv.Itoa(int(d.Seconds())), "-J").Output()
		if err == nil {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	if err != nil {
		return 0, fmt.Errorf("iperf3 to %s: %w: %s", addr, err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return 0, fmt.Errorf("iperf3 to %s: %w", addr, err)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, ctx.Err()
}

// histogram reads the sum and count of a histogram metric (name may carry
// labels: `name{k="v"}`) from p's /metrics, inside node-1's namespace. A
// histogram not observed yet is 0, 0.
func histogram(p proxyKind, name string) (sum, count float64, err error) {
	out, err := inNode("curl", "-s", "--max-time", "5", p.metrics).Output()
	if err != nil {
		return 0, 0, fmt.Errorf("%s metrics: %w", p.name, err)
	}
	base, labels, _ := strings.Cut(name, "{")
	if labels != "" {
		labels = "{" + labels
	}
	for _, l := range strings.Split(string(out), "\n") {
		for suffix, v := range map[string]*float64{"_sum": &sum, "_count": &count} {
			if rest, ok := strings.CutPrefix(l, base+suffix+labels+" "); ok {
				if *v, err = strconv.ParseFloat(strings.TrimSpace(rest), 64); err != nil {
					return 0, 0, err
				}
			}
		}
	}
	return sum, count, nil
}

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return strings.TrimSpace(string(ee.Stderr))
	}
	return ""
}

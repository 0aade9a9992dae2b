package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/podnet/podnet/bench/internal/benchenv"
)

const (
	iperfPort = 5201
	rrPort    = 7007
)

// bench is one benchmark run.
type bench struct {
	opts  options
	tools tools
	reg   *registry
	out   io.Writer
}

// The two paths measured in every lab.
const (
	nodePath = iota // node-1 eth1 → node-2 eth1
	podPath         // pod on node-1 → pod on node-2
)

var pathNames = [2]string{"node-to-node", "pod-to-pod"}

// subject is one backend's lab with its servers and what was measured.
type subject struct {
	lab   *lab
	src   [2]string     // client namespace per path
	dstNS [2]string     // server namespace per path
	dst   [2]netip.Addr // server address per path
	// snmpPID is a process in node-2's namespace: /proc/<pid>/net/snmp
	// counts the UDP datagrams (VXLAN) node-2 receives.
	snmpPID  int
	tput     [2][]tputRun
	rr       [2][]rrResult
	warmUDP  uint64 // UDP datagrams node-2 received during the pod warm-up run
	offloads string // vxlan: the VTEP's and the underlay's offloads on node-1
}

// tputRun is one iperf3 run.
type tputRun struct {
	gbps float64 // receiver's rate, warm-up second omitted
	sent float64 // bytes sent, warm-up second included
	retr int     // sender's retransmits
	udp  uint64  // UDP datagrams node-2 received meanwhile
}

func (b *bench) run(ctx context.Context) error {
	b.header()
	var subs []*subject
	for _, name := range b.opts.backends {
		fmt.Fprintf(os.Stderr, "bench/net: building the %s lab\n", name)
		l, err := b.buildLab(ctx, name)
		if err != nil {
			return fmt.Errorf("build the %s lab: %w", name, err)
		}
		s, err := b.startServers(l)
		if err != nil {
			return err
		}
		subs = append(subs, s)
	}
	for _, s := range subs {
		if err := b.warmUp(ctx, s); err != nil {
			return err
		}
	}
	// Throughput, then latency.
	err := b.rounds(subs, "throughput", func(s *subject, p int) error {
		t, err := b.iperf(ctx, s, p, b.opts.duration)
		s.tput[p] = append(s.tput[p], t)
		return err
	})
	if err != nil {
		return err
	}
	err = b.rounds(subs, "latency", func(s *subject, p int) error {
		res, err := b.latency(ctx, s, p, b.opts.rrWarmup, b.opts.rr)
		s.rr[p] = append(s.rr[p], res)
		return err
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(b.out, "load average at end: %s\n\n", benchenv.LoadAvg())
	b.report(subs)
	return nil
}

// rounds runs measure for every backend and path, -rounds times: node
// and pod runs of each backend alternate, and so do the backends, in the
// reverse order every other round (A B, then B A).
func (b *bench) rounds(subs []*subject, what string, measure func(s *subject, p int) error) error {
	for r := 0; r < b.opts.rounds; r++ {
		fmt.Fprintf(os.Stderr, "bench/net: %s round %d/%d\n", what, r+1, b.opts.rounds)
		for _, s := range order(subs, r) {
			for _, p := range order([]int{nodePath, podPath}, r) {
				if err := measure(s, p); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// order is s, reversed in odd rounds (A B, then B A).
func order[T any](s []T, round int) []T {
	out := make([]T, len(s))
	for i := range s {
		if round%2 == 1 {
			out[len(s)-1-i] = s[i]
		} else {
			out[i] = s[i]
		}
	}
	return out
}

// startServers starts iperf3 and the latency test's echo server on node-2
// and in node-2's pod.
func (b *bench) startServers(l *lab) (*subject, error) {
	n1, n2 := l.nodes[0], l.nodes[1]
	s := &subject{lab: l,
		src:   [2]string{n1.ns, n1.pod},
		dstNS: [2]string{n2.ns, n2.pod},
		dst:   [2]netip.Addr{n2.local.NodeIP, n2.podIP}}
	for p := range pathNames {
		ip, err := b.reg.startServer(s.dstNS[p], "Server listening", b.tools.iperf3, "-s", "-p", strconv.Itoa(iperfPort), "--forceflush")
		if err != nil {
			return nil, err
		}
		if p == nodePath {
			s.snmpPID = ip.cmd.Process.Pid
		}
		if _, err := b.reg.startServer(s.dstNS[p], rrReady, b.tools.self, rrCommand, "server", strconv.Itoa(rrPort)); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// warmUp runs each path once, unmeasured: it fills caches (neighbours,
// routes, the page cache of the binaries) and proves the path carries
// traffic, the pod path as VXLAN exactly when the backend is vxlan.
func (b *bench) warmUp(ctx context.Context, s *subject) error {
	for p := range pathNames {
		t, err := b.iperf(ctx, s, p, time.Second)
		if err != nil {
			return err
		}
		if _, err := b.latency(ctx, s, p, 0, 500); err != nil {
			return err
		}
		if p == podPath {
			s.warmUDP = t.udp
		}
	}
	overlay := s.lab.backend == "vxlan"
	if overlay {
		s.offloads = b.offloads(s.lab.nodes[0])
	}
	if overlay && s.warmUDP == 0 {
		return fmt.Errorf("%s: node-2 received no UDP datagram while the pods talked: the pod traffic does not cross the underlay as VXLAN", s.lab.backend)
	}
	if !overlay && s.warmUDP != 0 {
		return fmt.Errorf("%s: node-2 received %d UDP datagrams while the pods talked: the pod traffic is encapsulated, not routed", s.lab.backend, s.warmUDP)
	}
	return nil
}

// iperfJSON is the part of `iperf3 -J` the benchmark reads.
type iperfJSON struct {
	// Intervals, the omitted warm-up second included.
	Intervals []struct {
		Sum struct {
			Bytes float64 `json:"bytes"`
		} `json:"sum"`
	} `json:"intervals"`
	End struct {
		SumSent struct {
			Retransmits int `json:"retransmits"`
		} `json:"sum_sent"`
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// iperf runs one single-stream TCP iperf3 test of path p for d (after a
// second omitted as warm-up).
func (b *bench) iperf(ctx context.Context, s *subject, p int, d time.Duration) (tputRun, error) {
	what := fmt.Sprintf("%s %s iperf3 to %s", s.lab.backend, pathNames[p], s.dst[p])
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	udp0, err := udpInDatagrams(s.snmpPID)
	if err != nil {
		return tputRun{}, err
	}
	cmd := b.reg.execIn(ctx, s.src[p], b.tools.iperf3, "-c", s.dst[p].String(), "-p", strconv.Itoa(iperfPort),
		"-t", strconv.Itoa(int(d.Seconds())), "-O", "1", "-J", "--connect-timeout", "5000")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, runErr := cmd.Output()
	udp1, err := udpInDatagrams(s.snmpPID)
	if err != nil {
		return tputRun{}, err
	}
	var res iperfJSON
	jsonErr := json.Unmarshal(out, &res)
	switch {
	case ctx.Err() != nil:
		return tputRun{}, fmt.Errorf("%s: %w", what, context.Cause(ctx))
	case jsonErr == nil && res.Error != "":
		return tputRun{}, fmt.Errorf("%s: %s", what, res.Error)
	case runErr != nil:
		return tputRun{}, fmt.Errorf("%s: %w: %s", what, runErr, strings.TrimSpace(stderr.String()))
	case jsonErr != nil:
		return tputRun{}, fmt.Errorf("%s: parse its JSON: %w", what, jsonErr)
	case res.End.SumReceived.BitsPerSecond <= 0:
		return tputRun{}, fmt.Errorf("%s: nothing received", what)
	}
	t := tputRun{gbps: res.End.SumReceived.BitsPerSecond / 1e9, retr: res.End.SumSent.Retransmits, udp: udp1 - udp0}
	for _, i := range res.Intervals {
		t.sent += i.Sum.Bytes
	}
	return t, nil
}

// latency runs the request/response client for path p.
func (b *bench) latency(ctx context.Context, s *subject, p, warmup, n int) (rrResult, error) {
	what := fmt.Sprintf("%s %s TCP request/response to %s", s.lab.backend, pathNames[p], s.dst[p])
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := b.reg.execIn(ctx, s.src[p], b.tools.self, rrCommand, "client", s.dst[p].String(), strconv.Itoa(rrPort),
		strconv.Itoa(b.opts.rrSize), strconv.Itoa(warmup), strconv.Itoa(n))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ctx.Err() != nil {
		return rrResult{}, fmt.Errorf("%s: %w", what, context.Cause(ctx))
	}
	if err != nil {
		return rrResult{}, fmt.Errorf("%s: %w: %s", what, err, strings.TrimSpace(stderr.String()))
	}
	var res rrResult
	if err := json.Unmarshal(out, &res); err != nil || res.N != n {
		return rrResult{}, fmt.Errorf("%s: parse %q: %v", what, out, err)
	}
	return res, nil
}

// udpInDatagrams reads Udp InDatagrams of the namespace of process pid.
func udpInDatagrams(pid int) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/net/snmp", pid))
	if err != nil {
		return 0, fmt.Errorf("read node-2's UDP counters: %w", err)
	}
	defer f.Close()
	var header []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] != "Udp:" {
			continue
		}
		if header == nil {
			header = fields
			continue
		}
		for i, h := range header {
			if h == "InDatagrams" && i < len(fields) {
				return strconv.ParseUint(fields[i], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("read node-2's UDP counters: no Udp InDatagrams in /proc/%d/net/snmp", pid)
}

package proxy

// Kernel tests: the real nft, real packets, all inside throwaway network
// namespaces (skipped when not root, and with -short). The topology:
//
//	pod1 10.244.1.2 ─┐
//	pod2 10.244.1.3 ─┼─ cni0 10.244.1.1/24 (bridge, hairpin on) ── node ── 192.168.56.11/24 ── outside 192.168.56.100
//	pod3 10.244.1.4 ─┘                                   (ip_forward=1)
//
// The Proxier runs inside the node namespace: knftables execs nft, and a
// process forked from a thread inherits that thread's namespace, so every
// Sync runs on a thread locked into the node (netnstest's Do), and the
// guard below refuses any nft call from elsewhere.

import (
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/netnstest"
)

type kernelTopo struct {
	node, outside *netnstest.NS
	pods          map[string]*netnstest.NS // by IP
}

var kernelNode = Node{
	Name:         "node-1",
	IPs:          addrList("192.168.56.11", "10.244.1.1"),
	ClusterCIDRs: prefixList("10.244.0.0/16"),
	PodCIDRs:     prefixList("10.244.1.0/24"),
}

func requireKernel(t *testing.T) {
	t.Helper()
	netnstest.RequireNFT(t)
}

func newKernelTopo(t *testing.T) *kernelTopo {
	t.Helper()
	k := &kernelTopo{node: netnstest.New(t, "pxnode"), outside: netnstest.New(t, "pxout"), pods: map[string]*netnstest.NS{}}
	n := k.node
	n.MustRun(t, "ip", "link", "set", "lo", "up")
	n.MustRun(t, "ip", "link", "add", "cni0", "type", "bridge")
	n.MustRun(t, "ip", "addr", "add", "10.244.1.1/24", "dev", "cni0")
	n.MustRun(t, "ip", "link", "set", "cni0", "up")
	for i, ip := range []string{"10.244.1.2", "10.244.1.3", "10.244.1.4"} {
		pod := netnstest.New(t, fmt.Sprintf("pxpod%d", i+1))
		k.pods[ip] = pod
		host := fmt.Sprintf("veth%d", i+1)
		// Created from inside the node, the far end straight in the pod:
		// nothing is ever created in the host's namespace.
		n.MustRun(t, "ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", pod.Name)
		n.MustRun(t, "ip", "link", "set", host, "master", "cni0")
		n.MustRun(t, "ip", "link", "set", host, "type", "bridge_slave", "hairpin", "on") // as the podnet plugin does
		n.MustRun(t, "ip", "link", "set", host, "up")
		pod.MustRun(t, "ip", "link", "set", "lo", "up")
		pod.MustRun(t, "ip", "addr", "add", ip+"/24", "dev", "eth0")
		pod.MustRun(t, "ip", "link", "set", "eth0", "up")
		pod.MustRun(t, "ip", "route", "add", "default", "via", "10.244.1.1")
	}
	n.MustRun(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", k.outside.Name)
	n.MustRun(t, "ip", "addr", "add", "192.168.56.11/24", "dev", "eth0")
	n.MustRun(t, "ip", "link", "set", "eth0", "up")
	k.outside.MustRun(t, "ip", "link", "set", "lo", "up")
	k.outside.MustRun(t, "ip", "addr", "add", "192.168.56.100/24", "dev", "eth0")
	k.outside.MustRun(t, "ip", "link", "set", "eth0", "up")
	if err := n.Do(func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644) }); err != nil {
		t.Fatal(err)
	}
	return k
}

// server answers every TCP connection and UDP datagram with its name,
// and records the source addresses it saw.
type server struct {
	name string
	mu   sync.Mutex
	seen []string
}

func (s *server) saw(addr net.Addr) {
	s.mu.Lock()
	s.seen = append(s.seen, strings.Split(addr.String(), ":")[0])
	s.mu.Unlock()
}

func (s *server) lastSeen() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.seen) == 0 {
		return ""
	}
	return s.seen[len(s.seen)-1]
}

func serve(t *testing.T, ns *netnstest.NS, name string) *server {
	t.Helper()
	s := &server{name: name}
	var ln net.Listener
	var pc net.PacketConn
	err := ns.Do(func() (err error) { // the sockets stay in ns, whichever thread uses them
		if ln, err = net.Listen("tcp", ":8080"); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", ":5353")
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", ns.Name, err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.saw(c.RemoteAddr())
			_, _ = c.Write([]byte(name))
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			s.saw(from)
			_, _ = pc.WriteTo([]byte(name), from)
		}
	}()
	return s
}

// connect opens a TCP connection from ns and returns what the server said.
func connect(ns *netnstest.NS, addr string) (string, error) {
	var c net.Conn
	err := ns.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr, 3*time.Second); return err })
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	b := make([]byte, 64)
	n, err := c.Read(b)
	if n > 0 {
		err = nil
	}
	return string(b[:n]), err
}

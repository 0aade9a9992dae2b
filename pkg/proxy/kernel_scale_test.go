package proxy

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"sigs.k8s.io/knftables"

	"github.com/podnet/podnet/internal/netnstest"
)

// With the real nft in a throwaway namespace: programming 1, 1000 and
// 10000 Services (two endpoints each) from an empty table, a full resync
// of the same, and one endpoint change. Times are logged, not asserted
// (the benchmark compares them with kube-proxy's); the checks are that
// each is one transaction nft accepts and that the kernel holds every
// Service afterwards.
func TestKernelScale(t *testing.T) {
	requireKernel(t)
	node := netnstest.New(t, "pxscale")
	nft := netnstest.GuardedNFT(t, node, IPv4.NFT, TableName)
	for _, n := range []int{1, 1000, 10000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			c := newCluster(n)
			var logs strings.Builder
			p := New(nft, Config{Log: slog.New(slog.NewTextHandler(&logs, nil))})
			timed := func(st *State) time.Duration {
				t.Helper()
				start := time.Now()
				if err := node.Do(func() error { return p.Sync(ctx, st) }); err != nil {
					t.Fatalf("Sync: %v", err)
				}
				return time.Since(start)
			}
			first := timed(c.state())
			p.RequestFullSync()
			resync := timed(c.state())
			c.slices[n/2] = epSlice("default", c.svcs[n/2].Name, "moved", []discoveryv1.EndpointPort{esPort("http", corev1.ProtocolTCP, 8080)},
				endpointOn("10.244.1.251", "node-1"))
			buildStart := time.Now()
			st := c.state()
			build := time.Since(buildStart)
			change := timed(st)
			elems, err := listElements(node, nft, mapServiceIPs)
			if err != nil || elems != n {
				t.Errorf("service-ips holds %d elements (%v), want %d", elems, err, n)
			}
			t.Logf("%5d Services: first full sync %v, full resync %v; one endpoint change: Build %v + partial sync %v",
				n, first.Round(time.Millisecond), resync.Round(time.Millisecond), build.Round(time.Millisecond), change.Round(time.Millisecond))
			if logs.Len() > 0 {
				t.Errorf("the proxy logged:\n%s", logs.String())
			}
			if err := node.Do(func() error { return p.Cleanup(ctx) }); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// listElements counts a map's elements as the kernel holds them.
func listElements(ns *netnstest.NS, nft knftables.Interface, mapName string) (int, error) {
	var n int
	err := ns.Do(func() error {
		els, err := nft.ListElements(ctx, "map", mapName)
		n = len(els)
		return err
	})
	return n, err
}

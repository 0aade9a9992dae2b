package proxy

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// 10,000 Services (two endpoints each) are programmed in one transaction,
// and one endpoint change afterwards is a small partial one. Times are
// logged, not asserted: the Fake is not the kernel (see the kernel test
// and the benchmark for real nft).
func TestTenThousandServices(t *testing.T) {
	const n = 10000
	c := newCluster(n)
	r := newRecorder()
	p := New(r, Config{})

	start := time.Now()
	st := c.state()
	built := time.Since(start)
	start = time.Now()
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	synced, fakeFull := time.Since(start), r.inFake+r.listing
	if len(r.runs) != 1 || !isFull(r.runs[0].String()) {
		t.Fatalf("%d transactions for the first sync, want 1 full one", len(r.runs))
	}
	full := r.runs[0].NumOperations()
	if len(st.Ports) != n || len(r.Fake.Table.Maps[mapServiceIPs].Elements) != n {
		t.Fatalf("%d ports, %d service-ips elements", len(st.Ports), len(r.Fake.Table.Maps[mapServiceIPs].Elements))
	}

	c.slices[n/2] = epSlice("default", c.svcs[n/2].Name, "moved", []discoveryv1.EndpointPort{esPort("http", corev1.ProtocolTCP, 8080)},
		endpointOn("10.244.1.251", "node-1"))
	start = time.Now()
	st = c.state()
	rebuilt := time.Since(start)
	start = time.Now()
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	partial, fakePartial := time.Since(start), r.inFake+r.listing-fakeFull
	if len(r.runs) != 2 || isFull(r.last()) {
		t.Fatalf("the endpoint change: %d transactions, last full: %v", len(r.runs)-1, isFull(r.last()))
	}
	ms := func(d time.Duration) string { return d.Round(100 * time.Microsecond).String() }
	t.Logf("10000 Services: Build %s; full sync %s in 1 transaction of %d operations, of which the proxy %s and the knftables Fake %s",
		ms(built), ms(synced), full, ms(synced-fakeFull), ms(fakeFull))
	t.Logf("one endpoint change: Build %s; partial sync %s in %d operations, of which the proxy %s and the knftables Fake %s",
		ms(rebuilt), ms(partial), r.runs[1].NumOperations(), ms(partial-fakePartial), ms(fakePartial))
}

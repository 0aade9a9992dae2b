package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"
)

func newAllocator(t *testing.T, confs [][]RangeConf, reserved ...string) (*Allocator, *MemStore) {
	t.Helper()
	res, err := ParseReserved(reserved)
	if err != nil {
		t.Fatal(err)
	}
	st := NewMemStore()
	return &Allocator{Sets: mustParse(t, confs), Reserved: res, Store: st}, st
}

func req(cid, ifname string) Request {
	return Request{Attachment: Attachment{ContainerID: cid, IfName: ifname}, PodNamespace: "ns-" + cid, PodName: "pod-" + cid}
}

func mustAllocate(t *testing.T, a *Allocator, r Request) []Reservation {
	t.Helper()
	got, err := a.Allocate(r)
	if err != nil {
		t.Fatalf("Allocate(%s/%s): %v", r.ContainerID, r.IfName, err)
	}
	return got
}

func heldIPs(t *testing.T, st Store) map[netip.Addr]Reservation {
	t.Helper()
	unlock, err := st.Lock()
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	all, err := st.List()
	if err != nil {
		t.Fatal(err)
	}
	out := map[netip.Addr]Reservation{}
	for _, r := range all {
		if _, dup := out[r.IP]; dup {
			t.Fatalf("store lists %s twice", r.IP)
		}
		out[r.IP] = r
	}
	return out
}

// withTimeout runs f and fails the test if it does not return in time (an
// address walk over a huge IPv6 range would never return).
func withTimeout(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s did not return within 5s", what)
	}
}

func TestAllocateOneAddressPerSet(t *testing.T) {
	a, st := newAllocator(t, [][]RangeConf{{{Subnet: "10.244.1.0/24"}}, {{Subnet: "fd00:10:244:1::/64"}}})
	got := mustAllocate(t, a, req("c1", "eth0"))
	if len(got) != 2 {
		t.Fatalf("got %d reservations, want one per range set (2): %+v", len(got), got)
	}
	if !a.Sets[0][0].Contains(got[0].IP) || !got[0].IP.Is4() {
		t.Errorf("first address %s is not from the IPv4 set", got[0].IP)
	}
	if !a.Sets[1][0].Contains(got[1].IP) || !got[1].IP.Is6() {
		t.Errorf("second address %s is not from the IPv6 set", got[1].IP)
	}
	held := heldIPs(t, st)
	if len(held) != 2 {
		t.Fatalf("store holds %d addresses, want 2", len(held))
	}
	for _, g := range got {
		r, ok := held[g.IP]
		if !ok {
			t.Fatalf("%s was returned but not stored", g.IP)
		}
		want := Reservation{IP: g.IP, ContainerID: "c1", IfName: "eth0", PodNamespace: "ns-c1", PodName: "pod-c1"}
		r.Created = time.Time{}
		if r != want {
			t.Errorf("stored %+v, want %+v", r, want)
		}
	}
}

func TestAllocateRecordsCreationTime(t *testing.T) {
	a, _ := newAllocator(t, one("10.244.1.0/24"))
	at := time.Date(2030, 1, 2, 3, 4, 5, 600, time.FixedZone("x", 3600))
	a.Now = func() time.Time { return at }
	got := mustAllocate(t, a, req("c1", "eth0"))
	if want := at.UTC().Truncate(time.Second); !got[0].Created.Equal(want) {
		t.Errorf("Created = %s, want %s", got[0].Created, want)
	}
}

func TestAllocateDistinctAddresses(t *testing.T) {
	a, st := newAllocator(t, one("10.244.1.0/28")) // 13 usable
	seen := map[netip.Addr]string{}
	for i := range 13 {
		cid := fmt.Sprintf("c%d", i)
		got := mustAllocate(t, a, req(cid, "eth0"))
		ip := got[0].IP
		if prev, dup := seen[ip]; dup {
			t.Fatalf("%s handed to both %s and %s", ip, prev, cid)
		}
		if !a.Sets[0][0].Contains(ip) {
			t.Fatalf("%s is not a usable address of the range", ip)
		}
		seen[ip] = cid
	}
	if n := len(heldIPs(t, st)); n != 13 {
		t.Errorf("store holds %d, want 13", n)
	}
	// Same container, another interface: another address.
	a2, _ := newAllocator(t, one("10.244.1.0/24"))
	x := mustAllocate(t, a2, req("c1", "eth0"))
	y := mustAllocate(t, a2, req("c1", "net1"))
	if x[0].IP == y[0].IP {
		t.Errorf("eth0 and net1 of one container share %s", x[0].IP)
	}
}

func TestAllocateRoundRobin(t *testing.T) {
	a, _ := newAllocator(t, one("10.244.1.0/29")) // usable .2 - .6
	first := mustAllocate(t, a, req("a", "eth0"))[0].IP
	if _, err := a.Release(Attachment{ContainerID: "a", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	second := mustAllocate(t, a, req("b", "eth0"))[0].IP
	if second == first {
		t.Errorf("released %s was handed out again at once", first)
	}
	// The released address comes back only after the rest of the range.
	seen := map[netip.Addr]bool{second: true}
	for i := range 4 {
		ip := mustAllocate(t, a, req(fmt.Sprintf("c%d", i), "eth0"))[0].IP
		if seen[ip] {
			t.Fatalf("%s handed out twice", ip)
		}
		seen[ip] = true
	}
	if !seen[first] {
		t.Errorf("after wrapping around, the released %s was not reused: %v", first, seen)
	}
	if _, err := a.Allocate(req("z", "eth0")); !errors.Is(err, ErrExhausted) {
		t.Errorf("sixth allocation from 5 addresses: err = %v, want ErrExhausted", err)
	}
}

func TestAllocateRoundRobinAcrossRanges(t *testing.T) {
	a, _ := newAllocator(t, [][]RangeConf{{
		{Subnet: "10.244.1.0/24", RangeStart: "10.244.1.10", RangeEnd: "10.244.1.11"},
		{Subnet: "10.244.2.0/24", RangeStart: "10.244.2.10", RangeEnd: "10.244.2.10"},
	}})
	var got []netip.Addr
	for i := range 3 {
		got = append(got, mustAllocate(t, a, req(fmt.Sprintf("c%d", i), "eth0"))[0].IP)
	}
	want := map[netip.Addr]bool{
		netip.MustParseAddr("10.244.1.10"): true, netip.MustParseAddr("10.244.1.11"): true, netip.MustParseAddr("10.244.2.10"): true,
	}
	for _, ip := range got {
		if !want[ip] {
			t.Errorf("allocated %s, outside both ranges", ip)
		}
		delete(want, ip)
	}
	if len(want) != 0 {
		t.Errorf("addresses never handed out: %v (got %v)", want, got)
	}
	if _, err := a.Allocate(req("x", "eth0")); !errors.Is(err, ErrExhausted) {
		t.Errorf("err = %v, want ErrExhausted", err)
	}
}

func TestAllocateIdempotent(t *testing.T) {
	a, st := newAllocator(t, [][]RangeConf{{{Subnet: "10.244.1.0/24"}}, {{Subnet: "fd00::/64"}}})
	mustAllocate(t, a, req("other", "eth0"))
	first := mustAllocate(t, a, req("c1", "eth0"))
	again := mustAllocate(t, a, req("c1", "eth0"))
	if len(again) != len(first) {
		t.Fatalf("retry got %v, first %v", again, first)
	}
	for i := range first {
		if again[i].IP != first[i].IP {
			t.Errorf("retry got %s, first ADD got %s", again[i].IP, first[i].IP)
		}
	}
	if n := len(heldIPs(t, st)); n != 4 {
		t.Errorf("store holds %d addresses after a retried ADD, want 4", n)
	}
}

func TestAllocateIdempotentCompletesPartialAttachment(t *testing.T) {
	// The attachment already holds its IPv4 address (say from before the
	// IPv6 set was configured): a retry keeps it and adds one IPv6 address.
	a, st := newAllocator(t, [][]RangeConf{{{Subnet: "10.244.1.0/24"}}, {{Subnet: "fd00::/64"}}})
	old := Reservation{IP: netip.MustParseAddr("10.244.1.77"), ContainerID: "c1", IfName: "eth0"}
	if ok, _ := st.Reserve(old); !ok {
		t.Fatal("seed reservation refused")
	}
	got := mustAllocate(t, a, req("c1", "eth0"))
	if len(got) != 2 || got[0].IP != old.IP || !got[1].IP.Is6() {
		t.Errorf("got %+v, want the held 10.244.1.77 and one IPv6 address", got)
	}
	if n := len(heldIPs(t, st)); n != 2 {
		t.Errorf("store holds %d, want 2", n)
	}
}

func TestAllocateNeverHandsOutReserved(t *testing.T) {
	// /28: usable .2 - .14; reserve .3, .4/31 (.4, .5), .8/30 (.8 - .11).
	a, _ := newAllocator(t, one("10.244.1.0/28"), "10.244.1.3", "10.244.1.4/31", "10.244.1.8/30")
	reserved := map[string]bool{"10.244.1.3": true, "10.244.1.4": true, "10.244.1.5": true,
		"10.244.1.8": true, "10.244.1.9": true, "10.244.1.10": true, "10.244.1.11": true}
	var got []string
	for i := 0; ; i++ {
		res, err := a.Allocate(req(fmt.Sprintf("c%d", i), "eth0"))
		if errors.Is(err, ErrExhausted) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if i > 20 {
			t.Fatal("allocations never ran out")
		}
		got = append(got, res[0].IP.String())
	}
	for _, ip := range got {
		if reserved[ip] {
			t.Errorf("reserved %s was handed out", ip)
		}
	}
	if len(got) != 13-7 {
		t.Errorf("handed out %v, want the 6 unreserved addresses", got)
	}
}

func TestAllocateSkipsReservedIPv6PrefixQuickly(t *testing.T) {
	// The first /64 of the range is reserved: the allocator must jump over
	// it, not walk its 2^64 addresses.
	a, _ := newAllocator(t, one("fd00:1::/48"), "fd00:1::/64", "fd00:1:0:1::/64")
	var got []Reservation
	var err error
	withTimeout(t, "Allocate with a reserved /64", func() { got, err = a.Allocate(req("c1", "eth0")) })
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParsePrefix("fd00:1:0:2::/64"); !want.Contains(got[0].IP) {
		t.Errorf("got %s, want the first address after the reserved /64s (in %s)", got[0].IP, want)
	}
}

func TestAllocateFullyReservedIPv6ReportsExhausted(t *testing.T) {
	a, _ := newAllocator(t, one("fd00:1::/64"), "fd00:1::/65", "fd00:1::8000:0:0:0/65")
	var err error
	withTimeout(t, "Allocate from a fully reserved /64", func() { _, err = a.Allocate(req("c1", "eth0")) })
	if !errors.Is(err, ErrExhausted) {
		t.Errorf("err = %v, want ErrExhausted", err)
	}
	withTimeout(t, "CheckFree on a fully reserved /64", func() { err = a.CheckFree() })
	if !errors.Is(err, ErrExhausted) {
		t.Errorf("CheckFree = %v, want ErrExhausted", err)
	}
}

func TestAllocateExhausted(t *testing.T) {
	a, st := newAllocator(t, one("10.244.1.0/30")) // only .2 is usable
	mustAllocate(t, a, req("a", "eth0"))
	_, err := a.Allocate(req("b", "eth0"))
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("err = %v, want one wrapping ErrExhausted", err)
	}
	if n := len(heldIPs(t, st)); n != 1 {
		t.Errorf("store holds %d after a failed allocation, want 1", n)
	}
}

func TestAllocateExhaustedKeepsNothingOfPartialAllocation(t *testing.T) {
	a, st := newAllocator(t, [][]RangeConf{
		{{Subnet: "10.244.1.0/24"}},
		{{Subnet: "fd00::/64", RangeStart: "fd00::10", RangeEnd: "fd00::10"}}, // one address
	})
	holder := mustAllocate(t, a, req("holder", "eth0"))
	before := heldIPs(t, st)
	_, err := a.Allocate(req("late", "eth0"))
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("err = %v, want ErrExhausted", err)
	}
	after := heldIPs(t, st)
	if len(after) != len(before) {
		t.Errorf("a failed dual-stack allocation kept addresses: before %v, after %v", before, after)
	}
	for ip, r := range after {
		if r.ContainerID != "holder" {
			t.Errorf("%s is held by %q after its allocation failed", ip, r.ContainerID)
		}
	}
	if got, _ := a.Lookup(Attachment{ContainerID: "late", IfName: "eth0"}); len(got) != 0 {
		t.Errorf("Lookup(late) = %v, want nothing", got)
	}
	// Once the holder is gone, the late attachment gets both.
	if _, err := a.Release(holder[0].Attachment()); err != nil {
		t.Fatal(err)
	}
	if got := mustAllocate(t, a, req("late", "eth0")); len(got) != 2 {
		t.Errorf("got %v, want 2 addresses", got)
	}
}

func TestAllocateStoreFailureKeepsNothing(t *testing.T) {
	a, st := newAllocator(t, one("10.244.1.0/24"))
	boom := errors.New("disk on fire")
	st.FailReserve = boom
	if _, err := a.Allocate(req("c1", "eth0")); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want it to wrap the store's error", err)
	}
	st.FailReserve = nil
	if n := len(heldIPs(t, st)); n != 0 {
		t.Errorf("store holds %d after a failed Reserve", n)
	}
}

func TestReleaseLookupGC(t *testing.T) {
	a, st := newAllocator(t, [][]RangeConf{{{Subnet: "10.244.1.0/24"}}, {{Subnet: "fd00::/64"}}})
	keep := mustAllocate(t, a, req("keep", "eth0"))
	gone := mustAllocate(t, a, req("gone", "eth0"))
	stale := mustAllocate(t, a, req("stale", "eth0"))
	stale2 := mustAllocate(t, a, req("keep", "net1")) // same container, other interface

	got, err := a.Lookup(Attachment{ContainerID: "keep", IfName: "eth0"})
	if err != nil || len(got) != 2 || got[0].IP != keep[0].IP && got[0].IP != keep[1].IP {
		t.Errorf("Lookup(keep) = %v, %v; want %v", got, err, keep)
	}
	if got, err := a.Lookup(Attachment{ContainerID: "nobody", IfName: "eth0"}); err != nil || len(got) != 0 {
		t.Errorf("Lookup(nobody) = %v, %v", got, err)
	}

	rel, err := a.Release(Attachment{ContainerID: "gone", IfName: "eth0"})
	if err != nil || len(rel) != 2 {
		t.Fatalf("Release(gone) = %v, %v; want its 2 reservations", rel, err)
	}
	held := heldIPs(t, st)
	for _, r := range gone {
		if _, ok := held[r.IP]; ok {
			t.Errorf("%s still held after Release", r.IP)
		}
	}
	// DEL is idempotent.
	if rel, err := a.Release(Attachment{ContainerID: "gone", IfName: "eth0"}); err != nil || len(rel) != 0 {
		t.Errorf("second Release = %v, %v; want nothing, nil", rel, err)
	}

	freed, err := a.GC(map[Attachment]bool{{ContainerID: "keep", IfName: "eth0"}: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(freed) != 4 {
		t.Errorf("GC freed %v, want the 4 addresses of stale/eth0 and keep/net1", freed)
	}
	held = heldIPs(t, st)
	if len(held) != 2 {
		t.Errorf("after GC the store holds %v, want only keep/eth0's 2", held)
	}
	for _, r := range keep {
		if _, ok := held[r.IP]; !ok {
			t.Errorf("GC released the valid %s", r.IP)
		}
	}
	for _, r := range append(stale, stale2...) {
		if _, ok := held[r.IP]; ok {
			t.Errorf("GC kept the stale %s", r.IP)
		}
	}
	// An empty valid list releases everything.
	if freed, err := a.GC(map[Attachment]bool{}); err != nil || len(freed) != 2 {
		t.Errorf("GC(empty) = %v, %v", freed, err)
	}
}

func TestCheckFree(t *testing.T) {
	a, _ := newAllocator(t, one("10.244.1.0/29")) // 5 usable
	if err := a.CheckFree(); err != nil {
		t.Errorf("CheckFree on an empty range = %v", err)
	}
	for i := range 4 {
		mustAllocate(t, a, req(fmt.Sprintf("c%d", i), "eth0"))
	}
	if err := a.CheckFree(); err != nil {
		t.Errorf("CheckFree with one address left = %v", err)
	}
	mustAllocate(t, a, req("last", "eth0"))
	if err := a.CheckFree(); !errors.Is(err, ErrExhausted) {
		t.Errorf("CheckFree on a full range = %v, want ErrExhausted", err)
	}
}

func TestCheckFreeCountsReserved(t *testing.T) {
	a, _ := newAllocator(t, one("10.244.1.0/29"), "10.244.1.4/30") // .4-.7: .4, .5, .6 usable ones reserved
	mustAllocate(t, a, req("a", "eth0"))
	if err := a.CheckFree(); err != nil {
		t.Errorf("CheckFree with .3 free = %v", err)
	}
	mustAllocate(t, a, req("b", "eth0"))
	if err := a.CheckFree(); !errors.Is(err, ErrExhausted) {
		t.Errorf("CheckFree = %v, want ErrExhausted (.2, .3 taken, .4-.6 reserved)", err)
	}
	// Overlapping reserved entries are not counted twice.
	a2, _ := newAllocator(t, one("10.244.1.0/29"), "10.244.1.4/30", "10.244.1.5", "10.244.1.4/31")
	mustAllocate(t, a2, req("a", "eth0"))
	if err := a2.CheckFree(); err != nil {
		t.Errorf("CheckFree with .3 free and overlapping reserved entries = %v", err)
	}
	mustAllocate(t, a2, req("b", "eth0"))
	if err := a2.CheckFree(); !errors.Is(err, ErrExhausted) {
		t.Errorf("CheckFree = %v, want ErrExhausted", err)
	}
}

func TestCheckFreeReservedAfterAllocation(t *testing.T) {
	// An address reserved in the configuration after it was handed out is
	// not counted twice (once as used, once as reserved).
	a, _ := newAllocator(t, one("10.244.1.0/29"))
	got := mustAllocate(t, a, req("a", "eth0"))
	a.Reserved = []netip.Prefix{netip.PrefixFrom(got[0].IP, 32)}
	for i := range 3 {
		mustAllocate(t, a, req(fmt.Sprintf("c%d", i), "eth0"))
	}
	if err := a.CheckFree(); err != nil {
		t.Errorf("CheckFree with one address left = %v", err)
	}
}

func TestCheckFreeHugeIPv6(t *testing.T) {
	cases := []struct {
		name     string
		subnet   string
		reserved []string
	}{
		{"no reservations", "fd00:1::/48", nil},
		{"first /64 (holds the gateway)", "fd00:1::/48", []string{"fd00:1::/64"}},
		{"second /64", "fd00:1::/48", []string{"fd00:1:0:1::/64"}},
		{"many /64s", "fd00:1::/48", []string{"fd00:1::/64", "fd00:1:0:1::/64", "fd00:1:0:2::/64", "fd00:1:0:ffff::/64"}},
		{"half a /64", "fd00:1::/64", []string{"fd00:1::8000:0:0:0/65"}},
		{"a /56 in a /8", "fd00::/8", []string{"fd00:1::/56"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, _ := newAllocator(t, one(tc.subnet), tc.reserved...)
			var err error
			withTimeout(t, "CheckFree", func() { err = a.CheckFree() })
			if err != nil {
				t.Errorf("CheckFree = %v, want nil: the range has plenty of free addresses", err)
			}
		})
	}
}

func TestAllocateReservedAcrossRanges(t *testing.T) {
	sets := [][]RangeConf{{
		{Subnet: "10.244.1.0/24", RangeStart: "10.244.1.10", RangeEnd: "10.244.1.11"},
		{Subnet: "10.244.2.0/24", RangeStart: "10.244.2.10", RangeEnd: "10.244.2.12"},
		{Subnet: "10.244.3.0/24", RangeStart: "10.244.3.10", RangeEnd: "10.244.3.10"},
	}}
	cases := []struct {
		name     string
		reserved []string
		want     []string // every address handed out, in any order
	}{
		{"first range", []string{"10.244.1.0/24"}, []string{"10.244.2.10", "10.244.2.11", "10.244.2.12", "10.244.3.10"}},
		{"spanning two ranges", []string{"10.244.0.0/23", "10.244.2.0/24"}, []string{"10.244.3.10"}},
		{"nested", []string{"10.244.2.11", "10.244.2.0/24", "10.244.2.8/29", "10.244.1.11"}, []string{"10.244.1.10", "10.244.3.10"}},
		{"everything", []string{"10.244.0.0/16"}, nil},
		{"everything, in pieces", []string{"10.244.3.0/24", "10.244.1.0/24", "10.244.2.0/24"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, _ := newAllocator(t, sets, tc.reserved...)
			got := map[string]bool{}
			withTimeout(t, "allocating until exhausted", func() {
				for i := range 10 {
					res, err := a.Allocate(req(fmt.Sprintf("c%d", i), "eth0"))
					if errors.Is(err, ErrExhausted) {
						return
					}
					if err != nil {
						t.Error(err)
						return
					}
					got[res[0].IP.String()] = true
				}
				t.Error("allocations never ran out")
			})
			if len(got) != len(tc.want) {
				t.Errorf("handed out %v, want %v", got, tc.want)
			}
			for _, w := range tc.want {
				if !got[w] {
					t.Errorf("%s was never handed out (got %v)", w, got)
				}
			}
			err := a.CheckFree()
			if !errors.Is(err, ErrExhausted) {
				t.Errorf("CheckFree after exhaustion = %v, want ErrExhausted", err)
			}
		})
	}
}

func TestAllocateReclaimsStaleReservations(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	a, st := newAllocator(t, one("10.244.1.0/28"))
	a.Now = func() time.Time { return now }
	old, young := now.Add(-StaleAfter), now.Add(-StaleAfter+time.Second)
	seed := []Reservation{
		{IP: netip.MustParseAddr("10.244.1.2"), ContainerID: "lost", IfName: "eth0", Created: old},
		{IP: netip.MustParseAddr("10.244.1.3"), ContainerID: "live", IfName: "eth0", Created: old},
		{IP: netip.MustParseAddr("10.244.1.4"), ContainerID: "adding", IfName: "eth0", Created: young},
		{IP: netip.MustParseAddr("10.244.1.5"), ContainerID: "inherited", IfName: "eth0"}, // no creation time
		{IP: netip.MustParseAddr("10.244.1.6"), ContainerID: "retry", IfName: "eth0", Created: old},
	}
	for _, r := range seed {
		if ok, err := st.Reserve(r); !ok || err != nil {
			t.Fatal(r, ok, err)
		}
	}
	var shown []string
	a.Reclaim = func(cands []Reservation) []Reservation {
		var stale []Reservation
		for _, r := range cands {
			shown = append(shown, r.ContainerID)
			if r.ContainerID == "lost" {
				stale = append(stale, r)
			}
		}
		// What it returns beyond the candidates is never released.
		return append(stale, seed[2], seed[3], seed[4])
	}
	got := mustAllocate(t, a, req("retry", "eth0"))
	if fmt.Sprint(shown) != "[lost live]" {
		t.Errorf("Reclaim was shown %v, want the old reservations of other attachments with a known age: [lost live]", shown)
	}
	if len(got) != 1 || got[0].IP != seed[4].IP {
		t.Errorf("the retried ADD got %v, want its own %s back", got, seed[4].IP)
	}
	held := heldIPs(t, st)
	if _, ok := held[seed[0].IP]; ok {
		t.Errorf("the stale reservation %s was not released", seed[0].IP)
	}
	for _, r := range seed[1:] {
		if _, ok := held[r.IP]; !ok {
			t.Errorf("%s (%s) was released; only the one Reclaim called stale may be", r.IP, r.ContainerID)
		}
	}
	// The reclaimed address is free again: a full range hands it out.
	full, fst := newAllocator(t, one("10.244.1.0/30")) // only .2 is usable
	full.Now = a.Now
	if _, err := fst.Reserve(seed[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := full.Allocate(req("next", "eth0")); !errors.Is(err, ErrExhausted) {
		t.Fatalf("without Reclaim: err = %v, want ErrExhausted", err)
	}
	full.Reclaim = func(cands []Reservation) []Reservation { return cands }
	if got := mustAllocate(t, full, req("next", "eth0")); got[0].IP != seed[0].IP {
		t.Errorf("got %v, want the reclaimed %s", got, seed[0].IP)
	}
	// No old reservation: Reclaim is not even asked (it costs the plugin a
	// look at the node's interfaces).
	fresh, _ := newAllocator(t, one("10.244.1.0/24"))
	fresh.Reclaim = func([]Reservation) []Reservation { t.Error("Reclaim asked with no old reservation"); return nil }
	mustAllocate(t, fresh, req("a", "eth0"))
	mustAllocate(t, fresh, req("b", "eth0"))
}

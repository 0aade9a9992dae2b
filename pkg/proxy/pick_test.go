package proxy

import "testing"

func TestPickAllocRanges(t *testing.T) {
	a := newPickAlloc()
	get := func(chain string, n int) block {
		t.Helper()
		b, err := a.block(TCP, chain, n)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	x := get("svc-x", 3)
	if x.size != 4 || x.m != pickMapFor(TCP, "svc-x") {
		t.Fatalf("3 endpoints: %+v, want a range of 4 in the chain's shard", x)
	}
	// Within a factor of four, the range stays: no key of the chain moves.
	for _, n := range []int{2, 4} {
		if b := get("svc-x", n); b != x {
			t.Errorf("%d endpoints: range %+v, want it kept (%+v)", n, b, x)
		}
	}
	// Growing past it: a new range; the old one is free for another chain
	// of the same map and size.
	grown := get("svc-x", 5)
	if grown.size != 8 || grown.base == x.base {
		t.Errorf("5 endpoints: %+v", grown)
	}
	a.release("svc-x")
	if l := a.free[grown.m][8]; len(l) != 1 || l[0] != grown.base {
		t.Errorf("released range not free: %v", a.free[grown.m])
	}
	// Ranges never overlap, whatever the order of requests.
	used := map[string]map[uint32]string{}
	for i, n := range []int{1, 7, 2, 33, 1, 16, 3} {
		chain := "svc-" + string(rune('a'+i))
		b := get(chain, n)
		if used[b.m] == nil {
			used[b.m] = map[uint32]string{}
		}
		for k := b.base; k < b.base+b.size; k++ {
			if o, taken := used[b.m][k]; taken {
				t.Fatalf("%s and %s share key %d of %s", o, chain, k, b.m)
			}
			used[b.m][k] = chain
		}
	}
	// Shrinking to a quarter: a smaller range.
	if b := get("svc-d", 8); b.size != 8 {
		t.Errorf("33 → 8 endpoints: %+v, want a range of 8", b)
	}
}

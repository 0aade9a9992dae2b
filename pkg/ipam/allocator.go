package ipam

import (
	"fmt"
	"math/big"
	"net/netip"
	"time"
)

// Allocator hands out addresses from range sets, recording them in a Store.
type Allocator struct {
	Sets     []RangeSet
	Reserved []netip.Prefix // never handed out
	Store    Store
	Now      func() time.Time // for tests; time.Now when nil
	// Reclaim, when set, is shown at every Allocate (under the store's
	// lock) the reservations of other attachments made at least StaleAfter
	// ago, and returns those that are stale: Allocate releases them before
	// it hands addresses out. It is how a leak that no runtime ever sends a
	// DEL or a GC for (a sandbox whose runtime lost it) goes; the plugin
	// calls stale those whose pod interface is gone. Reservations of
	// unknown age (host-local's, inherited) are never shown.
	Reclaim func(old []Reservation) (stale []Reservation)
}

// StaleAfter is how old a reservation must be before Reclaim may judge it:
// far longer than an ADD runs between reserving the address and creating
// the interface that carries it (milliseconds; a runtime gives up on an
// ADD and kills the plugin after a few minutes), so a reservation whose
// ADD is still running is never taken for a leak.
const StaleAfter = 10 * time.Minute

// Request is who asks for addresses.
type Request struct {
	Attachment
	PodNamespace, PodName string
}

// Allocate returns one reservation per range set for req. It is idempotent:
// an attachment that already holds addresses (an ADD retried after a crash)
// gets the same ones back. When any set is exhausted, nothing is kept.
func (a *Allocator) Allocate(req Request) ([]Reservation, error) {
	unlock, err := a.Store.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	all, err := a.Store.List()
	if err != nil {
		return nil, err
	}
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	all = a.reclaim(all, req.Attachment, now())
	held := make(map[netip.Addr]bool, len(all))
	mine := map[int]Reservation{}
	for _, r := range all {
		held[r.IP] = true
		if r.Attachment() == req.Attachment {
			if i := a.setOf(r.IP); i >= 0 {
				mine[i] = r
			}
		}
	}
	var got []Reservation
	var fresh []netip.Addr
	undo := func() {
		for _, ip := range fresh {
			_ = a.Store.Release(ip) // best effort; the caller reports the first error
		}
	}
	for i, set := range a.Sets {
		if r, ok := mine[i]; ok {
			got = append(got, r)
			continue
		}
		r, err := a.allocateIn(i, set, held, Reservation{
			ContainerID: req.ContainerID, IfName: req.IfName,
			PodNamespace: req.PodNamespace, PodName: req.PodName,
			Created: now().UTC().Truncate(time.Second),
		})
		if err != nil {
			undo()
			return nil, err
		}
		fresh = append(fresh, r.IP)
		got = append(got, r)
	}
	return got, nil
}

// reclaim releases the reservations Reclaim calls stale among those of
// other attachments older than StaleAfter, and returns the rest of all. A
// reservation that cannot be released stays held.
func (a *Allocator) reclaim(all []Reservation, requester Attachment, now time.Time) []Reservation {
	if a.Reclaim == nil {
		return all
	}
	var old []Reservation
	for _, r := range all {
		if r.Attachment() != requester && !r.Created.IsZero() && now.Sub(r.Created) >= StaleAfter {
			old = append(old, r)
		}
	}
	if len(old) == 0 {
		return all
	}
	gone := map[netip.Addr]bool{}
	for _, r := range a.Reclaim(old) {
		if r.Attachment() != requester && !r.Created.IsZero() && now.Sub(r.Created) >= StaleAfter && a.Store.Release(r.IP) == nil {
			gone[r.IP] = true
		}
	}
	if len(gone) == 0 {
		return all
	}
	kept := make([]Reservation, 0, len(all)-len(gone))
	for _, r := range all {
		if !gone[r.IP] {
			kept = append(kept, r)
		}
	}
	return kept
}

// allocateIn finds the first free address of set i after the last one handed
// out (round-robin, so a released address is not reused at once and stale
// conntrack or ARP state of its previous owner has time to age out).
func (a *Allocator) allocateIn(i int, set RangeSet, held map[netip.Addr]bool, r Reservation) (Reservation, error) {
	last, err := a.Store.LastReserved(i)
	if err != nil {
		return r, err
	}
	start, ok := a.skipReserved(set, a.after(set, last))
	ip := start
	for ok {
		if !held[ip] && a.inSet(set, ip) {
			r.IP = ip
			took, err := a.Store.Reserve(r)
			if err != nil {
				return r, err
			}
			if took {
				held[ip] = true
				if err := a.Store.SetLastReserved(i, ip); err != nil {
					_ = a.Store.Release(ip)
					return r, err
				}
				return r, nil
			}
		}
		// start is not reserved and only reserved addresses are skipped, so
		// the walk comes back to start exactly.
		if ip, ok = a.skipReserved(set, a.after(set, ip)); ip == start {
			break
		}
	}
	return r, fmt.Errorf("%s range %s: %w", set.Family(), describe(set), ErrExhausted)
}

// skipReserved returns the first address from ip on (in the set's cyclic
// order) that is not reserved, jumping over a reserved prefix at once: a
// reserved IPv6 /64 must not be walked address by address. ok is false when
// every address of the set is reserved.
func (a *Allocator) skipReserved(set RangeSet, ip netip.Addr) (netip.Addr, bool) {
	// Each jump passes one reserved prefix within one range, so a set with a
	// free address reaches it within one cycle through all those pairs.
	for range 2*len(a.Reserved)*len(set) + 2 {
		p, ok := a.reservedPrefix(ip)
		if !ok {
			return ip, true
		}
		_, end := bounds(p)
		for _, r := range set {
			if ip.Compare(r.Start) >= 0 && ip.Compare(r.End) <= 0 && end.Compare(r.End) > 0 {
				end = r.End
			}
		}
		ip = a.after(set, end)
	}
	return ip, false
}

// after returns the address following ip in the set, wrapping around; an
// address outside the set restarts at the set's first address.
func (a *Allocator) after(set RangeSet, ip netip.Addr) netip.Addr {
	for k, r := range set {
		if ip.IsValid() && ip.Compare(r.Start) >= 0 && ip.Compare(r.End) <= 0 {
			if n := ip.Next(); n.IsValid() && n.Compare(r.End) <= 0 {
				return n
			}
			return set[(k+1)%len(set)].Start
		}
	}
	return set[0].Start
}

func (a *Allocator) inSet(set RangeSet, ip netip.Addr) bool {
	for _, r := range set {
		if r.Contains(ip) {
			return true
		}
	}
	return false
}

func (a *Allocator) setOf(ip netip.Addr) int {
	for i, set := range a.Sets {
		if a.inSet(set, ip) {
			return i
		}
	}
	return -1
}

func (a *Allocator) reserved(ip netip.Addr) bool {
	_, ok := a.reservedPrefix(ip)
	return ok
}

// reservedPrefix returns the largest reserved prefix that holds ip.
func (a *Allocator) reservedPrefix(ip netip.Addr) (netip.Prefix, bool) {
	var best netip.Prefix
	for _, p := range a.Reserved {
		if p.Contains(ip) && (!best.IsValid() || p.Bits() < best.Bits()) {
			best = p
		}
	}
	return best, best.IsValid()
}

func describe(set RangeSet) string {
	s := ""
	for i, r := range set {
		if i > 0 {
			s += ","
		}
		s += r.Subnet.String()
	}
	return s
}

// Release frees every address held by att and returns them. Releasing an
// attachment that holds nothing is no error (CNI DEL is idempotent).
func (a *Allocator) Release(att Attachment) ([]Reservation, error) {
	return a.releaseWhere(func(r Reservation) bool { return r.Attachment() == att })
}

// GC frees every address whose attachment is not in valid.
func (a *Allocator) GC(valid map[Attachment]bool) ([]Reservation, error) {
	return a.releaseWhere(func(r Reservation) bool { return !valid[r.Attachment()] })
}

func (a *Allocator) releaseWhere(match func(Reservation) bool) ([]Reservation, error) {
	unlock, err := a.Store.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	all, err := a.Store.List()
	if err != nil {
		return nil, err
	}
	var out []Reservation
	for _, r := range all {
		if !match(r) {
			continue
		}
		if err := a.Store.Release(r.IP); err != nil {
			return out, err
		}
		out = append(out, r)
	}
	return out, nil
}

// Lookup returns the reservations held by att.
func (a *Allocator) Lookup(att Attachment) ([]Reservation, error) {
	unlock, err := a.Store.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	all, err := a.Store.List()
	if err != nil {
		return nil, err
	}
	var out []Reservation
	for _, r := range all {
		if r.Attachment() == att {
			out = append(out, r)
		}
	}
	return out, nil
}

// CheckFree returns nil when every range set has at least one free address,
// else an error wrapping ErrExhausted naming the full set.
func (a *Allocator) CheckFree() error {
	unlock, err := a.Store.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	all, err := a.Store.List()
	if err != nil {
		return err
	}
	for _, set := range a.Sets {
		// Big integers: a huge IPv6 range saturates Range.Size, and
		// subtracting a reserved /64 from a saturated size would be wrong.
		size := new(big.Int)
		for _, r := range set {
			size.Add(size, r.count())
			size.Sub(size, a.reservedIn(r))
		}
		free := new(big.Int).Set(size)
		for _, r := range all {
			// An address reserved after it was handed out is already
			// subtracted from size.
			if a.inSet(set, r.IP) && !a.reserved(r.IP) {
				free.Sub(free, big.NewInt(1))
			}
		}
		if free.Sign() <= 0 {
			return fmt.Errorf("%s range %s: all %s addresses are taken: %w", set.Family(), describe(set), size, ErrExhausted)
		}
	}
	return nil
}

// reservedIn counts the configured reserved addresses that fall in r,
// arithmetically (a reserved IPv6 /64 must not be walked). A prefix inside
// another reserved prefix (or listed twice) is counted once.
func (a *Allocator) reservedIn(r Range) *big.Int {
	n := new(big.Int)
	for i, p := range a.Reserved {
		if a.covered(i) || p.Addr().Is4() != r.Start.Is4() {
			continue
		}
		first, last := bounds(p)
		if first.Compare(r.Start) < 0 {
			first = r.Start
		}
		if last.Compare(r.End) > 0 {
			last = r.End
		}
		if first.Compare(last) > 0 {
			continue
		}
		n.Add(n, Range{Start: first, End: last, Gateway: r.Gateway}.count())
	}
	return n
}

// covered reports whether reserved prefix i lies inside another reserved
// prefix (two prefixes are either disjoint or nested; of equal ones, the
// first counts).
func (a *Allocator) covered(i int) bool {
	p := a.Reserved[i]
	for j, q := range a.Reserved {
		if j != i && q.Bits() <= p.Bits() && q.Contains(p.Addr()) && (q.Bits() < p.Bits() || j < i) {
			return true
		}
	}
	return false
}

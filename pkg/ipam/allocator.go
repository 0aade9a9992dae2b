package ipam

import (
	"fmt"
	"net/netip"
	"time"
)

// Allocator hands out addresses from range sets, recording them in a Store.
type Allocator struct {
	Sets     []RangeSet
	Reserved []netip.Prefix // never handed out
	Store    Store
	Now      func() time.Time // for tests; time.Now when nil
}

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
	now := time.Now
	if a.Now != nil {
		now = a.Now
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

// allocateIn finds the first free address of set i after the last one handed
// out (round-robin, so a released address is not reused at once and stale
// conntrack or ARP state of its previous owner has time to age out).
func (a *Allocator) allocateIn(i int, set RangeSet, held map[netip.Addr]bool, r Reservation) (Reservation, error) {
	last, err := a.Store.LastReserved(i)
	if err != nil {
		return r, err
	}
	start := a.after(set, last)
	ip := start
	for {
		if !held[ip] && !a.reserved(ip) && a.inSet(set, ip) {
			r.IP = ip
			ok, err := a.Store.Reserve(r)
			if err != nil {
				return r, err
			}
			if ok {
				held[ip] = true
				if err := a.Store.SetLastReserved(i, ip); err != nil {
					_ = a.Store.Release(ip)
					return r, err
				}
				return r, nil
			}
		}
		ip = a.after(set, ip)
		if ip == start {
			return r, fmt.Errorf("%s range %s: %w", set.Family(), describe(set), ErrExhausted)
		}
	}
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
	for _, p := range a.Reserved {
		if p.Contains(ip) {
			return true
		}
	}
	return false
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
		var used uint64
		for _, r := range all {
			if a.inSet(set, r.IP) {
				used++
			}
		}
		var size uint64
		for _, r := range set {
			size += r.Size() - a.reservedIn(r)
		}
		if used >= size {
			return fmt.Errorf("%s range %s: all %d addresses are taken: %w", set.Family(), describe(set), size, ErrExhausted)
		}
	}
	return nil
}

// reservedIn counts the configured reserved addresses that fall in r,
// arithmetically (a reserved IPv6 /64 must not be walked).
func (a *Allocator) reservedIn(r Range) uint64 {
	var n uint64
	for _, p := range a.Reserved {
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
		n += Range{Start: first, End: last, Gateway: r.Gateway}.Size()
	}
	return n
}

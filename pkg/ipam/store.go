package ipam

import (
	"net/netip"
	"sort"
	"sync"
	"time"
)

// Attachment identifies one interface of one container: the key of every
// reservation and of the CNI GC's list of valid attachments.
type Attachment struct {
	ContainerID string
	IfName      string
}

// Reservation is one address held by one attachment.
type Reservation struct {
	IP           netip.Addr `json:"ip"`
	ContainerID  string     `json:"containerID"`
	IfName       string     `json:"ifName"`
	PodNamespace string     `json:"podNamespace,omitempty"`
	PodName      string     `json:"podName,omitempty"`
	Created      time.Time  `json:"created"`
}

// Attachment returns the reservation's key.
func (r Reservation) Attachment() Attachment {
	return Attachment{ContainerID: r.ContainerID, IfName: r.IfName}
}

// Store keeps reservations. Every method but Lock must be called with the
// lock held; the lock is exclusive across processes for the DiskStore.
type Store interface {
	// Lock takes the store's exclusive lock and returns the function that
	// releases it.
	Lock() (unlock func(), err error)
	// List returns every reservation.
	List() ([]Reservation, error)
	// Reserve records r; it returns false, nil when r.IP is already held.
	Reserve(r Reservation) (bool, error)
	// Release forgets the reservation of ip; releasing a free address is no error.
	Release(ip netip.Addr) error
	// LastReserved returns the address most recently handed out from range
	// set i (the allocator continues after it, so addresses are not reused
	// at once).
	LastReserved(i int) (netip.Addr, error)
	SetLastReserved(i int, ip netip.Addr) error
}

// MemStore is an in-memory Store for tests.
type MemStore struct {
	mu   sync.Mutex
	held map[netip.Addr]Reservation
	last map[int]netip.Addr
	// FailReserve, when set, makes Reserve fail with it (to test error paths).
	FailReserve error
}

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore {
	return &MemStore{held: map[netip.Addr]Reservation{}, last: map[int]netip.Addr{}}
}

func (m *MemStore) Lock() (func(), error) { m.mu.Lock(); return m.mu.Unlock, nil }

func (m *MemStore) List() ([]Reservation, error) {
	out := make([]Reservation, 0, len(m.held))
	for _, r := range m.held {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out, nil
}

func (m *MemStore) Reserve(r Reservation) (bool, error) {
	if m.FailReserve != nil {
		return false, m.FailReserve
	}
	if _, ok := m.held[r.IP]; ok {
		return false, nil
	}
	m.held[r.IP] = r
	return true, nil
}

func (m *MemStore) Release(ip netip.Addr) error { delete(m.held, ip); return nil }

func (m *MemStore) LastReserved(i int) (netip.Addr, error) { return m.last[i], nil }

func (m *MemStore) SetLastReserved(i int, ip netip.Addr) error { m.last[i] = ip; return nil }

package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultDataDir is where DiskStore keeps reservations unless configured.
const DefaultDataDir = "/var/lib/cni/podnet"

const (
	lockFile   = "lock"
	lastPrefix = "last_reserved_ip."
	tmpPrefix  = ".tmp-"
)

// StoreFile reports whether name is a file DiskStore writes in a network's
// directory: a reservation (named by its address), the lock, a round-robin
// position, or a temporary that a killed writer may leave. Anything else
// there is someone else's.
func StoreFile(name string) bool {
	if _, err := netip.ParseAddr(name); err == nil {
		return true
	}
	return name == lockFile || strings.HasPrefix(name, lastPrefix) || strings.HasPrefix(name, tmpPrefix)
}

// DiskStore keeps one file per reserved address, named by the address (as
// host-local does, so `ls` shows what is taken), holding the reservation as
// JSON. A reservation is written to an unnamed file (O_TMPFILE; a named
// temporary where the filesystem lacks it) and then linked to its final
// name: link fails if the name exists, and a process killed at any point
// leaves either a complete reservation or nothing (at worst a stray named
// temporary, which the next List under the lock removes), never a
// half-written one.
type DiskStore struct {
	dir string
}

// NewDiskStore opens (creating it if needed) the store of one network.
func NewDiskStore(dataDir, network string) (*DiskStore, error) {
	if dataDir == "" {
		dataDir = DefaultDataDir
	}
	dir := filepath.Join(dataDir, network)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create reservation store %s: %w", dir, err)
	}
	return &DiskStore{dir: dir}, nil
}

// Dir is the store's directory.
func (d *DiskStore) Dir() string { return d.dir }

// Lock takes an exclusive flock on the store's lock file. The kernel drops
// the lock when the process dies, so a killed plugin never wedges the store.
func (d *DiskStore) Lock() (func(), error) {
	f, err := os.OpenFile(filepath.Join(d.dir, lockFile), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock of %s: %w", d.dir, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", d.dir, err)
	}
	return func() { f.Close() }, nil // closing the file releases the flock
}

func (d *DiskStore) path(ip netip.Addr) string { return filepath.Join(d.dir, ip.String()) }

func (d *DiskStore) List() ([]Reservation, error) {
	ents, err := os.ReadDir(d.dir)
	if err != nil {
		return nil, fmt.Errorf("list reservations in %s: %w", d.dir, err)
	}
	var out []Reservation
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			// Left by a process killed while it held the lock (List runs
			// under the lock, so no live writer owns it).
			os.Remove(filepath.Join(d.dir, e.Name()))
			continue
		}
		ip, err := netip.ParseAddr(e.Name())
		if err != nil {
			continue // lock, last_reserved_ip.*
		}
		b, err := os.ReadFile(filepath.Join(d.dir, e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read reservation %s: %w", e.Name(), err)
		}
		r := decodeReservation(b)
		r.IP = ip
		out = append(out, r)
	}
	return out, nil
}

// decodeReservation reads our JSON, or host-local's "id\r\nifname" lines so a
// store inherited from host-local is understood.
func decodeReservation(b []byte) Reservation {
	var r Reservation
	if json.Unmarshal(b, &r) == nil {
		return r
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	r.ContainerID = strings.TrimSpace(lines[0])
	if len(lines) > 1 {
		r.IfName = strings.TrimSpace(lines[1])
	}
	return r
}

func (d *DiskStore) Reserve(r Reservation) (bool, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return false, fmt.Errorf("encode reservation %s: %w", r.IP, err)
	}
	ok, err := d.reserveTmpfile(r.IP, b)
	if errors.Is(err, errNoTmpfile) {
		ok, err = d.reserveTemp(r.IP, b)
	}
	return ok, err
}

var errNoTmpfile = errors.New("O_TMPFILE not supported")

// reserveTmpfile writes the reservation into an unnamed inode (O_TMPFILE)
// and links it in under its address: a kill before the link leaves nothing
// at all, and no directory entry is created and removed for a temporary.
func (d *DiskStore) reserveTmpfile(ip netip.Addr, b []byte) (bool, error) {
	fd, err := unix.Open(d.dir, unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EINVAL) {
			return false, errNoTmpfile
		}
		return false, fmt.Errorf("write reservation %s: %w", ip, &fs.PathError{Op: "open", Path: d.dir, Err: err})
	}
	f := os.NewFile(uintptr(fd), d.dir)
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		return false, fmt.Errorf("write reservation %s: %w", ip, err)
	}
	err = unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), unix.AT_FDCWD, d.path(ip), unix.AT_SYMLINK_FOLLOW)
	if errors.Is(err, unix.EEXIST) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store reservation %s: %w", ip, &fs.PathError{Op: "link", Path: d.path(ip), Err: err})
	}
	return true, nil
}

// reserveTemp is the fallback for filesystems without O_TMPFILE: a named
// temporary, hard-linked to the address (link fails if the name exists).
func (d *DiskStore) reserveTemp(ip netip.Addr, b []byte) (bool, error) {
	tmp := filepath.Join(d.dir, tmpPrefix+ip.String()+"."+strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		os.Remove(tmp)
		return false, fmt.Errorf("write reservation %s: %w", ip, err)
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, d.path(ip)); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		return false, fmt.Errorf("store reservation %s: %w", ip, err)
	}
	return true, nil
}

func (d *DiskStore) Release(ip netip.Addr) error {
	if err := os.Remove(d.path(ip)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("release %s: %w", ip, err)
	}
	return nil
}

func (d *DiskStore) LastReserved(i int) (netip.Addr, error) {
	b, err := os.ReadFile(filepath.Join(d.dir, lastPrefix+strconv.Itoa(i)))
	if errors.Is(err, fs.ErrNotExist) {
		return netip.Addr{}, nil
	}
	if err != nil {
		return netip.Addr{}, fmt.Errorf("read last reserved address: %w", err)
	}
	a, _ := netip.ParseAddr(strings.TrimSpace(string(b)))
	return a, nil // a corrupt file only costs the round-robin position
}

// SetLastReserved overwrites the file in place at a fixed width: no
// temporary file and no rename, which on ext4 cost more than the rest of
// the reservation. A kill mid-write can only leave a garbled position, which
// LastReserved reads as "none" (the round-robin restarts at the range start).
func (d *DiskStore) SetLastReserved(i int, ip netip.Addr) error {
	p := filepath.Join(d.dir, lastPrefix+strconv.Itoa(i))
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("write last reserved address: %w", err)
	}
	// 39 characters hold any IPv6 address in text form; pad with spaces.
	_, werr := fmt.Fprintf(f, "%-39s", ip.String())
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("write last reserved address: %w", werr)
	}
	return nil
}

// Writable checks that a reservation could be written now.
func (d *DiskStore) Writable() error {
	f, err := os.CreateTemp(d.dir, tmpPrefix+"probe-")
	if err != nil {
		return fmt.Errorf("reservation store %s is not writable: %w", d.dir, err)
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}

package ipam

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func newDisk(t *testing.T, dataDir string) *DiskStore {
	t.Helper()
	d, err := NewDiskStore(dataDir, "podnet-test")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func diskAllocator(t *testing.T, st Store, subnet string) *Allocator {
	t.Helper()
	return &Allocator{Sets: mustParse(t, one(subnet)), Store: st}
}

func TestDiskStoreCreatesNetworkDir(t *testing.T) {
	data := t.TempDir()
	d := newDisk(t, data)
	if want := filepath.Join(data, "podnet-test"); d.Dir() != want {
		t.Errorf("Dir() = %s, want %s", d.Dir(), want)
	}
	if fi, err := os.Stat(d.Dir()); err != nil || !fi.IsDir() {
		t.Errorf("store dir: %v", err)
	}
}

func TestDiskStoreSurvivesReopen(t *testing.T) {
	data := t.TempDir()
	a := diskAllocator(t, newDisk(t, data), "10.244.1.0/24")
	first := mustAllocate(t, a, req("c1", "eth0"))

	// A new process: a new store on the same directory.
	b := diskAllocator(t, newDisk(t, data), "10.244.1.0/24")
	got, err := b.Lookup(Attachment{ContainerID: "c1", IfName: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].IP != first[0].IP || got[0].PodNamespace != "ns-c1" || got[0].PodName != "pod-c1" {
		t.Fatalf("after reopening, Lookup = %+v, want %+v", got, first)
	}
	if !got[0].Created.Equal(first[0].Created) {
		t.Errorf("Created = %s, want %s", got[0].Created, first[0].Created)
	}
	// Idempotent across processes, and round-robin continues.
	if again := mustAllocate(t, b, req("c1", "eth0")); again[0].IP != first[0].IP {
		t.Errorf("retried ADD after reopen got %s, want %s", again[0].IP, first[0].IP)
	}
	if _, err := b.Release(Attachment{ContainerID: "c1", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	c := diskAllocator(t, newDisk(t, data), "10.244.1.0/24")
	if next := mustAllocate(t, c, req("c2", "eth0")); next[0].IP == first[0].IP {
		t.Errorf("released %s handed out again at once after reopening", first[0].IP)
	}
	if held := heldIPs(t, newDisk(t, data)); len(held) != 1 {
		t.Errorf("store holds %v, want 1 reservation", held)
	}
}

func TestDiskStoreFileFormat(t *testing.T) {
	d := newDisk(t, t.TempDir())
	got := mustAllocate(t, diskAllocator(t, d, "10.244.1.0/24"), req("c1", "eth0"))
	b, err := os.ReadFile(filepath.Join(d.Dir(), got[0].IP.String()))
	if err != nil {
		t.Fatalf("the reservation file is not named by its IP: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("reservation file %q is not JSON: %v", b, err)
	}
	for k, want := range map[string]string{"containerID": "c1", "ifName": "eth0", "podNamespace": "ns-c1", "podName": "pod-c1"} {
		if m[k] != want {
			t.Errorf("file field %q = %v, want %q (file: %s)", k, m[k], want, b)
		}
	}
}

func TestDiskStoreReadsHostLocalFiles(t *testing.T) {
	d := newDisk(t, t.TempDir())
	for name, body := range map[string]string{
		"10.244.1.2": "abc123\r\neth0",
		"10.244.1.3": "def456\r\nnet1\r\n",
		"10.244.1.4": "ghi789", // the oldest host-local format: the ID alone
	} {
		if err := os.WriteFile(filepath.Join(d.Dir(), name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	held := heldIPs(t, d)
	want := map[string]Attachment{
		"10.244.1.2": {ContainerID: "abc123", IfName: "eth0"},
		"10.244.1.3": {ContainerID: "def456", IfName: "net1"},
		"10.244.1.4": {ContainerID: "ghi789"},
	}
	if len(held) != len(want) {
		t.Fatalf("List = %v, want %v", held, want)
	}
	for ip, att := range want {
		if got := held[netip.MustParseAddr(ip)].Attachment(); got != att {
			t.Errorf("%s: attachment %+v, want %+v", ip, got, att)
		}
	}
	// The allocator respects and can release them.
	a := diskAllocator(t, d, "10.244.1.0/24")
	if got := mustAllocate(t, a, req("new", "eth0")); got[0].IP == netip.MustParseAddr("10.244.1.2") ||
		got[0].IP == netip.MustParseAddr("10.244.1.3") || got[0].IP == netip.MustParseAddr("10.244.1.4") {
		t.Errorf("allocated %s, held by host-local", got[0].IP)
	}
	if rel, err := a.Release(Attachment{ContainerID: "abc123", IfName: "eth0"}); err != nil || len(rel) != 1 {
		t.Errorf("Release of a host-local reservation = %v, %v", rel, err)
	}
	if _, err := os.Stat(filepath.Join(d.Dir(), "10.244.1.2")); !os.IsNotExist(err) {
		t.Errorf("released file still there: %v", err)
	}
}

func TestDiskStoreRemovesStrayTemporaries(t *testing.T) {
	d := newDisk(t, t.TempDir())
	// A process killed between writing its temporary and linking it.
	stray := filepath.Join(d.Dir(), ".tmp-10.244.1.2.4242")
	if err := os.WriteFile(stray, []byte(`{"containerID":"dead","ifNa`), 0o600); err != nil {
		t.Fatal(err)
	}
	unlock, err := d.Lock()
	if err != nil {
		t.Fatal(err)
	}
	all, err := d.List()
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 0 {
		t.Errorf("List = %+v, want no reservation from a stray temporary", all)
	}
	if _, err := os.Stat(stray); !os.IsNotExist(err) {
		t.Errorf("stray temporary survived Lock: %v", err)
	}
	// And the address it was about to take is free.
	got := mustAllocate(t, diskAllocator(t, d, "10.244.1.0/24"), req("c1", "eth0"))
	if got[0].IP != netip.MustParseAddr("10.244.1.2") {
		t.Errorf("got %s, want the free 10.244.1.2", got[0].IP)
	}
	ents, _ := os.ReadDir(d.Dir())
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			t.Errorf("a temporary is left after a successful allocation: %s", e.Name())
		}
	}
}

func TestDiskStoreReserveTaken(t *testing.T) {
	d := newDisk(t, t.TempDir())
	unlock, err := d.Lock()
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ip := netip.MustParseAddr("10.244.1.9")
	if ok, err := d.Reserve(Reservation{IP: ip, ContainerID: "a", IfName: "eth0"}); !ok || err != nil {
		t.Fatalf("first Reserve = %v, %v", ok, err)
	}
	if ok, err := d.Reserve(Reservation{IP: ip, ContainerID: "b", IfName: "eth0"}); ok || err != nil {
		t.Fatalf("Reserve of a taken address = %v, %v; want false, nil", ok, err)
	}
	all, err := d.List()
	if err != nil || len(all) != 1 || all[0].ContainerID != "a" {
		t.Errorf("List = %+v, %v; want only a's reservation", all, err)
	}
	if err := d.Release(ip); err != nil {
		t.Fatal(err)
	}
	if err := d.Release(ip); err != nil {
		t.Errorf("releasing a free address = %v, want nil", err)
	}
	if ok, err := d.Reserve(Reservation{IP: ip, ContainerID: "b", IfName: "eth0"}); !ok || err != nil {
		t.Errorf("Reserve after Release = %v, %v", ok, err)
	}
}

func TestDiskStoreLastReservedIsPerSet(t *testing.T) {
	d := newDisk(t, t.TempDir())
	unlock, err := d.Lock()
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if got, err := d.LastReserved(0); err != nil || got.IsValid() {
		t.Errorf("LastReserved on a new store = %v, %v; want invalid, nil", got, err)
	}
	v4, v6 := netip.MustParseAddr("10.244.1.7"), netip.MustParseAddr("fd00::7")
	if err := d.SetLastReserved(0, v4); err != nil {
		t.Fatal(err)
	}
	if err := d.SetLastReserved(1, v6); err != nil {
		t.Fatal(err)
	}
	if got, _ := d.LastReserved(0); got != v4 {
		t.Errorf("LastReserved(0) = %s, want %s", got, v4)
	}
	if got, _ := d.LastReserved(1); got != v6 {
		t.Errorf("LastReserved(1) = %s, want %s", got, v6)
	}
	if all, _ := d.List(); len(all) != 0 {
		t.Errorf("bookkeeping files listed as reservations: %+v", all)
	}
}

func TestDiskStoreConcurrentProcesses(t *testing.T) {
	data := t.TempDir()
	const n = 32
	var wg sync.WaitGroup
	ips := make([]netip.Addr, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each its own store, as each plugin process opens its own: the
			// flock is per open file description, so these exclude each
			// other exactly as separate processes do.
			st, err := NewDiskStore(data, "podnet-test")
			if err != nil {
				errs[i] = err
				return
			}
			sets, err := ParseRangeSets(one("10.244.1.0/24"))
			if err != nil {
				errs[i] = err
				return
			}
			a := &Allocator{Sets: sets, Store: st}
			got, err := a.Allocate(req(fmt.Sprintf("c%02d", i), "eth0"))
			if err != nil {
				errs[i] = err
				return
			}
			ips[i] = got[0].IP
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("allocation %d: %v", i, errs[i])
		}
		if j, dup := seen[ips[i]]; dup {
			t.Errorf("%s handed to both c%02d and c%02d", ips[i], j, i)
		}
		seen[ips[i]] = i
	}
	held := heldIPs(t, newDisk(t, data))
	if len(held) != n {
		t.Errorf("store holds %d reservations, want %d", len(held), n)
	}
	for ip, i := range seen {
		if r, ok := held[ip]; !ok || r.ContainerID != fmt.Sprintf("c%02d", i) {
			t.Errorf("%s: stored %+v, want c%02d", ip, r, i)
		}
	}
}

func TestDiskStoreUnwritable(t *testing.T) {
	// Root ignores directory permissions, so a path under a regular file
	// (ENOTDIR) stands in for an unusable data directory.
	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewDiskStore(file, "net"); err == nil {
		t.Error("NewDiskStore under a regular file succeeded")
	} else if !strings.Contains(err.Error(), file) {
		t.Errorf("error %q does not name the directory", err)
	}
}

func TestDiskStoreReadOnlyDir(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root ignores directory permissions; TestDiskStoreUnwritable covers the error path")
	}
	d := newDisk(t, t.TempDir())
	if err := os.Chmod(d.Dir(), 0o500); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(d.Dir(), 0o755) })
	if err := d.Writable(); err == nil {
		t.Error("Writable() on a read-only directory = nil")
	}
	if _, err := diskAllocator(t, d, "10.244.1.0/24").Allocate(req("c1", "eth0")); err == nil {
		t.Error("Allocate into a read-only store succeeded")
	}
}

func TestDiskStoreStoreGoneAfterOpen(t *testing.T) {
	// The directory replaced by a file after the store was opened: every
	// operation fails with an error instead of panicking.
	d := newDisk(t, t.TempDir())
	if err := d.Writable(); err != nil {
		t.Fatalf("Writable() on a fresh store = %v", err)
	}
	if err := os.RemoveAll(d.Dir()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.Dir(), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.Writable(); err == nil {
		t.Error("Writable() = nil on a store whose directory is a file")
	}
	if _, err := diskAllocator(t, d, "10.244.1.0/24").Allocate(req("c1", "eth0")); err == nil {
		t.Error("Allocate succeeded on a store whose directory is a file")
	}
	if err := diskAllocator(t, d, "10.244.1.0/24").CheckFree(); err == nil {
		t.Error("CheckFree succeeded on a store whose directory is a file")
	}
}

func TestStoreFile(t *testing.T) {
	for name, want := range map[string]bool{
		"10.244.1.5": true, "fd00::5": true, "lock": true, "last_reserved_ip.0": true, ".tmp-123": true,
		"notes.txt": false, "lock.bak": false, "10.244.1": false, "": false,
	} {
		if got := StoreFile(name); got != want {
			t.Errorf("StoreFile(%q) = %v, want %v", name, got, want)
		}
	}
}

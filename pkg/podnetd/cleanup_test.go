package podnetd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet/pkg/ipam"
	"github.com/podnet/podnet/pkg/netconf"
	"github.com/podnet/podnet/pkg/wire"
)

// Unit tests of the file side of the cleanup (the kernel side is in
// cleanup_kernel_test.go).

func TestCleanupConflist(t *testing.T) {
	dir := t.TempDir()
	if _, err := netconf.WriteConflist(dir, netconf.Conflist("10.244.1.0/24", 1450, "/data/podnet", "")); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "05-other.conflist")
	writeFile(t, other, `{"name":"other","plugins":[{"type":"bridge"}]}`)
	writeFile(t, filepath.Join(dir, netconf.ConflistName+".tmp"), "half")
	nw := podnetNetwork{Name: "podnet", Bridge: "cni0", DataDir: "/default"}
	var rep CleanupReport
	if err := cleanupConflist(dir, &nw, &rep); err != nil {
		t.Fatal(err)
	}
	if nw.DataDir != "/data/podnet" || nw.Bridge != "cni0" || nw.Name != "podnet" {
		t.Errorf("learnt %+v from the conflist", nw)
	}
	if len(rep.Removed) != 2 || len(rep.Kept) != 0 {
		t.Errorf("report %+v", rep)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 || ents[0].Name() != "05-other.conflist" {
		t.Errorf("left %v; want only the foreign conflist", ents)
	}
	rep = CleanupReport{}
	if err := cleanupConflist(dir, &nw, &rep); err != nil || len(rep.Removed)+len(rep.Kept) != 0 {
		t.Errorf("second run: %+v, %v", rep, err)
	}
}

func TestCleanupConflistNotPodnets(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, netconf.ConflistName)
	writeFile(t, path, `{"name":"podnet","plugins":[{"type":"bridge","bridge":"br9"}]}`)
	nw := podnetNetwork{Bridge: "cni0"}
	var rep CleanupReport
	if err := cleanupConflist(dir, &nw, &rep); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil || len(rep.Kept) != 1 || nw.Bridge != "cni0" {
		t.Errorf("a foreign file of podnet's name: %v, %+v, %+v", err, rep, nw)
	}
}

// storeWith makes a reservation store in a temporary data directory with
// the podnet plugin's allocator, one reservation per container, created
// at t0.
func storeWith(t *testing.T, t0 time.Time, containers ...string) (dataDir string) {
	t.Helper()
	dataDir = filepath.Join(t.TempDir(), "podnet")
	st, err := ipam.NewDiskStore(dataDir, "podnet")
	if err != nil {
		t.Fatal(err)
	}
	sets, err := ipam.ParseRangeSets([][]ipam.RangeConf{{{Subnet: "10.244.1.0/24"}}})
	if err != nil {
		t.Fatal(err)
	}
	a := &ipam.Allocator{Sets: sets, Store: st, Now: func() time.Time { return t0 }}
	for _, c := range containers {
		if _, err := a.Allocate(ipam.Request{Attachment: ipam.Attachment{ContainerID: c, IfName: "eth0"}, PodNamespace: "default", PodName: "pod-" + c}); err != nil {
			t.Fatal(err)
		}
	}
	return dataDir
}

func TestCleanupStore(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	later := t0.Add(time.Hour)
	dataDir := storeWith(t, t0, "aaaa", "bbbb")
	dir := filepath.Join(dataDir, "podnet")
	nw := podnetNetwork{Name: "podnet", DataDir: dataDir}
	cfg := CleanupConfig{Grace: DefaultCleanupGrace, Now: func() time.Time { return later }}

	// Pod aaaa's veth is there: the store stays whole, stale bbbb too.
	links := map[string]bool{wire.HostName("aaaa", "eth0"): true, "eth0": true}
	var rep CleanupReport
	live, err := cleanupStore(cfg, nw, links, &rep)
	if err != nil {
		t.Fatal(err)
	}
	if len(live) != 1 || len(rep.Removed) != 0 || len(rep.Kept) != 1 || !strings.Contains(rep.Kept[0], "pod default/pod-aaaa") {
		t.Errorf("live %v, report %+v", live, rep)
	}
	if ents, _ := os.ReadDir(dir); len(ents) < 3 {
		t.Errorf("store emptied: %v", ents)
	}

	// A reservation younger than the grace, without its veth yet: an ADD
	// in progress keeps the store.
	rep = CleanupReport{}
	young := CleanupConfig{Grace: DefaultCleanupGrace, Now: func() time.Time { return t0.Add(10 * time.Second) }}
	if live, _ := cleanupStore(young, nw, map[string]bool{}, &rep); len(live) != 2 || !strings.Contains(rep.Kept[0], "its ADD may still be running") {
		t.Errorf("young: live %v, report %+v", live, rep)
	}

	// Every pod gone: stale reservations, the store and the data dir go.
	rep = CleanupReport{}
	if live, err := cleanupStore(cfg, nw, map[string]bool{}, &rep); err != nil || len(live) != 0 {
		t.Fatal(live, err)
	}
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Errorf("%s still there (%v); report %+v", dataDir, err, rep)
	}
	if len(rep.Removed) != 4 || len(rep.Kept) != 0 { // 2 reservations, the store, the data dir
		t.Errorf("report %+v", rep)
	}
	rep = CleanupReport{}
	if live, err := cleanupStore(cfg, nw, nil, &rep); err != nil || len(live) != 0 || len(rep.Removed)+len(rep.Kept) != 0 {
		t.Errorf("second run: %v %v %+v", live, err, rep)
	}
}

func TestCleanupStoreKeepsForeignFiles(t *testing.T) {
	dataDir := storeWith(t, time.Unix(0, 0))
	writeFile(t, filepath.Join(dataDir, "podnet", "notes.txt"), "mine")
	writeFile(t, filepath.Join(dataDir, "other-network"), "x")
	var rep CleanupReport
	if _, err := cleanupStore(CleanupConfig{Grace: time.Minute, Now: time.Now}, podnetNetwork{Name: "podnet", DataDir: dataDir}, nil, &rep); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "podnet", "notes.txt")); err != nil || len(rep.Kept) != 1 {
		t.Errorf("%v %+v", err, rep)
	}
}

func TestCleanupBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "podnet")
	writeFile(t, bin, "plugin")
	writeFile(t, filepath.Join(dir, InstallTempPrefix+"123"), "half")
	writeFile(t, filepath.Join(dir, "bridge"), "someone else's")
	var rep CleanupReport
	if err := cleanupBinary(CleanupConfig{CNIBinDir: dir}, nil, &rep); err != nil || len(rep.Kept) != 1 || !strings.Contains(rep.Kept[0], "--remove-cni-bin") {
		t.Errorf("not asked: %v %+v", err, rep)
	}
	rep = CleanupReport{}
	if err := cleanupBinary(CleanupConfig{CNIBinDir: dir, RemoveCNIBin: true}, []string{"veth1"}, &rep); err != nil || len(rep.Kept) != 1 || !strings.Contains(rep.Kept[0], "veth1") {
		t.Errorf("pods left: %v %+v", err, rep)
	}
	rep = CleanupReport{}
	if err := cleanupBinary(CleanupConfig{CNIBinDir: dir, RemoveCNIBin: true}, nil, &rep); err != nil || len(rep.Removed) != 2 {
		t.Errorf("asked: %v %+v", err, rep)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 || ents[0].Name() != "bridge" {
		t.Errorf("left %v", ents)
	}
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

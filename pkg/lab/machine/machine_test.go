package machine

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
)

func TestMachineIsItsOwnHostAndLeavesNothing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root")
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	// Under /run, as the lab's default state directory: the machine's own
	// /run must still show it.
	state, err := os.MkdirTemp("/run", "pntest-state-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	m := New(state, "pntest-m-"+hex.EncodeToString(b))
	if err := m.Create(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Destroy(); _ = ReleaseNSDir(state) })
	on := func(script string) string {
		out, err := m.Command("/bin/sh", "-c", script).CombinedOutput()
		if err != nil {
			t.Fatalf("on %s: %s: %v: %s", m.Name, script, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if h := on("hostname"); h != m.Name {
		t.Errorf("hostname on the machine: %q", h)
	}
	on("mkdir -p /etc/cni/net.d && echo x > /etc/cni/net.d/10-test.conf && mkdir -p /opt/cni/bin /var/lib/cni")
	for _, p := range []string{"/etc/cni/net.d/10-test.conf", "/opt/cni/bin", "/var/lib/cni"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s written on the machine appeared on the host", p)
		}
	}
	on("ip netns add pntest-pod-in-machine && ip link add brtest type bridge")
	if out := on("ip netns list"); out != "pntest-pod-in-machine" {
		t.Errorf("ip netns list on the machine: %q", out)
	}
	if _, err := os.Stat("/var/run/netns/pntest-pod-in-machine"); err == nil {
		t.Error("the machine's pod namespace is visible on the host")
	}
	if out := on("ls /sys/class/net"); !strings.Contains(out, "brtest") || strings.Contains(out, "eth0") {
		t.Errorf("/sys on the machine does not show its own interfaces: %q", out)
	}
	// The cgroup hierarchies are the host's, at the host's paths (kubelet
	// and runc need the v1 ones of a hybrid host).
	hostCG, _ := os.ReadDir("/sys/fs/cgroup")
	var want []string
	for _, e := range hostCG {
		want = append(want, e.Name())
	}
	if out := on("ls /sys/fs/cgroup | tr '\\n' ' '"); strings.Join(strings.Fields(out), " ") != strings.Join(want, " ") {
		t.Errorf("/sys/fs/cgroup on the machine: %q, on the host: %q", out, want)
	}
	if out := on("stat -f -c %T /sys/fs/cgroup/memory 2>/dev/null || stat -f -c %T /sys/fs/cgroup"); out != "cgroupfs" && out != "cgroup2fs" {
		t.Errorf("/sys/fs/cgroup on the machine is %q, not a cgroup hierarchy", out)
	}
	// /run is the machine's own; the lab's state directory is seen through.
	on("echo x > /run/pntest-run-probe")
	if _, err := os.Stat("/run/pntest-run-probe"); err == nil {
		os.Remove("/run/pntest-run-probe")
		t.Error("a file written in the machine's /run appeared on the host")
	}
	if out := on("ls " + state); !strings.Contains(out, "ns") {
		t.Errorf("the lab's state directory %s on the machine: %q", state, out)
	}
	if err := m.Destroy(); err != nil {
		t.Fatal(err)
	}
	if m.Exists() {
		t.Error("network namespace left after Destroy")
	}
	if err := ReleaseNSDir(state); err != nil {
		t.Fatal(err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), state) {
		t.Errorf("mounts left under %s:\n%s", state, mi)
	}
}

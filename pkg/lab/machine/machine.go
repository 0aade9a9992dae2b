// Package machine makes the lab's machines out of namespaces. A machine is
// a named network namespace (visible to `ip netns list` on the host) plus a
// persistent mount namespace and UTS namespace of its own, in which
//
//   - /etc, /opt, /var/lib and /var/log are overlays on the host's, private to the
//     machine (so /etc/cni/net.d, /opt/cni/bin and /var/lib/cni are the
//     machine's own and the host's stay untouched),
//   - /run is a tmpfs of its own (so `ip netns list` on a node shows that
//     node's pods only, and containerd's socket and state are the node's),
//   - /sys shows the machine's own interfaces (brctl reads it), with the
//     host's cgroup hierarchies (v1 and v2) at the host's paths,
//   - the hostname is the machine's name.
//
// Commands run "on" a machine through nsenter into all three namespaces.
// The namespaces persist as bind mounts of their nsfs files under the lab's
// state directory, so a machine outlives the process that made it until
// Destroy removes it.
package machine

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Machine is one lab machine.
type Machine struct {
	Name string
	// Dir holds the machine's overlay layers.
	Dir string
	// NSDir holds the persisted namespace files (a private bind mount).
	NSDir string
	// stateDir is the lab's state directory, which the machine sees too.
	stateDir string
}

// New describes the machine name of a lab whose state lives in stateDir;
// it creates nothing.
func New(stateDir, name string) *Machine {
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		abs = stateDir
	}
	return &Machine{Name: name, Dir: filepath.Join(stateDir, "machines", name), NSDir: filepath.Join(stateDir, "ns"), stateDir: abs}
}

// under reports whether path is dir or below it.
func under(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// NetNSPath is the host path of the machine's network namespace.
func (m *Machine) NetNSPath() string { return "/var/run/netns/" + m.Name }

func (m *Machine) mntFile() string { return filepath.Join(m.NSDir, m.Name+".mnt") }
func (m *Machine) utsFile() string { return filepath.Join(m.NSDir, m.Name+".uts") }

// overlays are the directories a machine gets its own writable copy of.
var overlays = []string{"/etc", "/opt", "/var/lib", "/var/log"}

// OwnDirs are the directories a machine has its own writable copy of
// (overlays on the host's): what is written there stays on the machine.
func OwnDirs() []string { return append([]string(nil), overlays...) }

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Exists reports whether the machine's network namespace exists.
func (m *Machine) Exists() bool {
	_, err := os.Stat(m.NetNSPath())
	return err == nil
}

// Create makes the machine. It refuses to adopt a network namespace of that
// name that it did not make.
func (m *Machine) Create() (err error) {
	if m.Exists() {
		return fmt.Errorf("a network namespace named %s already exists: remove it (ip netns del %s) or run `podnetctl lab down`", m.Name, m.Name)
	}
	defer func() {
		if err != nil {
			_ = m.Destroy()
		}
	}()
	if err := run("ip", "netns", "add", m.Name); err != nil {
		return err
	}
	if err := run("ip", "-n", m.Name, "link", "set", "lo", "up"); err != nil {
		return err
	}
	if err := ensurePrivateMount(m.NSDir); err != nil {
		return err
	}
	for _, f := range []string{m.mntFile(), m.utsFile()} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			return fmt.Errorf("create %s: %w", f, err)
		}
	}
	if err := run("unshare", "--mount="+m.mntFile(), "--uts="+m.utsFile(), "--propagation", "private", "true"); err != nil {
		return err
	}
	// A fresh sysfs (mounted from inside the machine's network namespace,
	// so /sys/class/net lists the machine's interfaces) would hide the
	// host's cgroup mounts: the whole cgroup tree, v1 hierarchies and v2
	// alike, is carried over onto it, so cgroup paths mean the same on the
	// machine and on the host (kubelet and runc need the v1 hierarchies of
	// a hybrid host). /run is a tmpfs of the machine's own (containerd's
	// socket and state, runc's, /run/netns with the pod sandboxes), with the
	// lab's state directory bound back when it lies below /run.
	script := []string{"set -e",
		"keep=$(mktemp -d /tmp/podnet-lab-mnt.XXXXXX)", `mkdir "$keep/cg" "$keep/state"`,
		`mount --rbind /sys/fs/cgroup "$keep/cg"`,
		// The host's sysfs goes, with its submounts: a mount hidden below
		// the new one would still be listed twice in mountinfo.
		"umount -l /sys",
		"mount -t sysfs sysfs /sys",
		`mount --move "$keep/cg" /sys/fs/cgroup`}
	if under(m.stateDir, "/run") || under(m.stateDir, "/var/run") {
		sd := m.stateDir
		script = append(script, fmt.Sprintf(`mount --rbind %q "$keep/state"`, sd),
			"mount -t tmpfs -o mode=0755 tmpfs /run",
			fmt.Sprintf("mkdir -p %q", sd), fmt.Sprintf(`mount --move "$keep/state" %q`, sd))
	} else {
		script = append(script, "mount -t tmpfs -o mode=0755 tmpfs /run")
	}
	script = append(script, `rmdir "$keep/cg" "$keep/state" "$keep"`, "mkdir -p /run/netns /run/lock",
		"hostname "+m.Name)
	for _, d := range overlays {
		up, work := filepath.Join(m.Dir, "overlay", d, "upper"), filepath.Join(m.Dir, "overlay", d, "work")
		for _, p := range []string{up, work} {
			if err := os.MkdirAll(p, 0o755); err != nil {
				return fmt.Errorf("create %s: %w", p, err)
			}
		}
		script = append(script, fmt.Sprintf("mount -t overlay overlay -o lowerdir=%s,upperdir=%s,workdir=%s %s", d, up, work, d))
	}
	if err := os.MkdirAll("/run/netns", 0o755); err != nil {
		return fmt.Errorf("create /run/netns: %w", err)
	}
	cmd := m.Command("/bin/sh", "-c", strings.Join(script, "\n"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("set up the filesystem of machine %s: %w: %s", m.Name, err, out)
	}
	return nil
}

// Command returns a command that runs argv on the machine: in its network,
// mount and UTS namespaces.
func (m *Machine) Command(argv ...string) *exec.Cmd {
	args := append([]string{"--net=" + m.NetNSPath(), "--mount=" + m.mntFile(), "--uts=" + m.utsFile(), "--"}, argv...)
	return exec.Command("nsenter", args...)
}

// Destroy removes the machine's namespaces and layers. Processes still in
// them must be stopped first (their namespaces live on while they run).
// Destroying a machine that is (partly) gone is no error.
func (m *Machine) Destroy() error {
	var errs []error
	for _, f := range []string{m.mntFile(), m.utsFile()} {
		if mounted(f) {
			if err := run("umount", "-l", f); err != nil {
				errs = append(errs, err)
			}
		}
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if m.Exists() {
		if err := run("ip", "netns", "del", m.Name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(m.Dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ensurePrivateMount makes dir a mount point with private propagation, as
// persisting a mount namespace by bind mount requires.
func ensurePrivateMount(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if !mounted(dir) {
		if err := run("mount", "--bind", dir, dir); err != nil {
			return err
		}
	}
	return run("mount", "--make-private", dir)
}

// ReleaseNSDir unmounts the namespace directory once every machine is gone.
func ReleaseNSDir(stateDir string) error {
	dir := filepath.Join(stateDir, "ns")
	if mounted(dir) {
		return run("umount", "-l", dir)
	}
	return nil
}

// mounted reports whether path is a mount point in the host's mount table.
func mounted(path string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && fields[4] == path {
			return true
		}
	}
	return false
}

// WriteFile writes a file on the machine (through its own view of the
// filesystem, so /etc, /opt and /var/lib land in its overlays), making the
// parent directories.
func (m *Machine) WriteFile(path string, data []byte, mode fs.FileMode) error {
	cmd := m.Command("/bin/sh", "-c", `mkdir -p "$(dirname "$1")" && cat > "$1.tmp" && chmod "$2" "$1.tmp" && mv -f "$1.tmp" "$1"`,
		"-", path, fmt.Sprintf("%o", mode.Perm()))
	cmd.Stdin = bytes.NewReader(data)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("write %s on %s: %w: %s", path, m.Name, err, bytes.TrimSpace(out))
	}
	return nil
}

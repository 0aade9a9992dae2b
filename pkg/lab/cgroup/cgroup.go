// Package cgroup keeps the lab's processes in a cgroup v2 tree
// (podnet-lab/<machine>/<component>; kubelet puts pods below
// podnet-lab/<machine>/kubepods, and V1Root makes that root in the v1
// hierarchies), so that every process of a component, a machine or the
// whole lab can be listed, signalled and killed at once — also after a crash of whoever
// started them, since the kernel keeps the membership. No controllers are
// enabled; the groups only name sets of processes.
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Group is one cgroup v2 directory.
type Group struct{ Path string }

// Mount returns where the cgroup v2 hierarchy is mounted (the unified
// hierarchy of a hybrid cgroup v1 host, or /sys/fs/cgroup on a v2 host).
func Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ... mountpoint ... - fstype source options
		fields := strings.Fields(sc.Text())
		for i, fl := range fields {
			if fl == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" {
				return fields[4], nil
			}
		}
	}
	return "", errors.New("no cgroup v2 hierarchy is mounted: mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) or use a kernel with cgroup v2")
}

// Root returns (creating it) the top group of the given name.
func Root(name string) (Group, error) {
	m, err := Mount()
	if err != nil {
		return Group{}, err
	}
	g := Group{Path: filepath.Join(m, name)}
	if err := os.MkdirAll(g.Path, 0o755); err != nil {
		return Group{}, fmt.Errorf("create cgroup %s: %w", g.Path, err)
	}
	return g, nil
}

// Child returns (creating it) a subgroup; name may contain "/".
func (g Group) Child(name string) (Group, error) {
	c := Group{Path: filepath.Join(g.Path, name)}
	if err := os.MkdirAll(c.Path, 0o755); err != nil {
		return Group{}, fmt.Errorf("create cgroup %s: %w", c.Path, err)
	}
	return c, nil
}

// Sub names a subgroup without creating it.
func (g Group) Sub(name string) Group { return Group{Path: filepath.Join(g.Path, name)} }

// Exists reports whether the group exists.
func (g Group) Exists() bool {
	_, err := os.Stat(g.Path)
	return err == nil
}

// Wrap returns argv that first moves itself into the group and then execs
// argv: the process is in the group before it runs a single instruction of
// argv, so nothing it forks escapes.
func (g Group) Wrap(argv ...string) []string {
	return append([]string{"/bin/sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, g.Path}, argv...)
}

// Add moves a running process into the group.
func (g Group) Add(pid int) error {
	if err := os.WriteFile(filepath.Join(g.Path, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return fmt.Errorf("move %d into %s: %w", pid, g.Path, err)
	}
	return nil
}

// Procs lists the processes of the group and all its subgroups.
func (g Group) Procs() ([]int, error) {
	var pids []int
	err := filepath.WalkDir(g.Path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			return nil // removed while walking
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	sort.Ints(pids)
	return pids, err
}

// Populated reports whether any process is in the group or below.
func (g Group) Populated() bool {
	b, err := os.ReadFile(filepath.Join(g.Path, "cgroup.events"))
	return err == nil && strings.Contains(string(b), "populated 1")
}

// Stop sends SIGTERM to every process of the group, waits up to grace for
// them to exit, then kills what is left and waits until the group is empty.
func (g Group) Stop(grace time.Duration) error {
	if !g.Exists() {
		return nil
	}
	pids, _ := g.Procs()
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	if g.wait(grace) {
		return nil
	}
	if err := os.WriteFile(filepath.Join(g.Path, "cgroup.kill"), []byte("1"), 0o644); err != nil {
		return fmt.Errorf("kill cgroup %s: %w", g.Path, err)
	}
	if !g.wait(5 * time.Second) {
		pids, _ := g.Procs()
		return fmt.Errorf("cgroup %s: processes %v survived SIGKILL", g.Path, pids)
	}
	return nil
}

func (g Group) wait(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if !g.Populated() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Remove stops every process of the group and removes it with all its
// subgroups (deepest first, as rmdir of a cgroup needs).
func (g Group) Remove(grace time.Duration) error {
	if err := g.Stop(grace); err != nil {
		return err
	}
	var dirs []string
	_ = filepath.WalkDir(g.Path, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove cgroup %s: %w", dirs[i], err)
		}
	}
	return nil
}

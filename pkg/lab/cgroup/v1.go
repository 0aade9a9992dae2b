package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// V1Hierarchies returns the mount points of the cgroup v1 hierarchies of a
// hybrid host (/sys/fs/cgroup/cpu, …, /sys/fs/cgroup/systemd); none on a
// cgroup v2 host. The real kubelet with the cgroupfs driver and runc place
// pods in these on such a host, under a cgroup root the lab makes.
func V1Hierarchies() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i, fl := range fields {
			if fl == "-" && i+1 < len(fields) && fields[i+1] == "cgroup" {
				out = append(out, fields[4])
			}
		}
	}
	sort.Strings(out)
	return out, sc.Err()
}

// V1Root is one cgroup path (such as "podnet-lab/node-1") in every v1
// hierarchy of the host.
type V1Root struct{ Rel string }

func (r V1Root) paths() ([]string, error) {
	hs, err := V1Hierarchies()
	if err != nil {
		return nil, err
	}
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = filepath.Join(h, r.Rel)
	}
	return out, nil
}

// Create makes the path in every v1 hierarchy, as kubelet's cgroupRoot must
// exist beforehand. cpuset groups start with no CPUs and no memory nodes, so
// each new cpuset level copies its parent's.
func (r V1Root) Create() error {
	hs, err := V1Hierarchies()
	if err != nil {
		return err
	}
	for _, h := range hs {
		p := h
		for _, part := range strings.Split(filepath.Clean(r.Rel), "/") {
			p = filepath.Join(p, part)
			if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("create cgroup %s: %w", p, err)
			}
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				parent, err := os.ReadFile(filepath.Join(filepath.Dir(p), f))
				if err != nil {
					continue // not the cpuset hierarchy
				}
				cur, _ := os.ReadFile(filepath.Join(p, f))
				if strings.TrimSpace(string(cur)) != "" {
					continue
				}
				if err := os.WriteFile(filepath.Join(p, f), parent, 0o644); err != nil {
					return fmt.Errorf("set %s of %s: %w", f, p, err)
				}
			}
		}
	}
	return nil
}

// Procs lists the processes below the path in any v1 hierarchy.
func (r V1Root) Procs() ([]int, error) {
	ps, err := r.paths()
	if err != nil {
		return nil, err
	}
	seen := map[int]bool{}
	var pids []int
	for _, p := range ps {
		more, err := Group{Path: p}.Procs()
		if err != nil {
			return nil, err
		}
		for _, pid := range more {
			if !seen[pid] {
				seen[pid] = true
				pids = append(pids, pid)
			}
		}
	}
	sort.Ints(pids)
	return pids, nil
}

// Remove kills whatever still runs below the path (containers a crashed
// runtime left) and removes the groups, deepest first, in every hierarchy.
// Removing a path that is not there is no error.
func (r V1Root) Remove(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pids, err := r.Procs()
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s: processes %v survived SIGKILL", r.Rel, pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ps, err := r.paths()
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range ps {
		var dirs []string
		_ = filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, q)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dirs[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

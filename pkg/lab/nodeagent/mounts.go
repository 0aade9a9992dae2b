package nodeagent

// A container's mounts. Containers run on the node's own filesystem, each
// in a mount namespace of its own (unshare --mount --propagation private):
// whatever is mounted there is seen by that container only and goes away
// with it. Volumes are bind-mounted from the pod's directory over their
// mountPath; a mountPath that does not exist needs a mount point, made
//
//   - in the node's own trees (/etc, /opt, /var/lib are the machine's
//     overlays, so the node's filesystem and never the host's);
//   - elsewhere under a container-private overlay of the nearest existing
//     directory (/var/run/secrets/… overlays /run inside the container, so
//     the host's /run is never written);
//   - where that directory is / (or holds the pod directory, which an
//     overlay would hide), in a root of the container's own: an overlay of
//     the root filesystem with every mount on it bound back (/proc, /sys,
//     /dev, /etc, /var/lib, …), pivot_root'ed into as a runtime does. So
//     /data can be made without writing to the host's /.

import (
	"fmt"
	"path"
	"path/filepath"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// bindMount is one volume mount of a container.
type bindMount struct {
	src, target string
	readOnly    bool
	// create says what mount point to make: "" (target exists), "dir" or
	// "file".
	create string
}

// mountPlan is what a container's mount namespace gets before its program
// starts.
type mountPlan struct {
	// newRoot gives the container a root of its own, with rootMounts (the
	// mounts on the root filesystem) bound back into it.
	newRoot    bool
	rootMounts []string
	overlays   []string // directories overlaid privately, outermost only
	mounts     []bindMount
}

// fsView answers questions about the node's filesystem (the agent's own
// view is the containers' starting view).
type fsView interface {
	// stat says whether path exists (following symlinks) and is a
	// directory.
	stat(path string) (exists, isDir bool)
	// realPath resolves the symlinks of an existing path.
	realPath(path string) (string, error)
	// mounts is the mount table.
	mounts() (mountTable, error)
}

// planMounts plans the volume mounts of container c. volumes maps each
// volume of the pod to its directory; nodeDirs are the node's own trees
// (where mount points may be made); podDir is the pod directory.
func planMounts(c corev1.Container, volumes map[string]string, fsys fsView, nodeDirs []string, podDir string) (mountPlan, error) {
	var plan mountPlan
	vms := slices.Clone(c.VolumeMounts)
	// Parents before children, as the runtime mounts them.
	slices.SortStableFunc(vms, func(a, b corev1.VolumeMount) int {
		return strings.Count(path.Clean(a.MountPath), "/") - strings.Count(path.Clean(b.MountPath), "/")
	})
	overlays := map[string]bool{}
	for _, vm := range vms {
		m, overlay, err := planMount(vm, volumes, fsys, nodeDirs, podDir)
		if err != nil {
			return mountPlan{}, fmt.Errorf("container %s: volume mount %s at %s: %w", c.Name, vm.Name, vm.MountPath, err)
		}
		if overlay == "/" {
			plan.newRoot = true
		} else if overlay != "" {
			overlays[overlay] = true
		}
		plan.mounts = append(plan.mounts, m)
	}
	if plan.newRoot {
		t, err := fsys.mounts()
		if err != nil {
			return mountPlan{}, fmt.Errorf("container %s: %w", c.Name, err)
		}
		for _, m := range t.topLevel {
			if !within(m, podDir) { // the pod's scratch mounts stay out
				plan.rootMounts = append(plan.rootMounts, m)
			}
		}
	}
	for o := range overlays {
		outer := true
		for p := range overlays {
			outer = outer && (p == o || !within(o, p))
		}
		if outer {
			plan.overlays = append(plan.overlays, o)
		}
	}
	slices.Sort(plan.overlays)
	return plan, nil
}

func planMount(vm corev1.VolumeMount, volumes map[string]string, fsys fsView, nodeDirs []string, podDir string) (bindMount, string, error) {
	dir, ok := volumes[vm.Name]
	if !ok {
		return bindMount{}, "", fmt.Errorf("the pod has no volume %q", vm.Name)
	}
	if !path.IsAbs(vm.MountPath) {
		return bindMount{}, "", fmt.Errorf("mountPath must be absolute")
	}
	if vm.SubPathExpr != "" {
		return bindMount{}, "", fmt.Errorf("subPathExpr is not supported by the podnet lab")
	}
	m := bindMount{src: dir, target: path.Clean(vm.MountPath), readOnly: vm.ReadOnly}
	if vm.SubPath != "" {
		if err := checkRelPath(vm.SubPath); err != nil {
			return bindMount{}, "", fmt.Errorf("subPath: %w", err)
		}
		m.src = filepath.Join(dir, vm.SubPath)
	}
	srcExists, srcDir := fsys.stat(m.src)
	if !srcExists {
		return bindMount{}, "", fmt.Errorf("%s does not exist", m.src)
	}
	if exists, _ := fsys.stat(m.target); exists {
		return m, "", nil
	}
	m.create = "file"
	if srcDir {
		m.create = "dir"
	}
	anc := path.Dir(m.target)
	for {
		if exists, isDir := fsys.stat(anc); exists {
			if !isDir {
				return bindMount{}, "", fmt.Errorf("%s is not a directory", anc)
			}
			break
		}
		anc = path.Dir(anc)
	}
	real, err := fsys.realPath(anc)
	if err != nil {
		return bindMount{}, "", err
	}
	for _, d := range nodeDirs {
		if within(real, d) {
			return m, "", nil // a mount point in the node's own tree
		}
	}
	if real == "/" || within(podDir, real) {
		// An overlay there would hide the mounts under it, the volumes
		// among them: a root of the container's own instead.
		t, err := fsys.mounts()
		if err != nil {
			return bindMount{}, "", err
		}
		if !t.onRootFS(real) {
			return bindMount{}, "", fmt.Errorf("cannot make a mount point under %s on a lab node (a mount that holds the pods' volumes): "+
				"use a path under another directory", real)
		}
		return m, "/", nil
	}
	if strings.ContainsAny(real, ",:\\ \t\n") {
		return bindMount{}, "", fmt.Errorf("cannot overlay %q (a character overlayfs options cannot carry)", real)
	}
	return m, real, nil
}

// within says whether p is dir or under it.
func within(p, dir string) bool {
	return p == dir || dir == "/" || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// containerSetup is the shell script a container's mount namespace runs
// before it execs the container's program ("$@"): the overlays (upper
// layers on a tmpfs at scratch, private to the container), the volume
// mounts, the pod's resolv.conf and hosts over /etc's, the hostname and
// the working directory.
func containerSetup(plan mountPlan, scratch, resolv, hosts, hostname, workDir string) string {
	q := shellQuote
	lines := []string{"set -e"}
	if plan.newRoot {
		lines = append(lines, newRootLines(plan.rootMounts, scratch)...)
	}
	if len(plan.overlays) > 0 {
		lines = append(lines, "mount -t tmpfs -o mode=0700 podnet-lab "+q(scratch))
	}
	for i, o := range plan.overlays {
		up, work := fmt.Sprintf("%s/%d/upper", scratch, i), fmt.Sprintf("%s/%d/work", scratch, i)
		lines = append(lines, "mkdir -p "+q(up)+" "+q(work),
			"mount -t overlay podnet-lab -o "+q("lowerdir="+o+",upperdir="+up+",workdir="+work)+" "+q(o))
	}
	for _, m := range plan.mounts {
		switch m.create {
		case "dir":
			lines = append(lines, "mkdir -p "+q(m.target))
		case "file":
			lines = append(lines, "mkdir -p "+q(path.Dir(m.target)), "[ -e "+q(m.target)+" ] || : > "+q(m.target))
		}
		lines = append(lines, "mount --bind "+q(m.src)+" "+q(m.target))
		if m.readOnly {
			lines = append(lines, "mount -o remount,bind,ro "+q(m.target))
		}
	}
	lines = append(lines, "mount --bind "+q(resolv)+" /etc/resolv.conf", "mount --bind "+q(hosts)+" /etc/hosts",
		"hostname "+q(hostname))
	if workDir != "" {
		lines = append(lines, "cd "+q(workDir))
	}
	lines = append(lines, `exec "$@"`)
	return strings.Join(lines, "\n")
}

// newRootLines make the container's own root and move into it: an overlay
// of / (upper layer on a tmpfs at scratch), the mounts on the root
// filesystem bound back, pivot_root, and the old root detached. scratch is
// made unbindable once the overlay is up, so that binding back the tree
// that holds it does not copy the new root into itself.
func newRootLines(rootMounts []string, scratch string) []string {
	q := shellQuote
	root := scratch + "/root"
	lines := []string{
		"mount -t tmpfs -o mode=0700 podnet-lab " + q(scratch),
		"mkdir -p " + q(root) + " " + q(scratch+"/upper") + " " + q(scratch+"/work"),
		"mount -t overlay podnet-lab -o " + q("lowerdir=/,upperdir="+scratch+"/upper,workdir="+scratch+"/work") + " " + q(root),
		"mount --make-unbindable " + q(scratch),
	}
	for _, m := range rootMounts {
		lines = append(lines, "mount --rbind "+q(m)+" "+q(root+m))
	}
	return append(lines, "mkdir -p "+q(root+"/.podnet-oldroot"), "cd "+q(root), "pivot_root . .podnet-oldroot", "cd /",
		"umount -l /.podnet-oldroot", "rmdir /.podnet-oldroot")
}

// shellQuote quotes s for sh: in single quotes, each quote in s closing
// them, escaped, and opening them again.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

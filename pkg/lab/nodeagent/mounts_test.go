package nodeagent

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// fakeFS is a node filesystem of the given directories and files, with
// /var/run a symlink to /run as on Debian.
type fakeFS map[string]bool // path → is a directory

func (f fakeFS) resolve(p string) string {
	if p == "/var/run" || strings.HasPrefix(p, "/var/run/") {
		return "/run" + strings.TrimPrefix(p, "/var/run")
	}
	return p
}

func (f fakeFS) stat(p string) (bool, bool) {
	isDir, ok := f[f.resolve(p)]
	return ok, isDir
}

func (f fakeFS) realPath(p string) (string, error) { return f.resolve(p), nil }

// mounts are a node's: the host's /proc, /sys, /dev and /run/netns, the
// machine's overlays and, on a host with a separate /srv, that.
func (f fakeFS) mounts() (mountTable, error) {
	return parseMountInfo(testMountInfo), nil
}

const testMountInfo = `22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
31 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw
42 27 254:0 /run/netns /run/netns rw - ext4 /dev/vda rw
60 27 0:40 / /etc rw - overlay overlay rw
61 27 0:41 / /opt rw - overlay overlay rw
62 27 0:42 / /var/lib rw - overlay overlay rw
63 27 0:43 / /srv rw - ext4 /dev/vdb rw
64 27 0:44 / /mnt/with\040space rw - tmpfs tmpfs rw
70 62 0:50 / /var/lib/podnet-lab/pods/uid-1/scratch/c rw - tmpfs podnet-lab rw
`

const testPodDir = "/var/lib/podnet-lab/pods/uid-1"

func nodeFS() fakeFS {
	return fakeFS{"/": true, "/etc": true, "/etc/resolv.conf": false, "/run": true, "/var": true, "/var/lib": true,
		"/tmp": true, "/usr": true, "/usr/share": true, "/srv": true,
		testPodDir + "/volumes/cfg": true, testPodDir + "/volumes/cfg/Corefile": false,
		testPodDir + "/volumes/token": true, testPodDir + "/volumes/data": true}
}

var testVolumes = map[string]string{"cfg": testPodDir + "/volumes/cfg", "token": testPodDir + "/volumes/token", "data": testPodDir + "/volumes/data"}

func plan(t *testing.T, mounts ...corev1.VolumeMount) (mountPlan, error) {
	t.Helper()
	return planMounts(corev1.Container{Name: "c", VolumeMounts: mounts}, testVolumes, nodeFS(), []string{"/etc", "/opt", "/var/lib"}, testPodDir)
}

func TestPlanMounts(t *testing.T) {
	p, err := plan(t,
		corev1.VolumeMount{Name: "token", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true},
		corev1.VolumeMount{Name: "cfg", MountPath: "/etc/coredns", ReadOnly: true},
		corev1.VolumeMount{Name: "cfg", MountPath: "/usr/share/app/Corefile", SubPath: "Corefile"},
		corev1.VolumeMount{Name: "data", MountPath: "/tmp"},
		corev1.VolumeMount{Name: "data", MountPath: "/run/app/cache"},
	)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(p.overlays, " "); got != "/run /usr/share" {
		t.Errorf("overlays %q, want /run (for /var/run/secrets and /run/app) and /usr/share; /etc is the node's own", got)
	}
	want := []bindMount{
		{src: testPodDir + "/volumes/data", target: "/tmp"},
		{src: testPodDir + "/volumes/cfg", target: "/etc/coredns", readOnly: true, create: "dir"},
		{src: testPodDir + "/volumes/data", target: "/run/app/cache", create: "dir"},
		{src: testPodDir + "/volumes/cfg/Corefile", target: "/usr/share/app/Corefile", create: "file"},
		{src: testPodDir + "/volumes/token", target: "/var/run/secrets/kubernetes.io/serviceaccount", readOnly: true, create: "dir"},
	}
	if len(p.mounts) != len(want) {
		t.Fatalf("mounts %+v", p.mounts)
	}
	for i := range want {
		if p.mounts[i] != want[i] {
			t.Errorf("mount %d = %+v, want %+v", i, p.mounts[i], want[i])
		}
	}
}

func TestPlanMountsRefuses(t *testing.T) {
	for _, tc := range []struct {
		vm   corev1.VolumeMount
		want string
	}{
		{corev1.VolumeMount{Name: "nope", MountPath: "/etc/x"}, `the pod has no volume "nope"`},
		{corev1.VolumeMount{Name: "cfg", MountPath: "/etc/x", SubPath: "../../.."}, "must not contain '..'"},
		{corev1.VolumeMount{Name: "cfg", MountPath: "/etc/x", SubPath: "absent"}, "volumes/cfg/absent does not exist"},
		{corev1.VolumeMount{Name: "cfg", MountPath: "/etc/resolv.conf/x"}, "/etc/resolv.conf is not a directory"},
		{corev1.VolumeMount{Name: "cfg", MountPath: "/etc/x", SubPathExpr: "$(POD)"}, "subPathExpr is not supported"},
	} {
		_, err := plan(t, tc.vm)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("mount %+v: error %v, want %q", tc.vm, err, tc.want)
		}
	}
}

// TestPlanMountsNewRoot: a mount point under / (or /var, which holds the
// pods' volumes) gets the container a root of its own, with the mounts on
// the root filesystem bound back, but never the pod's scratch mounts.
func TestPlanMountsNewRoot(t *testing.T) {
	p, err := plan(t, corev1.VolumeMount{Name: "data", MountPath: "/data"},
		corev1.VolumeMount{Name: "cfg", MountPath: "/var/cache/app"},
		corev1.VolumeMount{Name: "token", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount"})
	if err != nil {
		t.Fatal(err)
	}
	if !p.newRoot || len(p.overlays) != 1 || p.overlays[0] != "/run" {
		t.Errorf("plan %+v: want a new root, and /run overlaid", p)
	}
	want := "/proc /sys /dev /run/netns /etc /opt /var/lib /srv /mnt/with space"
	if got := strings.Join(p.rootMounts, " "); got != want {
		t.Errorf("mounts bound back into the new root: %q, want %q", got, want)
	}
	if p.mounts[0].target != "/data" || p.mounts[0].create != "dir" {
		t.Errorf("first mount %+v", p.mounts[0])
	}
	if t2 := parseMountInfo(testMountInfo); t2.onRootFS("/srv/x") || !t2.onRootFS("/usr/share") {
		t.Error("onRootFS is wrong about /srv (a mount) or /usr/share (on /)")
	}
}

func TestContainerSetupScript(t *testing.T) {
	p := mountPlan{overlays: []string{"/run"}, mounts: []bindMount{
		{src: "/v/cfg", target: "/etc/it's", readOnly: true, create: "dir"},
		{src: "/v/f", target: "/run/a/f", create: "file"},
	}}
	got := containerSetup(p, "/scratch", "/p/resolv.conf", "/p/hosts", "web-0", "/work")
	want := `set -e
mount -t tmpfs -o mode=0700 podnet-lab '/scratch'
mkdir -p '/scratch/0/upper' '/scratch/0/work'
mount -t overlay podnet-lab -o 'lowerdir=/run,upperdir=/scratch/0/upper,workdir=/scratch/0/work' '/run'
mkdir -p '/etc/it'\''s'
mount --bind '/v/cfg' '/etc/it'\''s'
mount -o remount,bind,ro '/etc/it'\''s'
mkdir -p '/run/a'
[ -e '/run/a/f' ] || : > '/run/a/f'
mount --bind '/v/f' '/run/a/f'
mount --bind '/p/resolv.conf' /etc/resolv.conf
mount --bind '/p/hosts' /etc/hosts
hostname 'web-0'
cd '/work'
exec "$@"`
	if got != want {
		t.Errorf("script:\n%s\nwant:\n%s", got, want)
	}
}

// TestContainerSetupInANamespace runs the script for real (as root) in a
// private mount namespace: the volume appears at a path under /run that
// does not exist, read-only, and the host's /run is untouched.
func TestContainerSetupInANamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for mount namespaces")
	}
	for _, tool := range []string{"unshare", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skip(tool + " not installed")
		}
	}
	tmp := t.TempDir()
	vol := filepath.Join(tmp, "vol")
	if _, err := writeAtomic(vol, payload{"token": {data: []byte("secret"), mode: 0o644}}); err != nil {
		t.Fatal(err)
	}
	resolv, hosts, scratch := filepath.Join(tmp, "resolv.conf"), filepath.Join(tmp, "hosts"), filepath.Join(tmp, "scratch")
	for _, f := range []string{resolv, hosts} {
		if err := os.WriteFile(f, []byte("# pod\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(scratch, 0o700); err != nil {
		t.Fatal(err)
	}
	// Under /run (an overlay of it), and under / (a root of its own).
	for _, target := range []string{"/run/pntest-secrets-" + filepath.Base(tmp) + "/serviceaccount", "/pntest-data-" + filepath.Base(tmp) + "/sa"} {
		p, err := planMounts(corev1.Container{Name: "c", VolumeMounts: []corev1.VolumeMount{{Name: "v", MountPath: target, ReadOnly: true}}},
			map[string]string{"v": vol}, osFS{}, []string{"/etc", "/opt", "/var/lib"}, tmp)
		if err != nil {
			t.Fatal(err)
		}
		script := containerSetup(p, scratch, resolv, hosts, "pntest", "")
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, err := exec.CommandContext(ctx, "unshare", "--mount", "--uts", "--propagation", "private", "--", "/bin/sh", "-c", script, "-",
			"/bin/sh", "-c", `cat "$1/token"; cat /etc/resolv.conf; hostname; touch "$1/x" 2>/dev/null && echo writable; ls /proc/self/fd >/dev/null && echo proc`,
			"-", target).CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("container setup: %v\n%s\nscript:\n%s", err, out, script)
		}
		if got := string(out); got != "secret# pod\npntest\nproc\n" {
			t.Errorf("inside the container with %s: %q, want the token, the pod's resolv.conf, the hostname, a read-only volume and /proc",
				target, got)
		}
		if _, err := os.Stat(filepath.Dir(target)); err == nil {
			t.Errorf("the container's mount point %s appeared on the host", filepath.Dir(target))
		}
	}
}

package imageset

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/netnstest"
	"github.com/podnet/podnet/pkg/lab/oci"
)

// These tests build real images from Debian packages (downloaded once into
// the machine's cache, /var/cache/podnet/images/debs) and run them: as
// root, on a Debian machine whose apt can reach its repositories.

func requireDebian(t *testing.T, tools ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds images from Debian packages")
	}
	netnstest.RequireRoot(t)
	for _, tool := range append([]string{"apt-get", "apt-cache", "dpkg-deb", "dpkg-query"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	if _, err := (&AptRepo{}).State(); err != nil {
		t.Skip(err)
	}
}

// buildReal builds one recipe into a throwaway cache, with the machine's
// package cache.
func buildReal(t *testing.T, name string) Image {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	images, err := Build(ctx, Options{
		CacheDir: t.TempDir(),
		Only:     []string{name},
		Repo:     &AptRepo{Dir: filepath.Join(DefaultCacheDir, "debs")},
	})
	if err != nil {
		t.Fatal(err)
	}
	return images[0]
}

// layerHeaders reads the tar headers of an image's layers, by path.
func layerHeaders(t *testing.T, img Image) map[string]*tar.Header {
	t.Helper()
	a, err := oci.OpenArchive(img.Archive)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	named, err := a.Images(oci.Platform{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*tar.Header{}
	for _, l := range named[0].Image.Layers {
		r, err := a.Open(l.Digest)
		if err != nil {
			t.Fatal(err)
		}
		zr, err := gzip.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(zr)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			out[strings.TrimSuffix(h.Name, "/")] = h
		}
		r.Close()
	}
	return out
}

func TestBusyboxImageRuns(t *testing.T) {
	requireDebian(t, "chroot")
	img := buildReal(t, "busybox")

	// In the layer, /bin/sh is busybox under another name.
	hdrs := layerHeaders(t, img)
	sh, ok := hdrs["bin/sh"]
	if !ok {
		t.Fatal("the layer has no bin/sh")
	}
	switch sh.Typeflag {
	case tar.TypeLink:
		// containerd applies a hardlink's mode to the file: it must be busybox's.
		if sh.Mode&0o111 == 0 {
			t.Errorf("bin/sh: hardlink of mode %o, which would make busybox unexecutable", sh.Mode)
		}
		bb := hdrs["bin/busybox"]
		if sh.Linkname != "bin/busybox" && (bb == nil || bb.Typeflag != tar.TypeLink || bb.Linkname != sh.Linkname) {
			t.Errorf("bin/sh is a hardlink to %s, which is not busybox's file", sh.Linkname)
		}
	case tar.TypeSymlink:
		if filepath.Base(sh.Linkname) != "busybox" {
			t.Errorf("bin/sh -> %s", sh.Linkname)
		}
	default:
		t.Errorf("bin/sh is of type %q, want a link to busybox", sh.Typeflag)
	}

	root := extractImage(t, img)
	out, err := exec.Command("chroot", root, "/bin/sh", "-c", "echo ok; ls /bin | grep -c .").CombinedOutput()
	if err != nil {
		t.Fatalf("chroot %s sh -c ...: %v: %s", root, err, out)
	}
	lines := strings.Fields(string(out))
	if len(lines) != 2 || lines[0] != "ok" || atoi(lines[1]) < 50 {
		t.Errorf("busybox sh said %q, want ok and many applets in /bin", out)
	}
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// runImage starts argv in the extracted image root, inside the network
// namespace, as a container runtime would: a mount namespace of its own
// with /proc and /dev (gone when the process is), chrooted. The process
// group is killed when the test ends.
func runImage(t *testing.T, n *netnstest.NS, root string, argv ...string) *bytes.Buffer {
	t.Helper()
	for _, d := range []string{"proc", "dev"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	script := `set -e; mount -t proc proc "$1/proc"; mount --rbind /dev "$1/dev"; root=$1; shift; exec chroot "$root" "$@"`
	args := append([]string{"netns", "exec", n.Name, "unshare", "--mount", "--propagation", "private",
		"/bin/sh", "-c", script, "sh", root}, argv...)
	cmd := exec.Command("ip", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("%s did not exit", argv[0])
		}
	})
	return &out
}

// fetchInNetns curls url from inside the namespace until the page contains
// want.
func fetchInNetns(t *testing.T, n *netnstest.NS, url, want string, logs *bytes.Buffer) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		out, err := n.Run("curl", "-s", "-m", "2", url)
		if err == nil && strings.Contains(out, want) {
			return
		}
		last = out
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("curl %s in %s: no %q after 30s; last answer %q; server output:\n%s", url, n.Name, want, last, logs)
}

func TestNginxImageServesTheWelcomePage(t *testing.T) {
	requireDebian(t, "chroot", "curl", "unshare", "ip")
	img := buildReal(t, "nginx")
	root := extractImage(t, img)
	n := netnstest.New(t, "nginx")
	n.MustRun(t, "ip", "link", "set", "lo", "up")
	// The image's own command: nginx -g "daemon off;".
	logs := runImage(t, n, root, "nginx", "-g", "daemon off;")
	fetchInNetns(t, n, "http://127.0.0.1:80/", "Welcome to nginx!", logs)
	// nginx logs the request to the container's stdout.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), `"GET / HTTP/1.1" 200`) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), `"GET / HTTP/1.1" 200`) {
		t.Errorf("nginx's output has no access log line:\n%s", logs)
	}
}

func TestHttpdImageServesItWorks(t *testing.T) {
	requireDebian(t, "chroot", "curl", "unshare", "ip")
	img := buildReal(t, "httpd")
	root := extractImage(t, img)
	n := netnstest.New(t, "httpd")
	n.MustRun(t, "ip", "link", "set", "lo", "up")
	// The image's command, httpd-foreground, run from its PATH.
	logs := runImage(t, n, root, "/usr/bin/env", "PATH=/usr/local/apache2/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "httpd-foreground")
	fetchInNetns(t, n, "http://127.0.0.1:80/", "<h1>It works!</h1>", logs)
}

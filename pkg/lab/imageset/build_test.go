package imageset

import (
	"context"
	"debug/elf"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podnet/podnet/pkg/lab/oci"
)

// hostELF is a dynamically linked program of the host and the C library
// files it needs, or a skip.
func hostELF(t *testing.T) (prog, libc, ldso string) {
	t.Helper()
	prog, libc, ldso = "/bin/true", "/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
	for _, p := range []string{prog, libc, ldso} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("needs the host's %s (Debian amd64): %v", p, err)
		}
	}
	f, err := elf.Open(prog)
	if err != nil {
		t.Skipf("%s: %v", prog, err)
	}
	defer f.Close()
	if libs, _ := f.ImportedLibraries(); len(libs) == 0 {
		t.Skipf("%s is not dynamically linked", prog)
	}
	return prog, libc, ldso
}

// fakeArchive is a small Debian: a fake busybox (a script printing its
// applet list), a program needing the C library, the C library, and
// packages that are depended on but never needed.
func fakeArchive(t *testing.T) *fakeRepo {
	prog, libc, ldso := hostELF(t)
	bb := "#!/bin/sh\nprintf 'bin/busybox\\nbin/sh\\nsbin/ip\\nusr/bin/wget\\n'\n"
	return &fakeRepo{t: t, state: "lists-1", pkgs: map[string]fakePkg{
		"busybox-static": {version: "1:1.35", files: []oci.Entry{
			oci.Content("bin/busybox", []byte(bb), 0o755),
			oci.Content("usr/share/doc/busybox-static/copyright", []byte("GPL"), 0o644),
		}},
		"hello": {version: "1.0", deps: []string{"libc6", "debconf"}, files: []oci.Entry{
			oci.File("usr/bin/hello", prog),
			oci.Content("usr/bin/ip", []byte("#!/bin/sh\necho real ip\n"), 0o755),
			oci.Content("usr/share/doc/hello/copyright", []byte("GPL"), 0o644),
			oci.Content("usr/share/man/man1/hello.1.gz", []byte("man"), 0o644),
			oci.Content("etc/hello.conf", []byte("from the package\n"), 0o644),
		}},
		"libc6": {version: "2.36", deps: []string{"libgcc-s1"}, files: []oci.Entry{
			oci.File("lib/x86_64-linux-gnu/libc.so.6", libc),
			oci.File("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", ldso),
			oci.Symlink("lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
			oci.Content("usr/lib/x86_64-linux-gnu/gconv/UTF-16.so", []byte("iconv"), 0o644),
		}},
		"libgcc-s1": {version: "12", files: []oci.Entry{oci.Content("lib/x86_64-linux-gnu/libgcc_s.so.1", []byte("x"), 0o644)}},
		"debconf":   {version: "1.5", files: []oci.Entry{oci.Content("usr/bin/debconf", []byte("#!/usr/bin/perl\n"), 0o755)}},
		"broken": {version: "1", deps: []string{"debconf"}, files: []oci.Entry{
			oci.File("usr/bin/broken", prog),
		}},
	}}
}

var helloRecipe = recipe{
	Name:  "hello",
	Names: []string{"example.com/hello:1", "example.com/hello:latest"},
	Layers: []layer{
		{Busybox: "busybox-static", Files: []file{dir("tmp", 0o1777)}},
		{Packages: []pkg{{Name: "hello"}}, Files: []file{content("etc/hello.conf", "from the recipe\n", 0o644)}},
	},
	Config: oci.Config{Cmd: []string{"/usr/bin/hello"}},
}

// extractImage unpacks a built image's archive.
func extractImage(t *testing.T, img Image) string {
	t.Helper()
	a, err := oci.OpenArchive(img.Archive)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.Verify(); err != nil {
		t.Fatal(err)
	}
	named, err := a.Images(oci.Platform{})
	if err != nil || len(named) != 1 {
		t.Fatalf("archive images: %v, %v", named, err)
	}
	dir := t.TempDir()
	if err := oci.Extract(a, named[0].Image, dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestBuildTakesLibrariesFromDependenciesOnly(t *testing.T) {
	repo := fakeArchive(t)
	o := Options{CacheDir: t.TempDir(), Repo: repo}.withDefaults()
	images, err := buildSet(context.Background(), o, []recipe{helloRecipe})
	if err != nil {
		t.Fatal(err)
	}
	img := images[0]
	if img.Cached || strings.Join(img.Packages, " ") != "busybox-static=1:1.35 hello=1.0 libc6=2.36" {
		t.Errorf("built %+v; want busybox-static, hello and libc6 used", img)
	}
	// The packages depended on but not needed were never opened.
	if got := repo.asked(); strings.Contains(got, "libgcc-s1") || strings.Contains(got, "debconf") {
		t.Errorf("opened %s: a package nothing needs", got)
	}
	root := extractImage(t, img)
	exists := func(p string) bool { _, err := os.Lstat(filepath.Join(root, p)); return err == nil }
	for _, p := range []string{"usr/bin/hello", "lib/x86_64-linux-gnu/libc.so.6", "lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"} {
		if !exists(p) {
			t.Errorf("image lacks %s", p)
		}
	}
	for _, p := range []string{"usr/share/doc", "usr/share/man", "usr/lib/x86_64-linux-gnu/gconv"} {
		if exists(p) {
			t.Errorf("image has %s", p)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/hello.conf")); string(b) != "from the recipe\n" {
		t.Errorf("etc/hello.conf = %q: the recipe's file must win over the package's", b)
	}
	// Busybox's applets are one file; busybox's /sbin/ip, earlier in PATH
	// than the package's /usr/bin/ip, now leads to the package's.
	sh, err1 := os.Stat(filepath.Join(root, "bin/sh"))
	bb, err2 := os.Stat(filepath.Join(root, "bin/busybox"))
	if err1 != nil || err2 != nil || !os.SameFile(sh, bb) {
		t.Errorf("bin/sh is not bin/busybox (%v %v)", err1, err2)
	}
	if target, err := os.Readlink(filepath.Join(root, "sbin/ip")); err != nil || target != "/usr/bin/ip" {
		t.Errorf("sbin/ip -> %q (%v), want /usr/bin/ip", target, err)
	}
	if st, err := os.Stat(filepath.Join(root, "tmp")); err != nil || st.Mode().Perm() != 0o777 || st.Mode()&os.ModeSticky == 0 {
		t.Errorf("tmp: %v %v", st.Mode(), err)
	}
}

func TestBuildReusesTheCache(t *testing.T) {
	repo := fakeArchive(t)
	o := Options{CacheDir: t.TempDir(), Repo: repo}.withDefaults()
	ctx := context.Background()
	// What a build killed midway left goes at the next build.
	stale := filepath.Join(o.CacheDir, ".build-123")
	if err := os.MkdirAll(filepath.Join(stale, "hello-1"), 0o755); err != nil {
		t.Fatal(err)
	}
	first, err := buildSet(ctx, o, []recipe{helloRecipe})
	if _, serr := os.Stat(stale); serr == nil {
		t.Error("a stale build directory stayed")
	}
	if err != nil {
		t.Fatal(err)
	}
	opened, depends := len(repo.opened), repo.depends

	// Nothing changed: the image comes from the cache without asking apt.
	again, err := buildSet(ctx, o, []recipe{helloRecipe})
	if err != nil {
		t.Fatal(err)
	}
	if !again[0].Cached || again[0].Manifest.Digest != first[0].Manifest.Digest || repo.depends != depends || len(repo.opened) != opened {
		t.Errorf("second build: cached %v, apt asked %d more times, %d more packages opened",
			again[0].Cached, repo.depends-depends, len(repo.opened)-opened)
	}

	// apt-get update without news for these packages: apt is asked, nothing rebuilt.
	repo.state = "lists-2"
	again, err = buildSet(ctx, o, []recipe{helloRecipe})
	if err != nil {
		t.Fatal(err)
	}
	if !again[0].Cached || again[0].Dir != first[0].Dir || repo.depends != depends+1 || len(repo.opened) != opened {
		t.Errorf("after an update of other packages: cached %v in %s (was %s)", again[0].Cached, again[0].Dir, first[0].Dir)
	}

	// A new version of a package the image depends on: rebuilt, elsewhere.
	p := repo.pkgs["libgcc-s1"]
	p.version = "13"
	repo.pkgs["libgcc-s1"] = p
	repo.state = "lists-3"
	again, err = buildSet(ctx, o, []recipe{helloRecipe})
	if err != nil {
		t.Fatal(err)
	}
	if again[0].Cached || again[0].Dir == first[0].Dir {
		t.Errorf("after a dependency's update: cached %v in %s", again[0].Cached, again[0].Dir)
	}
	// The same bytes, though: libgcc-s1 is not in the image.
	if again[0].Manifest.Digest != first[0].Manifest.Digest {
		t.Errorf("rebuilt image %s differs from %s with the same files", again[0].Manifest.Digest, first[0].Manifest.Digest)
	}
	if _, err := os.Stat(first[0].Archive); err != nil {
		t.Errorf("the older image went away: %v", err)
	}
}

func TestBuildNamesAMissingLibrary(t *testing.T) {
	repo := fakeArchive(t)
	o := Options{CacheDir: t.TempDir(), Repo: repo}.withDefaults()
	r := recipe{Name: "broken", Names: []string{"example.com/broken:1"}, Layers: []layer{{Packages: []pkg{{Name: "broken"}}}}}
	_, err := buildSet(context.Background(), o, []recipe{r})
	if err == nil || !errors.Is(err, errNoProvider) || !strings.Contains(err.Error(), "/usr/bin/broken needs") {
		t.Errorf("build of a program whose libraries no dependency has: %v", err)
	}
	r.Layers[0].Packages = []pkg{{Name: "nonexistent"}}
	if _, err := buildSet(context.Background(), o, []recipe{r}); err == nil {
		t.Error("build from a package the repository lacks: no error")
	}
}

func TestInputsAreRequiredAndKeyed(t *testing.T) {
	o := Options{CacheDir: t.TempDir(), Only: []string{"coredns"}}
	if _, err := Build(context.Background(), o); err == nil || !strings.Contains(err.Error(), "Options.CoreDNS") {
		t.Errorf("coredns without its binary: %v", err)
	}
	if _, err := Build(context.Background(), Options{Only: []string{"nosuch"}}); err == nil {
		t.Error("unknown recipe: no error")
	}
	if _, err := Build(context.Background(), Options{Only: []string{"podnet"}}); err == nil || !strings.Contains(err.Error(), "PodnetVersion") {
		t.Errorf("podnet without a version: %v", err)
	}

	bin := filepath.Join(t.TempDir(), "coredns")
	if err := os.WriteFile(bin, []byte("v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	o.CoreDNS = bin
	first, err := Build(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	second, err := Build(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if second[0].Cached || second[0].Manifest.Digest == first[0].Manifest.Digest {
		t.Error("a changed binary did not make a new image")
	}
}

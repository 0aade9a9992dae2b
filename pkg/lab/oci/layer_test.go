package oci

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sampleEntries is a small file system with every kind of entry; the
// hardlink is listed before the file it names and sorts before it too.
func sampleEntries(t *testing.T) []Entry {
	t.Helper()
	src := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho tool\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(src, 0o755|fs.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	return []Entry{
		Hardlink("/bin/a-tool", "/usr/bin/tool"),
		File("/usr/bin/tool", src),
		Content("etc/motd", []byte("hello\n"), 0o644),
		Symlink("/bin/sh", "busybox"),
		Content("/bin/busybox", []byte("not really busybox"), 0o755),
		Dir("/tmp", 0o1777),
		Symlink("/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
	}
}

func TestWriteTarIsDeterministicAndNormalized(t *testing.T) {
	entries := sampleEntries(t)
	var a, b bytes.Buffer
	if err := WriteTar(&a, entries); err != nil {
		t.Fatal(err)
	}
	reversed := make([]Entry, len(entries))
	for i, e := range entries {
		reversed[len(entries)-1-i] = e
	}
	// The same file system with the hardlink the other way round.
	reversed[len(entries)-1] = File("/bin/a-tool", entries[1].Source)
	reversed[len(entries)-2] = Hardlink("usr/bin/tool", "bin/a-tool")
	if err := WriteTar(&b, reversed); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("the same entries in another order gave another tar")
	}

	tr := tar.NewReader(&a)
	var names []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.ModTime.Unix() != 0 || h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: mtime %v owner %d:%d (%q:%q), want epoch 0:0 unnamed", h.Name, h.ModTime, h.Uid, h.Gid, h.Uname, h.Gname)
		}
		switch h.Name {
		case "bin/a-tool":
			if h.Typeflag != tar.TypeReg || h.Mode != 0o4755 {
				t.Errorf("bin/a-tool: type %q mode %o, want the file (smallest name of the group) with mode 4755", h.Typeflag, h.Mode)
			}
		case "usr/bin/tool":
			if h.Typeflag != tar.TypeLink || h.Linkname != "bin/a-tool" || h.Mode != 0o4755 {
				t.Errorf("usr/bin/tool: type %q -> %q mode %o, want a hardlink to bin/a-tool with its mode 4755", h.Typeflag, h.Linkname, h.Mode)
			}
			// containerd's applier chmods a link to its header's mode: a
			// mode of 0 made busybox's applets unrunnable.
			if h.Mode != 0o4755 {
				t.Errorf("usr/bin/tool: hardlink header mode %o, want its file's 4755", h.Mode)
			}
		case "tmp/":
			if h.Mode != 0o1777 {
				t.Errorf("tmp: mode %o, want 1777", h.Mode)
			}
		}
	}
	want := "bin/ bin/a-tool bin/busybox bin/sh etc/ etc/motd lib64/ lib64/ld-linux-x86-64.so.2 tmp/ usr/ usr/bin/ usr/bin/tool"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("tar order:\n got %s\nwant %s", got, want)
	}
}

func TestWriteTarRejectsBadEntries(t *testing.T) {
	for name, entries := range map[string][]Entry{
		"duplicate":        {Content("a", nil, 0o644), Content("/a", nil, 0o644)},
		"dotdot":           {Content("a/../../etc/passwd", nil, 0o644)},
		"root":             {Dir("/", 0o755)},
		"dangling link":    {Hardlink("a", "b")},
		"link to dir":      {Dir("d", 0o755), Hardlink("a", "d")},
		"parent is a file": {Content("a", nil, 0o644), Content("a/b", nil, 0o644)},
		"missing source":   {File("a", "/nonexistent/podnet-test")},
		"empty symlink":    {Symlink("a", "")},
	} {
		if err := WriteTar(io.Discard, entries); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestLayerRoundTrip writes a layer and unpacks it as a runtime would: the
// files, modes, symlinks and hardlinks come back.
func TestLayerRoundTrip(t *testing.T) {
	s, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.AddLayer(sampleEntries(t))
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.AddImage(Platform{}, Config{}, []Layer{l})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := Extract(s, img, dir); err != nil {
		t.Fatal(err)
	}
	checkSampleTree(t, dir)
}

func checkSampleTree(t *testing.T, dir string) {
	t.Helper()
	if b, err := os.ReadFile(filepath.Join(dir, "usr/bin/tool")); err != nil || string(b) != "#!/bin/sh\necho tool\n" {
		t.Errorf("usr/bin/tool: %q, %v", b, err)
	}
	a, err1 := os.Stat(filepath.Join(dir, "bin/a-tool"))
	b, err2 := os.Stat(filepath.Join(dir, "usr/bin/tool"))
	if err1 != nil || err2 != nil || !os.SameFile(a, b) {
		t.Errorf("bin/a-tool and usr/bin/tool are not one file (%v, %v)", err1, err2)
	} else if a.Mode() != 0o755|fs.ModeSetuid {
		t.Errorf("usr/bin/tool mode %v, want setuid 0755", a.Mode())
	}
	if target, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || target != "busybox" {
		t.Errorf("bin/sh -> %q, %v; want busybox", target, err)
	}
	if target, err := os.Readlink(filepath.Join(dir, "lib64/ld-linux-x86-64.so.2")); err != nil || target != "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" {
		t.Errorf("absolute symlink -> %q, %v", target, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "tmp")); err != nil || st.Mode() != fs.ModeDir|fs.ModeSticky|0o777 {
		t.Errorf("tmp: %v, %v; want a sticky 1777 directory", st.Mode(), err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "etc/motd")); err != nil || string(b) != "hello\n" {
		t.Errorf("etc/motd: %q, %v", b, err)
	}
}

// TestTreeKeepsLinksAndModes lists a host directory and writes it back out
// through a layer.
func TestTreeKeepsLinksAndModes(t *testing.T) {
	src := t.TempDir()
	extract := func(entries []Entry) string {
		s, err := NewStore(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		l, err := s.AddLayer(entries)
		if err != nil {
			t.Fatal(err)
		}
		img, err := s.AddImage(Platform{}, Config{}, []Layer{l})
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		if err := Extract(s, img, dir); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	// Make the sample tree on the host, then list it with Tree.
	checkSampleTree(t, func() string {
		d := extract(sampleEntries(t))
		if err := os.Rename(d, filepath.Join(src, "root")); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(src, "root")
	}())
	entries, err := Tree("/", filepath.Join(src, "root"))
	if err != nil {
		t.Fatal(err)
	}
	var links int
	for _, e := range entries {
		if e.Type == TypeHardlink {
			links++
		}
	}
	if links != 1 {
		t.Errorf("Tree found %d hardlinks, want 1", links)
	}
	checkSampleTree(t, extract(entries))

	// Under a prefix.
	entries, err = Tree("/opt/x", filepath.Join(src, "root"))
	if err != nil {
		t.Fatal(err)
	}
	checkSampleTree(t, filepath.Join(extract(entries), "opt/x"))

	if _, err := Tree("/", filepath.Join(src, "missing")); err == nil {
		t.Error("Tree of a missing directory: no error")
	}
}

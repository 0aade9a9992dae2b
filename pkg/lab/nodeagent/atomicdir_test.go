package nodeagent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readVolume(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "..") {
			continue
		}
		root, err := filepath.EvalSymlinks(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				b, _ := os.ReadFile(p)
				rel, _ := filepath.Rel(root, p)
				out[filepath.Join(e.Name(), rel)] = string(b)
			}
			return nil
		})
	}
	return out
}

func TestWriteAtomic(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	p := payload{"Corefile": {data: []byte("a"), mode: 0o644}, "sub/dir/key": {data: []byte("b"), mode: 0o600}}
	if changed, err := writeAtomic(dir, p); err != nil || !changed {
		t.Fatalf("first write: changed=%v err=%v", changed, err)
	}
	if got := readVolume(t, dir); len(got) != 2 || got["Corefile"] != "a" || got["sub/dir/key"] != "b" {
		t.Fatalf("volume holds %v", got)
	}
	if l, err := os.Readlink(filepath.Join(dir, "Corefile")); err != nil || l != "..data/Corefile" {
		t.Errorf("Corefile is not a symlink through ..data: %q %v", l, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "sub/dir/key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode of sub/dir/key: %v %v", fi, err)
	}
	first, _ := os.Readlink(filepath.Join(dir, dataLink))
	if changed, err := writeAtomic(dir, p); err != nil || changed {
		t.Fatalf("same payload again: changed=%v err=%v", changed, err)
	}
	// A new version: Corefile changes, sub goes, new appears; the old
	// version's directory is removed.
	p2 := payload{"Corefile": {data: []byte("c"), mode: 0o644}, "new": {data: nil, mode: 0o644}}
	if changed, err := writeAtomic(dir, p2); err != nil || !changed {
		t.Fatalf("second write: changed=%v err=%v", changed, err)
	}
	if got := readVolume(t, dir); len(got) != 2 || got["Corefile"] != "c" || got["new"] != "" {
		t.Fatalf("after the update the volume holds %v", got)
	}
	if _, err := os.Lstat(filepath.Join(dir, "sub")); err == nil {
		t.Error("a name the payload dropped is still there")
	}
	if _, err := os.Stat(filepath.Join(dir, first)); err == nil {
		t.Errorf("the old version %s is still there", first)
	}
	// A mode change alone is a change.
	p2["new"] = volumeFile{mode: 0o600}
	if changed, _ := writeAtomic(dir, p2); !changed {
		t.Error("a mode change was not written")
	}
	if _, err := writeAtomic(dir, payload{"/etc/passwd": {data: []byte("x")}}); err == nil {
		t.Error("an absolute path was written")
	}
}

package nodeagent

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// dataLink is the symlink to the current version of a volume's files.
const dataLink = "..data"

// writeAtomic makes dir hold exactly the files of p, as kubelet's
// AtomicWriter does: the files go into a fresh hidden directory
// (..2006_01_02_15_04_05.N), the ..data symlink is swapped to it by one
// rename, and every top-level name is a symlink through ..data. A
// container that has dir mounted sees either the old files or the new
// ones, never a mix (CoreDNS's reload plugin reads its Corefile so). It
// reports whether anything changed; an unchanged payload writes nothing.
func writeAtomic(dir string, p payload) (bool, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("create volume directory %s: %w", dir, err)
	}
	old, err := os.Readlink(filepath.Join(dir, dataLink))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("read %s: %w", filepath.Join(dir, dataLink), err)
	}
	if old != "" {
		if same, err := sameFiles(filepath.Join(dir, old), p); err == nil && same {
			return false, nil
		}
	}
	ts, err := os.MkdirTemp(dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		return false, fmt.Errorf("write volume %s: %w", dir, err)
	}
	if err := os.Chmod(ts, 0o755); err != nil {
		return false, fmt.Errorf("write volume %s: %w", dir, err)
	}
	for rel, f := range p {
		if err := checkRelPath(rel); err != nil {
			_ = os.RemoveAll(ts)
			return false, err
		}
		if err := writeVolumeFile(filepath.Join(ts, rel), f); err != nil {
			_ = os.RemoveAll(ts)
			return false, err
		}
	}
	tmpLink := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmpLink)
	if err := os.Symlink(filepath.Base(ts), tmpLink); err != nil {
		return false, fmt.Errorf("write volume %s: %w", dir, err)
	}
	if err := os.Rename(tmpLink, filepath.Join(dir, dataLink)); err != nil {
		return false, fmt.Errorf("write volume %s: %w", dir, err)
	}
	if err := linkTopLevel(dir, p); err != nil {
		return true, err
	}
	// The old version goes last: until ..data moved, it was in use.
	if old != "" && old != filepath.Base(ts) {
		if err := os.RemoveAll(filepath.Join(dir, old)); err != nil {
			return true, fmt.Errorf("remove the old version of volume %s: %w", dir, err)
		}
	}
	return true, nil
}

func writeVolumeFile(path string, f volumeFile) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.WriteFile(path, f.data, f.mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// WriteFile's mode passes through the umask; the volume's must not.
	if err := os.Chmod(path, f.mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// linkTopLevel makes each top-level name of p a symlink through ..data
// and removes the names of an earlier payload that p no longer has.
func linkTopLevel(dir string, p payload) error {
	want := map[string]bool{}
	for rel := range p {
		top, _, _ := strings.Cut(rel, "/")
		want[top] = true
	}
	for top := range want {
		link, target := filepath.Join(dir, top), filepath.Join(dataLink, top)
		if cur, err := os.Readlink(link); err == nil && cur == target {
			continue
		}
		_ = os.RemoveAll(link)
		if err := os.Symlink(target, link); err != nil {
			return fmt.Errorf("write volume %s: %w", dir, err)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read volume %s: %w", dir, err)
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "..") && !want[e.Name()] {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("remove %s from volume %s: %w", e.Name(), dir, err)
			}
		}
	}
	return nil
}

// sameFiles says whether dir holds exactly p's files, contents and modes.
func sameFiles(dir string, p payload) (bool, error) {
	n := 0
	same := true
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		f, ok := p[filepath.ToSlash(rel)]
		info, ierr := d.Info()
		if !ok || ierr != nil || info.Mode().Perm() != f.mode {
			same = false
			return filepath.SkipAll
		}
		b, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(b, f.data) {
			same = false
			return filepath.SkipAll
		}
		n++
		return nil
	})
	return same && err == nil && n == len(p), err
}

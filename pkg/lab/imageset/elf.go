package imageset

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// view is the file system of an image's layers together, top layer first:
// a path is what the topmost stage holding it has there.
type view []*stage

func (v view) lstat(p string) (*stage, fs.FileInfo, bool) {
	p = rel(p)
	for _, s := range v {
		if st, err := s.root.Lstat(p); err == nil {
			return s, st, true
		}
	}
	return nil, nil, false
}

// resolve follows symlinks in every component of image path p, as the
// kernel would inside the image (absolute targets start at the image's
// root), and tells whether something is there.
func (v view) resolve(p string) (string, bool) {
	pending := strings.Split(rel(p), "/")
	cur := ""
	for links := 0; len(pending) > 0; {
		c := pending[0]
		pending = pending[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = rel(path.Dir("/" + cur))
			continue
		}
		next := rel(cur + "/" + c)
		s, st, ok := v.lstat(next)
		if !ok {
			return "", false
		}
		if st.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		if links++; links > 40 {
			return "", false
		}
		target, err := s.root.Readlink(next)
		if err != nil {
			return "", false
		}
		if strings.HasPrefix(target, "/") {
			cur = ""
		}
		pending = append(strings.Split(target, "/"), pending...)
	}
	return cur, true
}

// need is a file some ELF object needs and the image lacks: a shared
// library (found by name in dirs) or the program interpreter (a path).
type need struct {
	name string   // "libssl.so.3", or "/lib64/ld-linux-x86-64.so.2"
	dirs []string // where the dynamic linker looks, for a library
	by   string   // the object that needs it
	// plugin: the object is a shared object without an interpreter, not a
	// program (possibly a module some program may dlopen).
	plugin bool
}

// candidates are the image paths that would satisfy the need.
func (n need) candidates() []string {
	if strings.HasPrefix(n.name, "/") {
		return []string{rel(n.name)}
	}
	out := make([]string, len(n.dirs))
	for i, d := range n.dirs {
		out[i] = rel(d + "/" + n.name)
	}
	return out
}

// defaultLibDirs is the dynamic linker's search path without ld.so.cache
// (ld.so --help on Debian amd64); images have no ld.so.cache.
var defaultLibDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib"}

type elfInfo struct {
	interp string
	needed []string
	dirs   []string // RPATH and RUNPATH, $ORIGIN expanded
}

// elfCache remembers what each file of a stage needs, by host path.
type elfCache map[string]*elfInfo

// readELF returns what the ELF executable or shared object at hostPath
// needs, or nil for anything else (scripts, data, static programs need
// nothing).
func readELF(hostPath, imgPath string) (*elfInfo, error) {
	f, err := os.Open(hostPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err != nil || !bytes.Equal(magic, []byte(elf.ELFMAG)) {
		return nil, nil
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return nil, nil // not an object the loader would load either
	}
	defer ef.Close()
	if ef.Type != elf.ET_EXEC && ef.Type != elf.ET_DYN {
		return nil, nil
	}
	info := &elfInfo{}
	dynamic := ef.Section(".dynamic") != nil
	for _, p := range ef.Progs {
		if p.Type == elf.PT_DYNAMIC {
			dynamic = true
		}
		if p.Type == elf.PT_INTERP {
			b, err := io.ReadAll(p.Open())
			if err != nil {
				return nil, fmt.Errorf("read interpreter of %s: %w", imgPath, err)
			}
			info.interp = string(bytes.TrimRight(b, "\x00"))
		}
	}
	if !dynamic {
		return info, nil
	}
	if info.needed, err = ef.ImportedLibraries(); err != nil {
		return nil, fmt.Errorf("read needed libraries of %s: %w", imgPath, err)
	}
	for _, tag := range []elf.DynTag{elf.DT_RUNPATH, elf.DT_RPATH} {
		vals, _ := ef.DynString(tag)
		for _, v := range vals {
			for _, d := range strings.Split(v, ":") {
				d = strings.NewReplacer("$ORIGIN", path.Dir("/"+imgPath), "${ORIGIN}", path.Dir("/"+imgPath)).Replace(d)
				if d != "" && !strings.Contains(d, "$") {
					info.dirs = append(info.dirs, d)
				}
			}
		}
	}
	return info, nil
}

// missing lists, sorted, what the ELF objects of the view need and do not
// find in it.
func (v view) missing(cache elfCache) ([]need, error) {
	seen := map[string]bool{}
	found := map[string]need{}
	for _, s := range v {
		err := filepath.WalkDir(s.dir, func(hp string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.Type().IsRegular() {
				return nil
			}
			r, _ := filepath.Rel(s.dir, hp)
			img := filepath.ToSlash(r)
			if seen[img] {
				return nil // hidden by a higher layer
			}
			seen[img] = true
			info, ok := cache[hp]
			if !ok {
				if info, err = readELF(hp, img); err != nil {
					return err
				}
				cache[hp] = info
			}
			if info == nil {
				return nil
			}
			var needs []need
			if info.interp != "" {
				needs = append(needs, need{name: info.interp, by: "/" + img})
			}
			dirs := append(append([]string{}, info.dirs...), defaultLibDirs...)
			for _, lib := range info.needed {
				needs = append(needs, need{name: lib, dirs: dirs, by: "/" + img, plugin: info.interp == ""})
			}
			for _, n := range needs {
				if v.has(n) {
					continue
				}
				key := n.name + "\x00" + strings.Join(n.dirs, ":")
				if _, dup := found[key]; !dup {
					found[key] = n
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("scan %s for ELF objects: %w", s.dir, err)
		}
	}
	out := make([]need, 0, len(found))
	for _, n := range found {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].name != out[j].name {
			return out[i].name < out[j].name
		}
		return out[i].by < out[j].by
	})
	return out, nil
}

func (v view) has(n need) bool {
	for _, c := range n.candidates() {
		if _, ok := v.resolve(c); ok {
			return true
		}
	}
	return false
}

var errNoProvider = errors.New("no package provides it")

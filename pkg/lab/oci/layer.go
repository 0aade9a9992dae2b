package oci

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// EntryType is the kind of file an Entry makes.
type EntryType int

// The kinds of file a layer holds.
const (
	TypeFile EntryType = iota
	TypeDir
	TypeSymlink
	TypeHardlink
)

func (t EntryType) String() string {
	switch t {
	case TypeFile:
		return "file"
	case TypeDir:
		return "dir"
	case TypeSymlink:
		return "symlink"
	case TypeHardlink:
		return "hardlink"
	}
	return fmt.Sprintf("EntryType(%d)", int(t))
}

// Entry is one file of a layer, at Path in the image ("usr/bin/curl" or
// "/usr/bin/curl": the leading slash does not matter).
type Entry struct {
	Path string
	Type EntryType
	// Source is the host file a TypeFile entry's content is read from (when
	// the layer is written, not before). Without a Source, Content is used.
	Source  string
	Content []byte
	// Target is a symlink's target as written, or, for a hardlink, the path
	// in the image of the file it is another name of.
	Target string
	// Mode holds the permission bits and setuid, setgid and sticky (as
	// fs.ModeSetuid... or as octal 0o4000...). For a TypeFile with a Source,
	// 0 means the source's bits.
	Mode     fs.FileMode
	UID, GID int
}

// File is an entry whose content is the host file source, with its mode.
func File(p, source string) Entry { return Entry{Path: p, Type: TypeFile, Source: source} }

// Content is a file entry with inline content.
func Content(p string, data []byte, mode fs.FileMode) Entry {
	return Entry{Path: p, Type: TypeFile, Content: data, Mode: mode}
}

// Dir is a directory entry.
func Dir(p string, mode fs.FileMode) Entry { return Entry{Path: p, Type: TypeDir, Mode: mode} }

// Symlink is a symbolic link at p pointing at target (written as given).
func Symlink(p, target string) Entry { return Entry{Path: p, Type: TypeSymlink, Target: target} }

// Hardlink makes p another name of the file at target (a path in the image).
func Hardlink(p, target string) Entry { return Entry{Path: p, Type: TypeHardlink, Target: target} }

// cleanPath turns an image path into the form a layer stores it in:
// relative, cleaned, never escaping the root.
func cleanPath(p string) (string, error) {
	if strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("invalid path %q: NUL byte", p)
	}
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			// "a/../b" would silently be another file; say so instead.
			return "", fmt.Errorf("invalid path %q: a component is \"..\"", p)
		}
	}
	c := path.Clean("/" + p)
	if c == "/" {
		return "", fmt.Errorf("invalid path %q: the root itself", p)
	}
	return c[1:], nil
}

// epochTime is every entry's mtime.
var epochTime = time.Unix(0, 0).UTC()

// WriteTar writes entries as a deterministic tar stream: entries sorted by
// path, missing parent directories added (0755), mtime 0, owner as given
// (0:0 unless set), no user or group names. Each group of hardlinks is stored
// under its smallest path, so the bytes do not depend on which name the
// caller listed as the original. Duplicate paths are an error.
func WriteTar(w io.Writer, entries []Entry) error {
	byPath, err := normalize(entries)
	if err != nil {
		return err
	}
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	sort.Strings(paths)

	tw := tar.NewWriter(w)
	// A hardlink's header carries its file's mode and owner, as GNU tar
	// writes them: containerd applies a link's mode to the shared inode.
	files := map[string]*tar.Header{}
	for _, p := range paths {
		hdr, err := writeEntry(tw, p, byPath[p], files)
		if err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			files[p] = hdr
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("close tar: %w", err)
	}
	return nil
}

// normalize cleans paths, rejects duplicates, adds parent directories and
// re-roots hardlink groups at their smallest path.
func normalize(entries []Entry) (map[string]Entry, error) {
	byPath := make(map[string]Entry, len(entries))
	for _, e := range entries {
		p, err := cleanPath(e.Path)
		if err != nil {
			return nil, fmt.Errorf("layer entry: %w", err)
		}
		if _, dup := byPath[p]; dup {
			return nil, fmt.Errorf("layer entry %s: duplicate path", p)
		}
		e.Path = p
		if e.Type == TypeHardlink {
			if e.Target, err = cleanPath(e.Target); err != nil {
				return nil, fmt.Errorf("hardlink %s: %w", p, err)
			}
		}
		if e.Type == TypeSymlink && e.Target == "" {
			return nil, fmt.Errorf("symlink %s: empty target", p)
		}
		byPath[p] = e
	}
	given := make([]string, 0, len(byPath))
	for p := range byPath {
		given = append(given, p)
	}
	for _, p := range given {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			parent, ok := byPath[d]
			if !ok {
				byPath[d] = Dir(d, 0o755)
				continue
			}
			if parent.Type != TypeDir {
				return nil, fmt.Errorf("layer entry %s: parent %s is a %s, not a directory", p, d, parent.Type)
			}
		}
	}
	return byPath, rerootHardlinks(byPath)
}

// rerootHardlinks makes the smallest path of every hardlink group the one
// that carries the content, and every other name a link to it.
func rerootHardlinks(byPath map[string]Entry) error {
	groups := map[string][]string{} // file holding the content -> its other names
	for p, e := range byPath {
		if e.Type != TypeHardlink {
			continue
		}
		t := e.Target
		for seen := 0; ; seen++ {
			te, ok := byPath[t]
			if !ok {
				return fmt.Errorf("hardlink %s: target %s is not in the layer", p, t)
			}
			if te.Type == TypeFile {
				break
			}
			if te.Type != TypeHardlink || seen > len(byPath) {
				return fmt.Errorf("hardlink %s: target %s is a %s, not a file", p, t, te.Type)
			}
			t = te.Target
		}
		groups[t] = append(groups[t], p)
	}
	for file, links := range groups {
		first := file
		for _, l := range links {
			if l < first {
				first = l
			}
		}
		content := byPath[file]
		content.Path = first
		byPath[first] = content
		for _, p := range append(links, file) {
			if p != first {
				byPath[p] = Entry{Path: p, Type: TypeHardlink, Target: first}
			}
		}
	}
	return nil
}

// unixMode converts permission and special bits to the tar (Unix) encoding.
// Special bits may be given either way: fs.ModeSetuid or the octal 0o4000
// (so Dir("tmp", 0o1777) is sticky).
func unixMode(m fs.FileMode) int64 {
	u := int64(m & 0o7777)
	if m&fs.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}

func writeEntry(tw *tar.Writer, p string, e Entry, files map[string]*tar.Header) (*tar.Header, error) {
	hdr := &tar.Header{
		Name:    p,
		Mode:    unixMode(e.Mode),
		Uid:     e.UID,
		Gid:     e.GID,
		ModTime: epochTime,
	}
	var src io.Reader
	switch e.Type {
	case TypeDir:
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
	case TypeSymlink:
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = e.Target
		hdr.Mode = 0o777
	case TypeHardlink:
		f, ok := files[e.Target]
		if !ok {
			return nil, fmt.Errorf("hardlink %s: %s not written before it", p, e.Target)
		}
		hdr.Typeflag = tar.TypeLink
		hdr.Linkname = e.Target
		hdr.Mode, hdr.Uid, hdr.Gid = f.Mode, f.Uid, f.Gid
	case TypeFile:
		hdr.Typeflag = tar.TypeReg
		if e.Source == "" {
			hdr.Size = int64(len(e.Content))
			src = strings.NewReader(string(e.Content))
			break
		}
		f, err := os.Open(e.Source)
		if err != nil {
			return nil, fmt.Errorf("layer file %s: %w", p, err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return nil, fmt.Errorf("layer file %s: %w", p, err)
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("layer file %s: source %s is not a regular file", p, e.Source)
		}
		if e.Mode == 0 {
			hdr.Mode = unixMode(st.Mode())
		}
		hdr.Size = st.Size()
		src = f
	default:
		return nil, fmt.Errorf("layer entry %s: unknown type %v", p, e.Type)
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, fmt.Errorf("write tar header %s: %w", p, err)
	}
	if src == nil {
		return hdr, nil
	}
	if n, err := io.CopyN(tw, src, hdr.Size); err != nil {
		return nil, fmt.Errorf("write %s (%d of %d bytes): %w", p, n, hdr.Size, err)
	}
	return hdr, nil
}

// Tree lists the directory root of the host as entries under prefix in the
// image (prefix "" or "/" puts root's content at the image's root): regular
// files by source, directories, symlinks as they are, and files with several
// names as one file plus hardlinks. Modes are kept, owners are not (0:0).
// Devices, sockets and pipes are an error.
func Tree(prefix, root string) ([]Entry, error) {
	type inode struct{ dev, ino uint64 }
	seen := map[inode]string{}
	var out []Entry
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		img := path.Join("/", prefix, filepath.ToSlash(rel))
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch m := info.Mode(); {
		case m.IsDir():
			out = append(out, Entry{Path: img, Type: TypeDir, Mode: m & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)})
		case m&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out = append(out, Symlink(img, t))
		case m.IsRegular():
			if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
				key := inode{uint64(st.Dev), st.Ino}
				if first, ok := seen[key]; ok {
					out = append(out, Hardlink(img, first))
					return nil
				}
				seen[key] = img
			}
			out = append(out, Entry{Path: img, Type: TypeFile, Source: p, Mode: m & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)})
		default:
			return fmt.Errorf("%s: unsupported file type %v", p, m.Type())
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", root, err)
	}
	if len(out) == 0 {
		if _, err := os.Stat(root); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("list %s: %w", root, err)
		}
	}
	return out, nil
}

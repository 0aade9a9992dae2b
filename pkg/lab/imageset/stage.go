package imageset

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// stage is the directory a layer is assembled in before it is written
// (oci.Tree, then oci.Store.AddLayer). Every write goes through os.Root, so
// nothing a package ships can land outside it, and sets its mode
// explicitly, so the process's umask cannot change the layer.
type stage struct {
	dir  string
	root *os.Root
}

func newStage(dir string) (*stage, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create stage: %w", err)
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("create stage: %w", err)
	}
	return &stage{dir: dir, root: r}, nil
}

func (s *stage) close() { s.root.Close() }

// rel turns an image path into a path relative to the stage.
func rel(p string) string { return strings.TrimPrefix(path.Clean("/"+p), "/") }

// mkdirAll creates p and its missing parents with mode 0755.
func (s *stage) mkdirAll(p string) error {
	p = rel(p)
	if p == "" {
		return nil
	}
	if st, err := s.root.Lstat(p); err == nil {
		if st.IsDir() {
			return nil
		}
		return fmt.Errorf("mkdir %s: exists and is not a directory", p)
	}
	if err := s.mkdirAll(path.Dir(p)); err != nil {
		return err
	}
	if err := s.root.Mkdir(p, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return s.root.Chmod(p, 0o755)
}

// clear removes whatever is at p (not a directory), so it can be replaced.
func (s *stage) clear(p string) error {
	st, err := s.root.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.IsDir() {
		return fmt.Errorf("%s: is a directory", p)
	}
	return s.root.Remove(p)
}

func (s *stage) writeFile(p string, r io.Reader, mode fs.FileMode) error {
	p = rel(p)
	if err := s.mkdirAll(path.Dir(p)); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := s.clear(p); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	f, err := s.root.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = s.root.Chmod(p, chmodMode(mode))
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

func (s *stage) copyFile(p, src string, mode fs.FileMode) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer f.Close()
	return s.writeFile(p, f, mode)
}

func (s *stage) symlink(p, target string) error {
	p = rel(p)
	if err := s.mkdirAll(path.Dir(p)); err != nil {
		return fmt.Errorf("symlink %s: %w", p, err)
	}
	if err := s.clear(p); err != nil {
		return fmt.Errorf("symlink %s: %w", p, err)
	}
	if err := s.root.Symlink(target, p); err != nil {
		return fmt.Errorf("symlink %s: %w", p, err)
	}
	return nil
}

func (s *stage) link(p, target string) error {
	p, target = rel(p), rel(target)
	if err := s.mkdirAll(path.Dir(p)); err != nil {
		return fmt.Errorf("link %s: %w", p, err)
	}
	if err := s.clear(p); err != nil {
		return fmt.Errorf("link %s: %w", p, err)
	}
	if err := s.root.Link(target, p); err != nil {
		return fmt.Errorf("link %s: %w", p, err)
	}
	return nil
}

// mkdir makes a directory at p with the given mode.
func (s *stage) mkdir(p string, mode fs.FileMode) error {
	if err := s.mkdirAll(p); err != nil {
		return err
	}
	return s.root.Chmod(rel(p), chmodMode(mode))
}

// tarMode turns a tar header's mode into an fs.FileMode with the special
// bits os.Chmod understands.
func tarMode(m int64) fs.FileMode { return chmodMode(fs.FileMode(m)) }

// chmodMode turns special bits written in octal (0o1777) into the bits
// os.Chmod understands (fs.ModeSticky); fs.Mode bits pass through.
func chmodMode(m fs.FileMode) fs.FileMode {
	mode := m & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	if m&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

// filter decides which of a package's files go into an image.
type filter struct {
	only    []string // if set, only these paths (and what is under them)
	exclude []string // never these
}

// noise is what no image needs: documentation, manuals, translations,
// init systems' files, headers, static libraries, and iconv's modules.
var noise = []string{
	"usr/share/doc", "usr/share/doc-base", "usr/share/man", "usr/share/info", "usr/share/locale",
	"usr/share/lintian", "usr/share/bug", "usr/share/bash-completion", "usr/share/zsh", "usr/share/fish",
	"usr/share/apport", "usr/share/vim", "usr/share/menu", "usr/share/pixmaps", "usr/share/applications",
	"usr/share/gdb", "usr/share/initramfs-tools", "usr/share/polkit-1", "usr/share/common-licenses",
	"usr/include", "usr/lib/x86_64-linux-gnu/gconv", "usr/lib/x86_64-linux-gnu/pkgconfig",
	"etc/init.d", "etc/logrotate.d", "etc/ufw", "etc/cron.d", "etc/cron.daily", "etc/apparmor.d",
	"etc/systemd", "lib/systemd", "usr/lib/systemd", "lib/udev", "usr/lib/udev",
	"*.a", "*.la",
}

// match reports whether p is pattern or under it; a pattern without a slash
// matches the base name (path.Match syntax).
func match(pattern, p string) bool {
	if !strings.Contains(pattern, "/") {
		ok, _ := path.Match(pattern, path.Base(p))
		return ok
	}
	if ok, _ := path.Match(pattern, p); ok {
		return true
	}
	return strings.HasPrefix(p, pattern+"/")
}

func (f filter) keep(p string, isDir bool) bool {
	for _, x := range append(noise, f.exclude...) {
		if match(x, p) {
			return false
		}
	}
	if len(f.only) == 0 {
		return true
	}
	if isDir {
		// Directories come with the files kept under them.
		return false
	}
	for _, o := range f.only {
		if match(o, p) {
			return true
		}
	}
	return false
}

// extract writes the tar stream of a package's file system into the stage,
// keeping what f keeps. Later packages replace earlier files.
func (s *stage) extract(r io.Reader, f filter) ([]string, error) {
	var kept []string
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return kept, nil
		}
		if err != nil {
			return kept, err
		}
		p := rel(hdr.Name)
		if p == "" || strings.Contains(hdr.Name, "..") {
			continue
		}
		isDir := hdr.Typeflag == tar.TypeDir
		if !f.keep(p, isDir) {
			continue
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = s.mkdir(p, tarMode(hdr.Mode))
		case tar.TypeReg:
			err = s.writeFile(p, tr, tarMode(hdr.Mode))
		case tar.TypeSymlink:
			err = s.symlink(p, hdr.Linkname)
		case tar.TypeLink:
			err = s.link(p, hdr.Linkname)
		default:
			err = fmt.Errorf("%s: unsupported file type %q", p, hdr.Typeflag)
		}
		if err != nil {
			return kept, err
		}
		if !isDir {
			kept = append(kept, p)
		}
	}
}

// hostPath is where image path p of the stage is on the host (no symlink
// resolution).
func (s *stage) hostPath(p string) string { return filepath.Join(s.dir, filepath.FromSlash(rel(p))) }

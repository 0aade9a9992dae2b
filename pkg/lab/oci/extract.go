package oci

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
)

// Extract unpacks the layers of img, lowest first, into the directory dir
// (created if needed), as a container runtime would: later layers replace
// earlier files, OCI whiteouts (.wh.<name>, .wh..wh..opq) delete, modes and
// owners are applied. Nothing is written outside dir: paths and symlinks are
// resolved inside it.
func Extract(src BlobSource, img Image, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("extract: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("extract: %w", err)
	}
	defer root.Close()
	for i, l := range img.Layers {
		if err := extractLayer(src, l.Descriptor, root); err != nil {
			return fmt.Errorf("extract layer %d (%s) into %s: %w", i+1, l.Digest, dir, err)
		}
	}
	return nil
}

func extractLayer(src BlobSource, d Descriptor, root *os.Root) error {
	blob, err := src.Open(d.Digest)
	if err != nil {
		return err
	}
	defer blob.Close()
	br := bufio.NewReader(newVerifyReader(blob, d))
	var r io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return err
		}
		defer zr.Close()
		r = zr
	}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if err := applyEntry(root, tr, hdr); err != nil {
			return err
		}
	}
	// Read to the end so the digest is checked.
	_, err = io.Copy(io.Discard, br)
	return err
}

func applyEntry(root *os.Root, tr *tar.Reader, hdr *tar.Header) error {
	name, err := cleanPath(hdr.Name)
	if err != nil {
		return err
	}
	dir, base := path.Split(name)
	if base == ".wh..wh..opq" {
		entries, err := fs.ReadDir(root.FS(), strings.TrimSuffix(dir, "/"))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		for _, e := range entries {
			if err := root.RemoveAll(dir + e.Name()); err != nil {
				return err
			}
		}
		return nil
	}
	if hidden, ok := strings.CutPrefix(base, ".wh."); ok {
		return root.RemoveAll(dir + hidden)
	}
	if dir != "" {
		if err := root.MkdirAll(strings.TrimSuffix(dir, "/"), 0o755); err != nil {
			return err
		}
	}
	mode := fs.FileMode(hdr.Mode).Perm()
	if hdr.Mode&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if hdr.Mode&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if hdr.Mode&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	if st, err := root.Lstat(name); err == nil && !(st.IsDir() && hdr.Typeflag == tar.TypeDir) {
		if err := root.RemoveAll(name); err != nil {
			return err
		}
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := root.MkdirAll(name, 0o755); err != nil {
			return err
		}
	case tar.TypeReg:
		f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	case tar.TypeSymlink:
		return root.Symlink(hdr.Linkname, name)
	case tar.TypeLink:
		target, err := cleanPath(hdr.Linkname)
		if err != nil {
			return err
		}
		if err := root.Link(target, name); err != nil {
			return err
		}
		// Then, as containerd does, the link's mode and owner are applied
		// to the file it shares.
	default:
		return fmt.Errorf("%s: unsupported tar entry type %q", name, hdr.Typeflag)
	}
	if os.Geteuid() == 0 {
		if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
			return err
		}
	}
	// After chown, which clears setuid and setgid.
	return root.Chmod(name, mode)
}

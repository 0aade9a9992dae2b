package oci

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

// Named is an image and the names it carries ("docker.io/library/nginx:latest").
type Named struct {
	Image Image
	Names []string
}

// WriteArchive writes images, whose blobs are in src, as an OCI image-layout
// tar archive: oci-layout, index.json with one manifest descriptor per name
// (annotated with io.containerd.image.name = the full name and
// org.opencontainers.image.ref.name = its tag, as containerd's own export
// does), then every blob once under blobs/sha256/<hex>, sorted. Names are
// normalized ("nginx" is docker.io/library/nginx:latest). The bytes depend
// only on the images and their names.
func WriteArchive(w io.Writer, src BlobSource, images []Named) error {
	idx := Index{SchemaVersion: 2, MediaType: MediaTypeIndex, Manifests: []Descriptor{}}
	blobs := map[Digest]Descriptor{}
	for _, n := range images {
		if len(n.Names) == 0 {
			return fmt.Errorf("write archive: image %s has no name", n.Image.Manifest.Digest)
		}
		for _, name := range n.Names {
			ref, err := ParseReference(name)
			if err != nil {
				return fmt.Errorf("write archive: %w", err)
			}
			if ref.Tag == "" {
				return fmt.Errorf("write archive: image name %s has no tag", name)
			}
			d := n.Image.Manifest
			d.Annotations = map[string]string{AnnotationImageName: ref.String(), AnnotationRefName: ref.Tag}
			idx.Manifests = append(idx.Manifests, d)
		}
		for _, b := range n.Image.Blobs() {
			blobs[b.Digest] = b
		}
	}
	digests := make([]Digest, 0, len(blobs))
	for d := range blobs {
		digests = append(digests, d)
	}
	sort.Slice(digests, func(i, j int) bool { return digests[i] < digests[j] })

	tw := tar.NewWriter(w)
	layout, _ := json.Marshal(map[string]string{"imageLayoutVersion": layoutVersion})
	index, err := json.Marshal(idx)
	if err != nil {
		return fmt.Errorf("write archive: encode index: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{"oci-layout", layout}, {"index.json", index}} {
		if err := writeArchiveFile(tw, f.name, int64(len(f.data)), strings.NewReader(string(f.data))); err != nil {
			return err
		}
	}
	for _, name := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: epochTime}); err != nil {
			return fmt.Errorf("write archive: %w", err)
		}
	}
	for _, dg := range digests {
		d := blobs[dg]
		r, err := src.Open(dg)
		if err != nil {
			return fmt.Errorf("write archive: %w", err)
		}
		err = writeArchiveFile(tw, "blobs/sha256/"+dg.Hex(), d.Size, newVerifyReader(r, d))
		r.Close()
		if err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write archive: %w", err)
	}
	return nil
}

func writeArchiveFile(tw *tar.Writer, name string, size int64, r io.Reader) error {
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: epochTime}); err != nil {
		return fmt.Errorf("write archive %s: %w", name, err)
	}
	if _, err := io.CopyN(tw, r, size); err != nil {
		return fmt.Errorf("write archive %s: %w", name, err)
	}
	// Reach EOF so a verifying reader checks the digest.
	if n, err := io.Copy(io.Discard, r); err != nil || n != 0 {
		if err == nil {
			err = fmt.Errorf("%d bytes more than its size %d", n, size)
		}
		return fmt.Errorf("write archive %s: %w", name, err)
	}
	return nil
}

// WriteArchiveFile writes the archive to file p (atomically: a temporary
// file renamed into place).
func WriteArchiveFile(p string, src BlobSource, images []Named) error {
	tmp, err := os.CreateTemp(path.Dir(p), ".tmp-archive-")
	if err != nil {
		return fmt.Errorf("write archive %s: %w", p, err)
	}
	defer os.Remove(tmp.Name())
	if err := WriteArchive(tmp, src, images); err != nil {
		tmp.Close()
		return fmt.Errorf("write archive %s: %w", p, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write archive %s: %w", p, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write archive %s: %w", p, err)
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return fmt.Errorf("write archive %s: %w", p, err)
	}
	return nil
}

// Archive is an OCI image-layout tar archive opened for reading: its blobs
// are read in place.
type Archive struct {
	f      *os.File
	blobs  map[Digest]section
	index  Index
	layout string // imageLayoutVersion
}

type section struct{ off, size int64 }

// countingReader tells where in the file the tar reader is: archive/tar
// reads headers whole, so after Next the count is the entry's data offset.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// OpenArchive opens the OCI image-layout archive at p and reads its index.
func OpenArchive(p string) (*Archive, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("open archive: %w", err)
	}
	a := &Archive{f: f, blobs: map[Digest]section{}}
	if err := a.scan(); err != nil {
		f.Close()
		return nil, fmt.Errorf("open archive %s: %w", p, err)
	}
	return a, nil
}

func (a *Archive) scan() error {
	cr := &countingReader{r: a.f}
	tr := tar.NewReader(cr)
	var haveIndex bool
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		name := strings.TrimPrefix(path.Clean("/"+hdr.Name), "/")
		switch {
		case name == "oci-layout":
			var l struct {
				Version string `json:"imageLayoutVersion"`
			}
			if err := json.NewDecoder(io.LimitReader(tr, 1<<20)).Decode(&l); err != nil {
				return fmt.Errorf("decode oci-layout: %w", err)
			}
			a.layout = l.Version
		case name == "index.json":
			if err := json.NewDecoder(io.LimitReader(tr, 16<<20)).Decode(&a.index); err != nil {
				return fmt.Errorf("decode index.json: %w", err)
			}
			haveIndex = true
		case strings.HasPrefix(name, "blobs/sha256/"):
			d := Digest("sha256:" + strings.TrimPrefix(name, "blobs/sha256/"))
			if err := d.Validate(); err != nil {
				return fmt.Errorf("blob file %s: %w", hdr.Name, err)
			}
			a.blobs[d] = section{off: cr.n, size: hdr.Size}
		}
	}
	if a.layout != layoutVersion {
		return fmt.Errorf("not an OCI image layout: oci-layout version %q, want %q", a.layout, layoutVersion)
	}
	if !haveIndex {
		return errors.New("not an OCI image layout: no index.json")
	}
	return nil
}

// Close closes the archive file.
func (a *Archive) Close() error { return a.f.Close() }

// Index is the archive's index.json.
func (a *Archive) Index() Index { return a.index }

// Open returns the content of blob d, read from the archive.
func (a *Archive) Open(d Digest) (io.ReadCloser, error) {
	s, ok := a.blobs[d]
	if !ok {
		return nil, fmt.Errorf("open blob %s: not in the archive", d)
	}
	return io.NopCloser(io.NewSectionReader(a.f, s.off, s.size)), nil
}

// Images lists the archive's images for platform p (zero: linux/amd64) with
// their names, in index order. An index entry that is itself an index (a
// multi-platform image) stands for its manifest for p. Entries without a
// name annotation give images without names.
func (a *Archive) Images(p Platform) ([]Named, error) {
	if p.OS == "" {
		p = Platform{OS: "linux", Architecture: "amd64"}
	}
	var out []Named
	pos := map[Digest]int{}
	for _, d := range a.index.Manifests {
		name := d.Annotations[AnnotationImageName]
		if name == "" {
			// Only a full reference names an image; a bare tag does not.
			if n := d.Annotations[AnnotationRefName]; strings.ContainsAny(n, "/:") {
				name = n
			}
		}
		md, err := a.platformManifest(d, p)
		if err != nil {
			return nil, err
		}
		i, ok := pos[md.Digest]
		if !ok {
			img, err := LoadImage(a, md)
			if err != nil {
				return nil, err
			}
			i = len(out)
			pos[md.Digest] = i
			out = append(out, Named{Image: img})
		}
		if name != "" {
			out[i].Names = append(out[i].Names, name)
		}
	}
	return out, nil
}

func (a *Archive) platformManifest(d Descriptor, p Platform) (Descriptor, error) {
	switch d.MediaType {
	case MediaTypeManifest, mediaTypeDockerManifest:
		md := d
		md.Annotations = nil
		return md, nil
	case MediaTypeIndex, mediaTypeDockerList:
		b, err := readBlob(a, d)
		if err != nil {
			return Descriptor{}, err
		}
		var idx Index
		if err := json.Unmarshal(b, &idx); err != nil {
			return Descriptor{}, fmt.Errorf("decode index %s: %w", d.Digest, err)
		}
		for _, m := range idx.Manifests {
			if m.Platform != nil && m.Platform.OS == p.OS && m.Platform.Architecture == p.Architecture {
				return a.platformManifest(m, p)
			}
		}
		return Descriptor{}, fmt.Errorf("index %s: no manifest for %s/%s", d.Digest, p.OS, p.Architecture)
	}
	return Descriptor{}, fmt.Errorf("index entry %s: unsupported media type %q", d.Digest, d.MediaType)
}

// Verify checks the whole archive: every blob's content has the digest it
// is stored under, and every image of the index (every platform) has its
// manifest, config and layers present with the sizes the descriptors give.
func (a *Archive) Verify() error {
	digests := make([]Digest, 0, len(a.blobs))
	for d := range a.blobs {
		digests = append(digests, d)
	}
	sort.Slice(digests, func(i, j int) bool { return digests[i] < digests[j] })
	for _, d := range digests {
		s := a.blobs[d]
		r := newVerifyReader(io.NewSectionReader(a.f, s.off, s.size), Descriptor{Digest: d, Size: s.size})
		if _, err := io.Copy(io.Discard, r); err != nil {
			return fmt.Errorf("verify archive: %w", err)
		}
	}
	var check func(d Descriptor, depth int) error
	check = func(d Descriptor, depth int) error {
		s, ok := a.blobs[d.Digest]
		if !ok {
			return fmt.Errorf("verify archive: %s %s is missing", d.MediaType, d.Digest)
		}
		if s.size != d.Size {
			return fmt.Errorf("verify archive: %s %s has %d bytes, its descriptor says %d", d.MediaType, d.Digest, s.size, d.Size)
		}
		switch d.MediaType {
		case MediaTypeIndex, mediaTypeDockerList:
			if depth > 4 {
				return fmt.Errorf("verify archive: index %s nested too deep", d.Digest)
			}
			b, err := readBlob(a, d)
			if err != nil {
				return fmt.Errorf("verify archive: %w", err)
			}
			var idx Index
			if err := json.Unmarshal(b, &idx); err != nil {
				return fmt.Errorf("verify archive: decode index %s: %w", d.Digest, err)
			}
			for _, m := range idx.Manifests {
				if err := check(m, depth+1); err != nil {
					return err
				}
			}
		case MediaTypeManifest, mediaTypeDockerManifest:
			m, err := ReadManifest(a, d)
			if err != nil {
				return fmt.Errorf("verify archive: %w", err)
			}
			for _, b := range append([]Descriptor{m.Config}, m.Layers...) {
				if err := check(b, depth+1); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if len(a.index.Manifests) == 0 {
		return errors.New("verify archive: the index lists no image")
	}
	for _, d := range a.index.Manifests {
		if err := check(d, 0); err != nil {
			return err
		}
	}
	return nil
}

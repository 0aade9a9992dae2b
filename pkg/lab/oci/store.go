package oci

import (
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// BlobSource gives the content of blobs by digest: a Store or an Archive.
type BlobSource interface {
	Open(d Digest) (io.ReadCloser, error)
}

// Store keeps blobs on disk by digest, laid out like an OCI image layout's
// blobs directory (<dir>/blobs/sha256/<hex>). It is safe for one writer.
type Store struct {
	dir string
}

// NewStore opens (creating it if needed) a blob store in dir.
func NewStore(dir string) (*Store, error) {
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return nil, fmt.Errorf("create blob store %s: %w", dir, err)
	}
	return &Store{dir: dir}, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) blobPath(d Digest) string {
	return filepath.Join(s.dir, "blobs", "sha256", d.Hex())
}

// Open returns the content of blob d.
func (s *Store) Open(d Digest) (io.ReadCloser, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("open blob: %w", err)
	}
	f, err := os.Open(s.blobPath(d))
	if err != nil {
		return nil, fmt.Errorf("open blob %s: %w", d, err)
	}
	return f, nil
}

// AddBlob stores data as a blob of the given media type.
func (s *Store) AddBlob(mediaType string, data []byte) (Descriptor, error) {
	d := Descriptor{MediaType: mediaType, Digest: DigestOf(data), Size: int64(len(data))}
	p := s.blobPath(d.Digest)
	if st, err := os.Stat(p); err == nil && st.Size() == d.Size {
		return d, nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-")
	if err != nil {
		return Descriptor{}, fmt.Errorf("store blob %s: %w", d.Digest, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return Descriptor{}, fmt.Errorf("store blob %s: %w", d.Digest, err)
	}
	if err := s.commit(tmp, p); err != nil {
		return Descriptor{}, fmt.Errorf("store blob %s: %w", d.Digest, err)
	}
	return d, nil
}

func (s *Store) commit(tmp *os.File, p string) error {
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), p)
}

// Layer is a compressed layer in a store.
type Layer struct {
	Descriptor
	// DiffID is the digest of the uncompressed tar, which the image config
	// lists.
	DiffID Digest
	// UncompressedSize is the size of the tar.
	UncompressedSize int64
}

// AddLayer writes entries as a gzip-compressed layer (WriteTar, then gzip
// with an empty header: no name, mtime 0), so the same entries with the same
// contents give the same digests.
func (s *Store) AddLayer(entries []Entry) (Layer, error) {
	tmp, err := os.CreateTemp(filepath.Join(s.dir, "blobs", "sha256"), ".tmp-")
	if err != nil {
		return Layer{}, fmt.Errorf("add layer: %w", err)
	}
	defer os.Remove(tmp.Name())

	compressed := newDigester(tmp)
	zw, err := gzip.NewWriterLevel(compressed, gzip.DefaultCompression)
	if err != nil {
		tmp.Close()
		return Layer{}, fmt.Errorf("add layer: %w", err)
	}
	uncompressed := newDigester(zw)
	if err := WriteTar(uncompressed, entries); err != nil {
		tmp.Close()
		return Layer{}, fmt.Errorf("add layer: %w", err)
	}
	if err := zw.Close(); err != nil {
		tmp.Close()
		return Layer{}, fmt.Errorf("add layer: compress: %w", err)
	}
	l := Layer{
		Descriptor:       Descriptor{MediaType: MediaTypeLayerGzip, Digest: compressed.digest(), Size: compressed.n},
		DiffID:           uncompressed.digest(),
		UncompressedSize: uncompressed.n,
	}
	if err := s.commit(tmp, s.blobPath(l.Digest)); err != nil {
		return Layer{}, fmt.Errorf("add layer %s: %w", l.Digest, err)
	}
	return l, nil
}

// Image is an image in a store.
type Image struct {
	Manifest Descriptor // with the platform set
	Config   Descriptor
	Layers   []Layer
}

// Size is the image's size as a registry stores it: the manifest, the
// config and the compressed layers.
func (i Image) Size() int64 {
	n := i.Manifest.Size + i.Config.Size
	for _, l := range i.Layers {
		n += l.Size
	}
	return n
}

// AddImage writes the config and the manifest of an image made of layers
// (lowest first) for platform; a zero Platform means linux/amd64.
func (s *Store) AddImage(p Platform, c Config, layers []Layer) (Image, error) {
	if p.OS == "" {
		p.OS = "linux"
	}
	if p.Architecture == "" {
		p.Architecture = "amd64"
	}
	cfg := imageConfig{
		Created:      epoch,
		Architecture: p.Architecture,
		OS:           p.OS,
		Variant:      p.Variant,
		Config: containerConfig{
			User: c.User, Env: c.Env, Entrypoint: c.Entrypoint, Cmd: c.Cmd,
			WorkingDir: c.WorkingDir, Labels: c.Labels, StopSignal: c.StopSignal,
		},
		RootFS: rootFS{Type: "layers", DiffIDs: []Digest{}},
	}
	for _, port := range c.ExposedPorts {
		if !strings.Contains(port, "/") {
			port += "/tcp"
		}
		if cfg.Config.ExposedPorts == nil {
			cfg.Config.ExposedPorts = map[string]struct{}{}
		}
		cfg.Config.ExposedPorts[port] = struct{}{}
	}
	m := Manifest{SchemaVersion: 2, MediaType: MediaTypeManifest, Layers: []Descriptor{}}
	for i, l := range layers {
		if l.DiffID == "" {
			return Image{}, fmt.Errorf("add image: layer %d (%s) has no diff ID", i, l.Digest)
		}
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.DiffID)
		cfg.History = append(cfg.History, history{Created: epoch, CreatedBy: fmt.Sprintf("podnet oci: layer %d", i+1)})
		m.Layers = append(m.Layers, Descriptor{MediaType: l.MediaType, Digest: l.Digest, Size: l.Size})
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return Image{}, fmt.Errorf("add image: encode config: %w", err)
	}
	if m.Config, err = s.AddBlob(MediaTypeConfig, cfgJSON); err != nil {
		return Image{}, fmt.Errorf("add image: %w", err)
	}
	mJSON, err := json.Marshal(m)
	if err != nil {
		return Image{}, fmt.Errorf("add image: encode manifest: %w", err)
	}
	md, err := s.AddBlob(MediaTypeManifest, mJSON)
	if err != nil {
		return Image{}, fmt.Errorf("add image: %w", err)
	}
	md.Platform = &p
	return Image{Manifest: md, Config: m.Config, Layers: layers}, nil
}

// ReadManifest reads and decodes the manifest d from src.
func ReadManifest(src BlobSource, d Descriptor) (Manifest, error) {
	var m Manifest
	b, err := readBlob(src, d)
	if err != nil {
		return m, fmt.Errorf("read manifest: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("decode manifest %s: %w", d.Digest, err)
	}
	switch m.MediaType {
	case "", MediaTypeManifest, mediaTypeDockerManifest:
	default:
		return m, fmt.Errorf("manifest %s: media type %q is not an image manifest", d.Digest, m.MediaType)
	}
	return m, nil
}

// readBlob reads a small blob whole and checks its digest.
func readBlob(src BlobSource, d Descriptor) ([]byte, error) {
	r, err := src.Open(d.Digest)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	const max = 16 << 20
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, fmt.Errorf("read blob %s: %w", d.Digest, err)
	}
	if len(b) > max {
		return nil, fmt.Errorf("read blob %s: larger than %d bytes", d.Digest, max)
	}
	if got := DigestOf(b); got != d.Digest {
		return nil, fmt.Errorf("blob %s: content has digest %s", d.Digest, got)
	}
	return b, nil
}

// Blobs lists the descriptors of everything the image consists of: the
// manifest, the config and the layers.
func (i Image) Blobs() []Descriptor {
	out := []Descriptor{i.Manifest, i.Config}
	for _, l := range i.Layers {
		out = append(out, l.Descriptor)
	}
	return out
}

// LoadImage reads the image whose manifest is d back from src.
func LoadImage(src BlobSource, d Descriptor) (Image, error) {
	m, err := ReadManifest(src, d)
	if err != nil {
		return Image{}, err
	}
	img := Image{Manifest: d, Config: m.Config}
	for _, l := range m.Layers {
		img.Layers = append(img.Layers, Layer{Descriptor: l})
	}
	return img, nil
}

// digester counts and hashes what passes through it to w.
type digester struct {
	w io.Writer
	h hash.Hash
	n int64
}

func newDigester(w io.Writer) *digester { return &digester{w: w, h: sha256.New()} }

func (d *digester) Write(p []byte) (int, error) {
	n, err := d.w.Write(p)
	d.h.Write(p[:n])
	d.n += int64(n)
	return n, err
}

func (d *digester) digest() Digest {
	return Digest("sha256:" + hex.EncodeToString(d.h.Sum(nil)))
}

// verifyReader checks, at EOF, that what was read has the expected digest
// and size.
type verifyReader struct {
	r    io.Reader
	h    hash.Hash
	n    int64
	want Descriptor
}

func newVerifyReader(r io.Reader, want Descriptor) *verifyReader {
	return &verifyReader{r: r, h: sha256.New(), want: want}
}

func (v *verifyReader) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if errors.Is(err, io.EOF) {
		if v.n != v.want.Size {
			return n, fmt.Errorf("blob %s: %d bytes, want %d", v.want.Digest, v.n, v.want.Size)
		}
		if got := Digest("sha256:" + hex.EncodeToString(v.h.Sum(nil))); got != v.want.Digest {
			return n, fmt.Errorf("blob %s: content has digest %s", v.want.Digest, got)
		}
	}
	return n, err
}

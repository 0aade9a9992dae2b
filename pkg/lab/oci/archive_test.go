package oci

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// twoImages builds two images in one store (sharing the top layer) and
// names them.
func twoImages(t *testing.T) (*Store, []Named) {
	t.Helper()
	s, web := buildSample(t, sampleEntries(t))
	other, err := s.AddLayer([]Entry{Content("pause", []byte("pause"), 0o755)})
	if err != nil {
		t.Fatal(err)
	}
	pause, err := s.AddImage(Platform{}, Config{Entrypoint: []string{"/pause"}, User: "65535:65535"}, []Layer{other})
	if err != nil {
		t.Fatal(err)
	}
	return s, []Named{
		{Image: web, Names: []string{"nginx", "registry.k8s.io/e2e-test-images/nginx:1.27-0"}},
		{Image: pause, Names: []string{"registry.k8s.io/pause:3.10.2"}},
	}
}

// TestArchiveLayout reads the archive with nothing but archive/tar and
// checks it is an OCI image layout that containerd's import names right.
func TestArchiveLayout(t *testing.T) {
	s, images := twoImages(t)
	var buf bytes.Buffer
	if err := WriteArchive(&buf, s, images); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	var order []string
	tr := tar.NewReader(bytes.NewReader(buf.Bytes()))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		order = append(order, h.Name)
		if h.Typeflag == tar.TypeReg {
			files[h.Name], _ = io.ReadAll(tr)
		}
	}
	if len(order) < 2 || order[0] != "oci-layout" || order[1] != "index.json" {
		t.Errorf("archive starts with %v, want oci-layout, index.json", order)
	}
	if got := strings.TrimSpace(string(files["oci-layout"])); got != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout: %s", got)
	}
	for name, b := range files {
		if hex, ok := strings.CutPrefix(name, "blobs/sha256/"); ok && DigestOf(b).Hex() != hex {
			t.Errorf("%s holds content with digest %s", name, DigestOf(b))
		}
	}
	blob := func(d Descriptor) []byte {
		b, ok := files["blobs/sha256/"+d.Digest.Hex()]
		if !ok || int64(len(b)) != d.Size {
			t.Fatalf("blob %s (%d bytes) missing or of another size", d.Digest, d.Size)
		}
		return b
	}
	var idx Index
	if err := json.Unmarshal(files["index.json"], &idx); err != nil {
		t.Fatal(err)
	}
	if idx.SchemaVersion != 2 || idx.MediaType != MediaTypeIndex {
		t.Errorf("index: schema %d media type %q", idx.SchemaVersion, idx.MediaType)
	}
	var names []string
	for _, d := range idx.Manifests {
		name := d.Annotations[AnnotationImageName]
		names = append(names, name)
		if tag := name[strings.LastIndex(name, ":")+1:]; d.Annotations[AnnotationRefName] != tag {
			t.Errorf("%s: ref.name %q, want the tag %q", name, d.Annotations[AnnotationRefName], tag)
		}
		if d.MediaType != MediaTypeManifest || d.Platform == nil || d.Platform.OS != "linux" || d.Platform.Architecture != "amd64" {
			t.Errorf("%s: descriptor %+v", name, d)
		}
		var m Manifest
		if err := json.Unmarshal(blob(d), &m); err != nil {
			t.Fatal(err)
		}
		blob(m.Config)
		for _, l := range m.Layers {
			blob(l)
		}
	}
	want := []string{"docker.io/library/nginx:latest", "registry.k8s.io/e2e-test-images/nginx:1.27-0", "registry.k8s.io/pause:3.10.2"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("index names %v, want %v", names, want)
	}
	// 2 manifests, 2 configs, 3 layers: every blob once.
	var blobs []string
	for name := range files {
		if strings.HasPrefix(name, "blobs/") {
			blobs = append(blobs, name)
		}
	}
	if len(blobs) != 7 || !sort.StringsAreSorted(order[4:]) {
		t.Errorf("blobs %v (order %v), want 7 sorted", blobs, order)
	}

	var again bytes.Buffer
	if err := WriteArchive(&again, s, images); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("the same images gave two different archives")
	}
}

func TestOpenArchiveVerifiesAndGroupsNames(t *testing.T) {
	s, images := twoImages(t)
	p := filepath.Join(t.TempDir(), "images.tar")
	if err := WriteArchiveFile(p, s, images); err != nil {
		t.Fatal(err)
	}
	a, err := OpenArchive(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Verify(); err != nil {
		t.Fatalf("verify a good archive: %v", err)
	}
	got, err := a.Images(Platform{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Image.Manifest.Digest != images[0].Image.Manifest.Digest ||
		!reflect.DeepEqual(got[0].Names, []string{"docker.io/library/nginx:latest", "registry.k8s.io/e2e-test-images/nginx:1.27-0"}) ||
		len(got[1].Names) != 1 || len(got[0].Image.Layers) != 2 {
		t.Errorf("images %+v", got)
	}
	// The blobs read from the archive unpack.
	dir := t.TempDir()
	if err := Extract(a, got[0].Image, dir); err != nil {
		t.Fatal(err)
	}
	checkSampleTree(t, dir)
	a.Close()

	// One flipped byte in the last blob: Verify names it.
	b, _ := os.ReadFile(p)
	i := bytes.LastIndex(b, []byte("pause"))
	b[i] ^= 1
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	a, err = OpenArchive(p)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.Verify(); err == nil || !strings.Contains(err.Error(), "digest") {
		t.Errorf("verify a corrupted archive: %v, want a digest error", err)
	}

	if _, err := OpenArchive(filepath.Join(t.TempDir(), "missing.tar")); err == nil {
		t.Error("open a missing archive: no error")
	}
	notLayout := filepath.Join(t.TempDir(), "x.tar")
	var nb bytes.Buffer
	_ = WriteTar(&nb, []Entry{Content("index.json", []byte("{}"), 0o644)})
	_ = os.WriteFile(notLayout, nb.Bytes(), 0o644)
	if _, err := OpenArchive(notLayout); err == nil || !strings.Contains(err.Error(), "oci-layout") {
		t.Errorf("open a tar without oci-layout: %v", err)
	}
}

func TestWriteArchiveRefusesBadNames(t *testing.T) {
	s, images := twoImages(t)
	for _, names := range [][]string{nil, {"Bad/Name"}, {"nginx@sha256:" + strings.Repeat("0", 64)}} {
		images[0].Names = names
		if err := WriteArchive(io.Discard, s, images); err == nil {
			t.Errorf("names %q: no error", names)
		}
	}
}

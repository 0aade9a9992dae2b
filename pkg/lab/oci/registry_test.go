package oci

import (
	"bytes"
	"context"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestPushToRegistry(t *testing.T) {
	s, images := twoImages(t)
	fake := newFakeRegistry(t)
	srv := httptest.NewServer(fake)
	defer srv.Close()
	reg := &Registry{URL: srv.URL}
	ctx := context.Background()

	web := images[0]
	if err := reg.PushImage(ctx, s, web.Image, web.Names...); err != nil {
		t.Fatal(err)
	}
	manifest, err := readBlob(s, web.Image.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"docker.io/library/nginx:latest", "registry.k8s.io/e2e-test-images/nginx:1.27-0"} {
		m, ok := fake.manifests[key]
		if !ok {
			t.Fatalf("registry has no manifest %s; it has %v", key, fake.manifests)
		}
		if !bytes.Equal(m.body, manifest) || m.mediaType != MediaTypeManifest {
			t.Errorf("%s: stored %q (%s), want the manifest bytes as built", key, m.body, m.mediaType)
		}
		repo, _, _ := strings.Cut(key, ":")
		for _, b := range append([]Descriptor{web.Image.Config}, layerDescriptors(web.Image)...) {
			if _, ok := fake.blobs[repo][b.Digest]; !ok {
				t.Errorf("%s lacks blob %s", repo, b.Digest)
			}
		}
	}
	// Uploaded once, into the first repository; mounted into the second.
	if len(fake.uploaded) != 3 || len(fake.mounted) != 3 {
		t.Errorf("uploaded %v, mounted %v; want 3 uploads and 3 mounts", fake.uploaded, fake.mounted)
	}
	for _, u := range fake.uploaded {
		if !strings.HasPrefix(u, "docker.io/library/nginx@") {
			t.Errorf("upload %s: not into the first repository", u)
		}
	}

	// Pushing again sends nothing but HEADs and the manifests.
	before := len(fake.requests)
	if err := (&Registry{URL: srv.URL + "/"}).PushImage(ctx, s, web.Image, web.Names...); err != nil {
		t.Fatal(err)
	}
	for _, r := range fake.requests[before:] {
		if !strings.HasPrefix(r, "HEAD ") && !strings.HasPrefix(r, "PUT /v2/") || strings.Contains(r, "/uploads/") {
			t.Errorf("second push sent %s", r)
		}
	}
	if len(fake.uploaded) != 3 {
		t.Errorf("second push uploaded again: %v", fake.uploaded)
	}
}

func TestPushArchive(t *testing.T) {
	s, images := twoImages(t)
	p := filepath.Join(t.TempDir(), "images.tar")
	if err := WriteArchiveFile(p, s, images); err != nil {
		t.Fatal(err)
	}
	fake := newFakeRegistry(t)
	srv := httptest.NewServer(fake)
	defer srv.Close()
	pushed, err := (&Registry{URL: srv.URL}).PushArchive(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range fake.manifests {
		keys = append(keys, k)
	}
	want := map[string]bool{"docker.io/library/nginx:latest": true, "registry.k8s.io/e2e-test-images/nginx:1.27-0": true, "registry.k8s.io/pause:3.10.2": true}
	if len(pushed) != 2 || len(keys) != 3 {
		t.Fatalf("pushed %d images, registry has %v", len(pushed), keys)
	}
	for _, k := range keys {
		if !want[k] {
			t.Errorf("unexpected manifest %s", k)
		}
	}
}

func TestPushReportsRegistryErrors(t *testing.T) {
	s, images := twoImages(t)
	fake := newFakeRegistry(t)
	fake.failManifest = true
	srv := httptest.NewServer(fake)
	defer srv.Close()
	err := (&Registry{URL: srv.URL}).PushImage(context.Background(), s, images[1].Image, images[1].Names...)
	if err == nil || !strings.Contains(err.Error(), "MANIFEST_INVALID") || !strings.Contains(err.Error(), "registry.k8s.io/pause:3.10.2") {
		t.Errorf("push to a registry refusing manifests: %v", err)
	}
	if err := (&Registry{URL: srv.URL}).PushImage(context.Background(), s, images[1].Image); err == nil {
		t.Error("push without a name: no error")
	}
}

func TestParseReference(t *testing.T) {
	for in, want := range map[string]string{
		"nginx":                           "docker.io/library/nginx:latest",
		"nginx:latest":                    "docker.io/library/nginx:latest",
		"httpd:2.4":                       "docker.io/library/httpd:2.4",
		"nicolaka/netshoot":               "docker.io/nicolaka/netshoot:latest",
		"docker.io/library/busybox:1.36":  "docker.io/library/busybox:1.36",
		"index.docker.io/library/busybox": "docker.io/library/busybox:latest",
		"registry.k8s.io/pause:3.10.2":    "registry.k8s.io/pause:3.10.2",
		"registry.k8s.io/e2e-test-images/agnhost:2.63.0": "registry.k8s.io/e2e-test-images/agnhost:2.63.0",
		"localhost/podnet:dev":                           "localhost/podnet:dev",
		"192.168.56.1:5000/x/y:1":                        "192.168.56.1:5000/x/y:1",
		"registry.k8s.io/coredns/coredns:v1.15.0":        "registry.k8s.io/coredns/coredns:v1.15.0",
	} {
		r, err := ParseReference(in)
		if err != nil || r.String() != want {
			t.Errorf("ParseReference(%q) = %q, %v; want %q", in, r.String(), err, want)
		}
	}
	for _, bad := range []string{"", "Nginx", "nginx:", "nginx:bad tag", "a//b", "nginx@sha256:xyz", "-x/y"} {
		if r, err := ParseReference(bad); err == nil {
			t.Errorf("ParseReference(%q) = %+v, want an error", bad, r)
		}
	}
}

func TestMirrorRepositoryAndHostsTOML(t *testing.T) {
	for in, want := range map[string][2]string{
		"nginx:latest":                                     {"docker.io/library/nginx", "latest"},
		"registry.k8s.io/pause:3.10.2":                     {"registry.k8s.io/pause", "3.10.2"},
		"registry.k8s.io/e2e-test-images/busybox:1.37.0-1": {"registry.k8s.io/e2e-test-images/busybox", "1.37.0-1"},
	} {
		repo, tag, err := MirrorRepository(in)
		if err != nil || !reflect.DeepEqual([2]string{repo, tag}, want) {
			t.Errorf("MirrorRepository(%q) = %q %q %v, want %v", in, repo, tag, err, want)
		}
	}
	if _, _, err := MirrorRepository("nginx@sha256:" + strings.Repeat("a", 64)); err == nil {
		t.Error("MirrorRepository of a digest reference: no error")
	}
	got := HostsTOML("docker.io", "http://192.168.56.1:5000/")
	for _, want := range []string{`server = "http://192.168.56.1:5000/v2/docker.io"`, "override_path = true", `capabilities = ["pull", "resolve"]`} {
		if !strings.Contains(got, want) {
			t.Errorf("hosts.toml lacks %s:\n%s", want, got)
		}
	}
	if strings.Contains(got, "[host.") || strings.Contains(got, "https://") {
		t.Errorf("hosts.toml falls back to another host:\n%s", got)
	}
}

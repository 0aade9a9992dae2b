package oci

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"reflect"
	"testing"
)

var sampleConfig = Config{
	User:         "101:101",
	ExposedPorts: []string{"80", "53/udp"},
	Env:          []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	Entrypoint:   []string{"/docker-entrypoint.sh"},
	Cmd:          []string{"nginx", "-g", "daemon off;"},
	WorkingDir:   "/srv",
	Labels:       map[string]string{"org.opencontainers.image.source": "podnet"},
	StopSignal:   "SIGQUIT",
}

// buildSample builds a two-layer image into a fresh store.
func buildSample(t *testing.T, entries []Entry) (*Store, Image) {
	t.Helper()
	s, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	base, err := s.AddLayer(entries)
	if err != nil {
		t.Fatal(err)
	}
	top, err := s.AddLayer([]Entry{Content("srv/index.html", []byte("<h1>hi</h1>\n"), 0o644)})
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.AddImage(Platform{}, sampleConfig, []Layer{base, top})
	if err != nil {
		t.Fatal(err)
	}
	return s, img
}

func TestBuildTwiceGivesTheSameDigests(t *testing.T) {
	entries := sampleEntries(t)
	_, a := buildSample(t, entries)
	_, b := buildSample(t, entries)
	if a.Manifest.Digest != b.Manifest.Digest {
		t.Fatalf("two builds: manifests %s and %s", a.Manifest.Digest, b.Manifest.Digest)
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("two builds differ:\n%+v\n%+v", a, b)
	}
	if a.Manifest.Platform == nil || *a.Manifest.Platform != (Platform{OS: "linux", Architecture: "amd64"}) {
		t.Errorf("platform %+v, want linux/amd64", a.Manifest.Platform)
	}
}

func TestImageConfigAndLayerDigests(t *testing.T) {
	s, img := buildSample(t, sampleEntries(t))
	cfgBlob, err := readBlob(s, img.Config)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Architecture, OS, Created string
		Config                    struct {
			User         string
			ExposedPorts map[string]struct{}
			Env          []string
			Entrypoint   []string
			Cmd          []string
			WorkingDir   string
			Labels       map[string]string
			StopSignal   string
		}
		RootFS struct {
			Type    string
			DiffIDs []Digest `json:"diff_ids"`
		}
	}
	if err := json.Unmarshal(cfgBlob, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Architecture != "amd64" || cfg.OS != "linux" || cfg.Created != "1970-01-01T00:00:00Z" {
		t.Errorf("config platform/created: %s/%s %s", cfg.OS, cfg.Architecture, cfg.Created)
	}
	c := cfg.Config
	if c.User != "101:101" || c.WorkingDir != "/srv" || c.StopSignal != "SIGQUIT" ||
		!reflect.DeepEqual(c.Cmd, sampleConfig.Cmd) || !reflect.DeepEqual(c.Entrypoint, sampleConfig.Entrypoint) ||
		!reflect.DeepEqual(c.Env, sampleConfig.Env) || !reflect.DeepEqual(c.Labels, sampleConfig.Labels) {
		t.Errorf("container config: %+v", c)
	}
	if _, tcp := c.ExposedPorts["80/tcp"]; !tcp || len(c.ExposedPorts) != 2 {
		t.Errorf("exposed ports %v, want 80/tcp and 53/udp", c.ExposedPorts)
	}

	m, err := ReadManifest(s, img.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Layers) != 2 || len(cfg.RootFS.DiffIDs) != 2 || m.Config.Digest != img.Config.Digest {
		t.Fatalf("manifest %+v, diff IDs %v", m, cfg.RootFS.DiffIDs)
	}
	for i, l := range m.Layers {
		r, err := s.Open(l.Digest)
		if err != nil {
			t.Fatal(err)
		}
		compressed, _ := io.ReadAll(r)
		r.Close()
		if DigestOf(compressed) != l.Digest || int64(len(compressed)) != l.Size || l.MediaType != MediaTypeLayerGzip {
			t.Errorf("layer %d: stored blob does not match its descriptor %+v", i, l)
		}
		zr, err := gzip.NewReader(bytes.NewReader(compressed))
		if err != nil {
			t.Fatal(err)
		}
		if zr.Name != "" || !zr.ModTime.IsZero() {
			t.Errorf("layer %d: gzip header name %q mtime %v, want none", i, zr.Name, zr.ModTime)
		}
		tarBytes, _ := io.ReadAll(zr)
		if DigestOf(tarBytes) != cfg.RootFS.DiffIDs[i] || img.Layers[i].DiffID != cfg.RootFS.DiffIDs[i] {
			t.Errorf("layer %d: diff ID %s, the tar's digest is %s", i, cfg.RootFS.DiffIDs[i], DigestOf(tarBytes))
		}
	}
}

package imageset

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/podnet/podnet/pkg/lab/oci"
)

// fakeRepo is a Debian archive in memory: packages are lists of oci
// entries, served as the tar stream dpkg-deb --fsys-tarfile would give.
type fakeRepo struct {
	t     *testing.T
	mu    sync.Mutex
	pkgs  map[string]fakePkg
	state string
	// what was asked
	fetched, opened []string
	depends         int
}

type fakePkg struct {
	version string
	deps    []string
	files   []oci.Entry
}

func (f *fakeRepo) Depends(_ context.Context, names []string) (map[string][]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.depends++
	graph := map[string][]string{}
	queue := append([]string{}, names...)
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		if _, done := graph[n]; done {
			continue
		}
		p, ok := f.pkgs[n]
		if !ok {
			return nil, fmt.Errorf("no package %s", n)
		}
		graph[n] = append([]string{}, p.deps...)
		queue = append(queue, p.deps...)
	}
	return graph, nil
}

func (f *fakeRepo) Show(_ context.Context, names []string) (map[string]Package, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]Package{}
	for _, n := range names {
		if p, ok := f.pkgs[n]; ok {
			out[n] = Package{Name: n, Version: p.version, Architecture: "amd64", SHA256: fmt.Sprintf("%064x", len(n)+len(p.version))}
		}
	}
	return out, nil
}

func (f *fakeRepo) Fetch(_ context.Context, pkgs []Package) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range pkgs {
		f.fetched = append(f.fetched, p.Name)
	}
	return nil
}

func (f *fakeRepo) Contents(_ context.Context, p Package) (io.ReadCloser, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fp, ok := f.pkgs[p.Name]
	if !ok || fp.version != p.Version {
		return nil, fmt.Errorf("no package %s", p)
	}
	f.opened = append(f.opened, p.Name)
	var buf bytes.Buffer
	if err := oci.WriteTar(&buf, fp.files); err != nil {
		return nil, err
	}
	// dpkg-deb names entries "./usr/...", directories included.
	return io.NopCloser(&buf), nil
}

func (f *fakeRepo) State() (string, error) { return f.state, nil }

func (f *fakeRepo) asked() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	o := append([]string{}, f.opened...)
	sort.Strings(o)
	return strings.Join(o, " ")
}

// Package imageset owns the lab's container images: their recipes (pause,
// agnhost, busybox, nginx, httpd, netshoot, CoreDNS and podnet's own, under
// the names the Kubernetes e2e framework and the seeds' commands use), how
// they are made from Debian packages and locally built binaries without
// Docker, and the cache that makes a machine build each of them once.
//
// Files come from Debian packages without installing anything on the host:
// apt-get download, then the package's file system (dpkg-deb --fsys-tarfile)
// written into a staging directory, without documentation. The shared
// libraries are found from the ELF objects themselves: every DT_NEEDED and
// program interpreter is looked up where the dynamic linker would look in
// the image, and a missing one is taken from the package, among those the
// recipe's packages depend on, that ships it. Images are then written by
// package oci, byte for byte reproducibly.
//
// The cache (Options.CacheDir, /var/cache/podnet/images by default) holds
// one directory per recipe and inputs, <recipe>-<key>/, with the image as an
// OCI archive (image.tar, for `ctr -n k8s.io images import`) and what it
// was made of (image.json); debs/ keeps the downloaded packages. The key
// covers the recipe, the exact Debian packages (name, version, digest) of
// its dependency closure, the digests of the binaries and the Go version;
// a quicker key over apt's package lists lets a warm build skip apt.
package imageset

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/podnet/podnet/pkg/lab/oci"
)

// DefaultCacheDir is where images are cached, once per machine.
const DefaultCacheDir = "/var/cache/podnet/images"

// builderVersion changes whenever the way images are assembled (here or in
// package oci) changes, so that images made the old way are not reused.
// 2: hardlinks carry their file's mode (containerd applies it).
const builderVersion = "2"

// Options says which images to build from what.
type Options struct {
	// CacheDir is the cache; empty means DefaultCacheDir.
	CacheDir string
	// Only builds just these recipes (pause, agnhost, busybox, nginx, httpd,
	// netshoot, coredns, podnet); empty means all.
	Only []string

	// PauseSource is pause.c (build/pause/linux/pause.c of k8s.io/kubernetes).
	PauseSource string
	// Agnhost is the agnhost binary; AgnhostCerts the directory with the
	// porter's localhost.crt and localhost.key (test/images/agnhost/porter).
	Agnhost, AgnhostCerts string
	// CoreDNS is the coredns binary (hack/coredns.sh).
	CoreDNS string
	// PodnetBin is the directory with podnet, podnetd and podnetctl (make
	// build), PodnetVersion the tag of docker.io/podnet/podnet.
	PodnetBin, PodnetVersion string
	// KubeProxy is the kube-proxy binary (hack/k8s.sh).
	KubeProxy string

	// Repo is where Debian packages come from; nil means apt on this
	// machine, with the .deb files kept in CacheDir/debs.
	Repo Repo
	// Keep is how many cached versions of each image stay; 0 means 3.
	Keep int
	Log  *slog.Logger
}

// Image is a built image.
type Image struct {
	Recipe string
	// Names are the full names the image carries, in the archive's index and
	// when pushed.
	Names []string
	// Dir is the image's cache directory; Archive the OCI image-layout tar
	// in it.
	Dir, Archive string
	Manifest     oci.Descriptor
	// Size is what a registry stores: manifest, config and compressed layers.
	Size int64
	// Packages are the Debian packages (name=version) it has files of.
	Packages []string
	// Cached tells the image was reused rather than built.
	Cached bool
}

// Recipe names one image recipe and the names its image carries.
type Recipe struct {
	Name  string
	Names []string
}

// Recipes lists every recipe, with podnet's image tagged podnetVersion.
func Recipes(podnetVersion string) []Recipe {
	var out []Recipe
	for _, r := range recipes(podnetVersion) {
		out = append(out, Recipe{Name: r.Name, Names: r.Names})
	}
	return out
}

// record is image.json: the image and what it was made of.
type record struct {
	Recipe       string
	Names        []string
	Manifest     oci.Descriptor
	Layers       []oci.Descriptor
	Size         int64
	Packages     []string `json:",omitempty"`
	Inputs       map[string]string
	Key          string
	QuickKeys    []string // quick keys under which it was found current
	BuildSeconds float64
}

// Build returns the images of the selected recipes, building into the
// cache those whose inputs changed since they were built (or that never
// were), under an exclusive lock of the cache.
func Build(ctx context.Context, o Options) ([]Image, error) {
	o = o.withDefaults()
	selected, err := selectRecipes(o)
	if err != nil {
		return nil, err
	}
	return buildSet(ctx, o, selected)
}

// buildSet is Build of the given recipes.
func buildSet(ctx context.Context, o Options, selected []recipe) ([]Image, error) {
	if err := os.MkdirAll(o.CacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("build images: %w", err)
	}
	unlock, err := lockDir(o.CacheDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	removeStale(o.CacheDir, o.Log)
	tmp, err := os.MkdirTemp(o.CacheDir, ".build-")
	if err != nil {
		return nil, fmt.Errorf("build images: %w", err)
	}
	defer os.RemoveAll(tmp)

	inputs, err := o.inputs(selected)
	if err != nil {
		return nil, fmt.Errorf("build images: %w", err)
	}
	var state string
	for _, r := range selected {
		if len(explicitPackages(r)) > 0 {
			if state, err = o.Repo.State(); err != nil {
				return nil, fmt.Errorf("build images: %w", err)
			}
			break
		}
	}
	b := &builder{repo: o.Repo, log: o.Log, inputs: inputs, tmp: tmp,
		files: map[string]map[string]bool{}, hints: map[string]map[string]bool{}}

	out := make([]Image, len(selected))
	var misses []int
	quick := make([]string, len(selected))
	for i, r := range selected {
		quick[i] = cacheKey(r, inputs, []string{"apt-state " + state})
		if img, ok := findCached(o.CacheDir, r.Name, quick[i]); ok {
			out[i] = img
			o.Log.Info("image cached", "image", r.Name, "dir", img.Dir)
			continue
		}
		misses = append(misses, i)
	}
	if err := b.resolve(ctx, selected, misses); err != nil {
		return nil, err
	}
	for _, i := range misses {
		img, err := o.buildOne(ctx, b, selected[i], inputs, quick[i])
		if err != nil {
			return nil, fmt.Errorf("build image %s: %w", selected[i].Name, err)
		}
		out[i] = img
		prune(o.CacheDir, selected[i].Name, o.Keep, o.Log)
	}
	return out, nil
}

// resolve learns the dependency graph and the candidates of every package
// the missed recipes may use, with one apt query of each kind.
func (b *builder) resolve(ctx context.Context, selected []recipe, misses []int) error {
	var names []string
	for _, i := range misses {
		names = append(names, explicitPackages(selected[i])...)
	}
	b.graph, b.pkgs = map[string][]string{}, map[string]Package{}
	if len(names) == 0 {
		return nil
	}
	graph, err := b.repo.Depends(ctx, names)
	if err != nil {
		return fmt.Errorf("build images: %w", err)
	}
	all := make([]string, 0, len(graph))
	for n := range graph {
		all = append(all, n)
	}
	sort.Strings(all)
	pkgs, err := b.repo.Show(ctx, all)
	if err != nil {
		return fmt.Errorf("build images: %w", err)
	}
	for _, n := range names {
		if _, ok := pkgs[n]; !ok {
			return fmt.Errorf("build images: package %s is not in the apt repositories (apt-get update?)", n)
		}
	}
	b.graph, b.pkgs = graph, pkgs
	return nil
}

func (o Options) buildOne(ctx context.Context, b *builder, r recipe, inputs map[string]*inputFile, quick string) (Image, error) {
	var closure []string
	for _, n := range b.closure(r) {
		p := b.pkgs[n]
		closure = append(closure, p.String()+" "+p.SHA256)
	}
	key := cacheKey(r, inputs, closure)
	dir := filepath.Join(o.CacheDir, r.Name+"-"+key[:16])
	if rec, err := readRecord(dir); err == nil && rec.Key == key {
		// Same packages and inputs as when it was built: apt's lists changed
		// for other packages.
		rec.QuickKeys = appendKey(rec.QuickKeys, quick)
		if err := writeRecord(dir, rec); err != nil {
			return Image{}, err
		}
		o.Log.Info("image cached", "image", r.Name, "dir", dir)
		return rec.image(dir, true), nil
	}

	start := time.Now()
	o.Log.Info("building image", "image", r.Name, "dir", dir)
	work, err := os.MkdirTemp(b.tmp, r.Name+"-")
	if err != nil {
		return Image{}, err
	}
	defer os.RemoveAll(work)
	store, err := oci.NewStore(filepath.Join(work, "store"))
	if err != nil {
		return Image{}, err
	}
	img, pkgs, err := b.build(ctx, r, store)
	if err != nil {
		return Image{}, err
	}
	out := filepath.Join(work, "image")
	if err := os.Mkdir(out, 0o755); err != nil {
		return Image{}, err
	}
	if err := oci.WriteArchiveFile(filepath.Join(out, "image.tar"), store, []oci.Named{{Image: img, Names: r.Names}}); err != nil {
		return Image{}, err
	}
	rec := record{
		Recipe: r.Name, Names: r.Names, Manifest: img.Manifest, Size: img.Size(), Packages: pkgs,
		Inputs: usedInputs(r, inputs), Key: key, QuickKeys: []string{quick},
		BuildSeconds: math.Round(time.Since(start).Seconds()*100) / 100,
	}
	for _, l := range img.Layers {
		rec.Layers = append(rec.Layers, l.Descriptor)
	}
	if err := writeRecord(out, rec); err != nil {
		return Image{}, err
	}
	if err := os.RemoveAll(dir); err != nil {
		return Image{}, err
	}
	if err := os.Rename(out, dir); err != nil {
		return Image{}, fmt.Errorf("store image: %w", err)
	}
	o.Log.Info("built image", "image", r.Name, "size", rec.Size, "seconds", rec.BuildSeconds)
	return rec.image(dir, false), nil
}

func (rec record) image(dir string, cached bool) Image {
	return Image{Recipe: rec.Recipe, Names: rec.Names, Dir: dir, Archive: filepath.Join(dir, "image.tar"),
		Manifest: rec.Manifest, Size: rec.Size, Packages: rec.Packages, Cached: cached}
}

func (o Options) withDefaults() Options {
	if o.CacheDir == "" {
		o.CacheDir = DefaultCacheDir
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Repo == nil {
		o.Repo = &AptRepo{Dir: filepath.Join(o.CacheDir, "debs"), Log: o.Log}
	}
	if o.Keep <= 0 {
		o.Keep = 3
	}
	return o
}

func selectRecipes(o Options) ([]recipe, error) {
	all := recipes(o.PodnetVersion)
	if len(o.Only) == 0 {
		if o.PodnetVersion == "" {
			return nil, errors.New("build images: no PodnetVersion for docker.io/podnet/podnet")
		}
		return all, nil
	}
	byName := map[string]recipe{}
	var names []string
	for _, r := range all {
		byName[r.Name] = r
		names = append(names, r.Name)
	}
	var out []recipe
	for _, n := range o.Only {
		r, ok := byName[n]
		if !ok {
			return nil, fmt.Errorf("build images: no recipe %q (there are %s)", n, strings.Join(names, ", "))
		}
		if n == "podnet" && o.PodnetVersion == "" {
			return nil, errors.New("build images: no PodnetVersion for docker.io/podnet/podnet")
		}
		out = append(out, r)
	}
	return out, nil
}

// Push pushes the images to the registry at url ("http://192.168.56.1:5000")
// under every name, each in the repository oci.MirrorRepository names.
func Push(ctx context.Context, images []Image, url string) error {
	reg := &oci.Registry{URL: url}
	for _, img := range images {
		if _, err := reg.PushArchive(ctx, img.Archive); err != nil {
			return fmt.Errorf("push image %s: %w", img.Recipe, err)
		}
	}
	return nil
}

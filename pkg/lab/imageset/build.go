package imageset

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/podnet/podnet/pkg/lab/oci"
)

// builder assembles images from recipes. One builder serves one Build, so
// what it learns about packages (their files) is learned once.
type builder struct {
	repo   Repo
	log    *slog.Logger
	inputs map[string]*inputFile
	tmp    string // scratch directory, removed by Build

	graph map[string][]string
	pkgs  map[string]Package
	files map[string]map[string]bool // package -> the non-directory paths it ships
	hints map[string]map[string]bool // file name -> the host's packages having it
}

// closure is the recipe's packages and everything they depend on, in
// breadth-first order: the packages a library may be taken from.
func (b *builder) closure(r recipe) []string {
	var out, queue []string
	seen := map[string]bool{}
	add := func(n string) {
		if !seen[n] {
			seen[n] = true
			queue = append(queue, n)
		}
	}
	for _, n := range explicitPackages(r) {
		add(n)
	}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		if _, real := b.pkgs[n]; real {
			out = append(out, n)
		}
		for _, d := range b.graph[n] {
			add(d)
		}
	}
	return out
}

// explicitPackages are the packages a recipe names (busybox-static for a
// busybox layer), in order.
func explicitPackages(r recipe) []string {
	var out []string
	seen := map[string]bool{}
	for _, l := range r.Layers {
		names := []string{}
		if l.Busybox != "" {
			names = append(names, l.Busybox)
		}
		for _, p := range l.Packages {
			names = append(names, p.Name)
		}
		for _, n := range names {
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out
}

// build makes the recipe's image in store and returns it with the Debian
// packages it took files from.
func (b *builder) build(ctx context.Context, r recipe, store *oci.Store) (oci.Image, []string, error) {
	closure := b.closure(r)
	used := map[string]bool{}
	var (
		layers []oci.Layer
		lower  view
	)
	for i, l := range r.Layers {
		s, err := newStage(filepath.Join(b.tmp, fmt.Sprintf("%s-layer%d", r.Name, i+1)))
		if err != nil {
			return oci.Image{}, nil, err
		}
		defer s.close()
		v := append(view{s}, lower...)
		if err := b.assemble(ctx, l, v, closure, used); err != nil {
			return oci.Image{}, nil, fmt.Errorf("layer %d: %w", i+1, err)
		}
		entries, err := oci.Tree("/", s.dir)
		if err != nil {
			return oci.Image{}, nil, fmt.Errorf("layer %d: %w", i+1, err)
		}
		ol, err := store.AddLayer(entries)
		if err != nil {
			return oci.Image{}, nil, fmt.Errorf("layer %d: %w", i+1, err)
		}
		layers = append(layers, ol)
		lower = v
	}
	img, err := store.AddImage(oci.Platform{}, r.Config, layers)
	if err != nil {
		return oci.Image{}, nil, err
	}
	var pkgs []string
	for n := range used {
		pkgs = append(pkgs, b.pkgs[n].String())
	}
	sort.Strings(pkgs)
	return img, pkgs, nil
}

// assemble fills the top stage of v with layer l.
func (b *builder) assemble(ctx context.Context, l layer, v view, closure []string, used map[string]bool) error {
	s := v[0]
	if l.Busybox != "" {
		if err := b.busybox(ctx, s, l.Busybox, used); err != nil {
			return err
		}
	}
	var fetch []Package
	for _, p := range l.Packages {
		fetch = append(fetch, b.pkgs[p.Name])
	}
	if err := b.repo.Fetch(ctx, fetch); err != nil {
		return err
	}
	for _, p := range l.Packages {
		if err := b.extract(ctx, s, p.Name, filter{only: p.Only}); err != nil {
			return err
		}
		used[p.Name] = true
	}
	for _, f := range l.Files {
		if err := b.writeFile(ctx, s, f); err != nil {
			return err
		}
	}
	if err := b.libraries(ctx, v, closure, used); err != nil {
		return err
	}
	return shadow(v)
}

func (b *builder) extract(ctx context.Context, s *stage, name string, f filter) error {
	p, ok := b.pkgs[name]
	if !ok {
		return fmt.Errorf("package %s: not in the apt repositories", name)
	}
	r, err := b.repo.Contents(ctx, p)
	if err != nil {
		return err
	}
	kept, err := s.extract(r, f)
	if cerr := r.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("extract %s: %w", p, err)
	}
	if len(f.only) > 0 && len(kept) == 0 {
		return fmt.Errorf("extract %s: none of %s is in it", p, strings.Join(f.only, " "))
	}
	b.log.Debug("extracted package", "package", p.String(), "files", len(kept))
	return nil
}

func (b *builder) writeFile(ctx context.Context, s *stage, f file) error {
	switch {
	case f.Dir:
		return s.mkdir(f.Path, f.Mode)
	case f.Link != "":
		return s.symlink(f.Path, f.Link)
	case f.Input != "":
		in, ok := b.inputs[f.Input]
		if !ok {
			return fmt.Errorf("file %s: input %s not given", f.Path, f.Input)
		}
		src, err := in.file(ctx, b.tmp)
		if err != nil {
			return fmt.Errorf("file %s: %w", f.Path, err)
		}
		return s.copyFile(f.Path, src, f.Mode)
	default:
		return s.writeFile(f.Path, strings.NewReader(f.Content), f.Mode)
	}
}

// busybox extracts the busybox package pkg and links every applet it lists
// (busybox --list-full, run on the host) to it.
func (b *builder) busybox(ctx context.Context, s *stage, pkg string, used map[string]bool) error {
	if err := b.repo.Fetch(ctx, []Package{b.pkgs[pkg]}); err != nil {
		return err
	}
	if err := b.extract(ctx, s, pkg, filter{only: []string{"bin/busybox"}}); err != nil {
		return err
	}
	used[pkg] = true
	bin := s.hostPath("bin/busybox")
	cmd := exec.CommandContext(ctx, bin, "--list-full")
	cmd.Args[0] = "busybox" // busybox runs the applet argv[0] names
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("busybox --list-full: %w", err)
	}
	applets := strings.Fields(string(out))
	if len(applets) < 2 {
		return fmt.Errorf("busybox --list-full listed %d applets", len(applets))
	}
	for _, a := range applets {
		if rel(a) == "bin/busybox" {
			continue
		}
		if err := s.link(a, "bin/busybox"); err != nil {
			return err
		}
	}
	return nil
}

// libraries adds to the top stage, from the closure's packages, the shared
// libraries and program interpreters the view's ELF objects need, until
// nothing is missing.
func (b *builder) libraries(ctx context.Context, v view, closure []string, used map[string]bool) error {
	cache := elfCache{}
	for round := 0; ; round++ {
		missing, err := v.missing(cache)
		if err != nil {
			return err
		}
		if len(missing) == 0 {
			return nil
		}
		if round > 50 {
			return fmt.Errorf("shared libraries: still missing %s after %d rounds", missing[0].name, round)
		}
		// Download the likeliest provider of every missing file at once.
		var guesses []Package
		for _, n := range missing {
			if c := b.rank(n, closure); len(c) > 0 && b.files[c[0]] == nil {
				guesses = append(guesses, b.pkgs[c[0]])
			}
		}
		if err := b.repo.Fetch(ctx, guesses); err != nil {
			return err
		}
		for _, n := range missing {
			if v.has(n) { // an earlier provider of this round brought it
				continue
			}
			p, err := b.provider(ctx, n, closure)
			if errors.Is(err, errNoProvider) && n.plugin {
				// A module of a package (iproute2's tc/q_atm.so needs libatm1,
				// which iproute2 only recommends): the image goes without it.
				if _, _, inTop := (view{v[0]}).lstat(n.by); inTop {
					b.log.Info("leaving out a module whose library no dependency has", "module", n.by, "needs", n.name)
					if err := v[0].root.Remove(rel(n.by)); err != nil {
						return err
					}
					continue
				}
			}
			if err != nil {
				return err
			}
			if used[p] {
				return fmt.Errorf("%s needs %s: package %s has it but the image still lacks it where the loader looks (%s)",
					n.by, n.name, p, strings.Join(n.dirs, ":"))
			}
			b.log.Debug("adding library package", "package", p, "for", n.name, "needed-by", n.by)
			if err := b.extract(ctx, v[0], p, filter{}); err != nil {
				return err
			}
			used[p] = true
		}
	}
}

// provider is the first package of the closure, in rank order, that has a
// file satisfying n.
func (b *builder) provider(ctx context.Context, n need, closure []string) (string, error) {
	ranked := b.rank(n, closure)
	for i, name := range ranked {
		if _, listed := b.files[name]; !listed && i > 0 {
			// The likeliest did not have it: download the rest at once.
			var rest []Package
			for _, r := range ranked[i:] {
				rest = append(rest, b.pkgs[r])
			}
			if err := b.repo.Fetch(ctx, rest); err != nil {
				return "", err
			}
		}
		files, err := b.packageFiles(ctx, name)
		if err != nil {
			return "", err
		}
		for _, c := range n.candidates() {
			if files[c] {
				return name, nil
			}
		}
	}
	return "", fmt.Errorf("%s needs %s: %w (searched the %d library packages of %d it depends on)", n.by, n.name, errNoProvider, len(ranked), len(closure))
}

// rank orders the packages of the closure that may provide n by how
// likely they do, so that usually the first package looked into has it:
// the package the host's dpkg says has a file of that name, then Debian's
// library naming (libfoo.so.1 is in libfoo1 or libfoo-1), then packages
// named like the library, then other library packages (a name with "lib").
// Packages of programs (dpkg, tar, debconf) ship no libraries others link
// against and are not searched. The order only saves downloads; which
// package provides the file is checked on the package itself.
func (b *builder) rank(n need, closure []string) []string {
	base := path.Base(n.name)
	stem, ver, _ := strings.Cut(base, ".so")
	ver = strings.TrimPrefix(ver, ".")
	ver, _, _ = strings.Cut(ver, ".")
	hint, ok := b.hints[base]
	if !ok {
		hint = hostOwners(base)
		b.hints[base] = hint
	}
	score := func(p string) int {
		switch {
		case hint[p]:
			return 0
		case strings.HasPrefix(n.name, "/") && p == "libc6":
			return 1
		case p == stem+ver || p == stem+"-"+ver || p == stem+ver+"t64" || p == stem+"-"+ver+"t64":
			return 1
		case strings.HasPrefix(p, stem):
			return 2
		case strings.Contains(p, "lib"):
			return 3
		}
		return 4
	}
	var out []string
	for _, p := range closure {
		if score(p) < 4 {
			out = append(out, p)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return score(out[i]) < score(out[j]) })
	return out
}

// hostOwners asks the host's dpkg which installed packages have a file
// named base: a hint for rank, nothing more.
func hostOwners(base string) map[string]bool {
	out, _ := exec.Command("dpkg-query", "-S", "*/"+base).Output()
	owners := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		pkgs, _, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		for _, p := range strings.Split(pkgs, ", ") {
			owners[stripArch(strings.TrimSpace(p))] = true
		}
	}
	return owners
}

// packageFiles lists (once) the non-directory paths package name ships.
func (b *builder) packageFiles(ctx context.Context, name string) (map[string]bool, error) {
	if f, ok := b.files[name]; ok {
		return f, nil
	}
	r, err := b.repo.Contents(ctx, b.pkgs[name])
	if err != nil {
		return nil, err
	}
	files := map[string]bool{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("list %s: %w", name, err)
		}
		if hdr.Typeflag != tar.TypeDir {
			files[rel(hdr.Name)] = true
		}
	}
	if err := r.Close(); err != nil {
		return nil, err
	}
	b.files[name] = files
	return files, nil
}

// pathDirs are the directories of the images' PATH, in its order.
var pathDirs = []string{"usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin"}

// shadow makes a command the top stage provides win over a lower layer's
// command of the same name wherever the lower one sits in PATH: busybox's
// /sbin/ip comes before iproute2's /bin/ip, so /sbin/ip becomes a symlink
// to /bin/ip in the top layer.
func shadow(v view) error {
	top := v[0]
	provided := map[string]string{} // command name -> its path in the top stage
	for _, d := range pathDirs {
		entries, err := os.ReadDir(top.hostPath(d))
		if err != nil {
			continue
		}
		for _, e := range entries {
			if _, ok := provided[e.Name()]; !ok && !e.IsDir() {
				provided[e.Name()] = "/" + d + "/" + e.Name()
			}
		}
	}
	if len(v) == 1 || len(provided) == 0 {
		return nil
	}
	for _, d := range pathDirs {
		for _, lower := range v[1:] {
			entries, err := os.ReadDir(lower.hostPath(d))
			if err != nil {
				continue
			}
			for _, e := range entries {
				target, ok := provided[e.Name()]
				p := d + "/" + e.Name()
				if !ok || "/"+p == target {
					continue
				}
				if _, _, inTop := (view{top}).lstat(p); inTop {
					continue
				}
				if err := top.symlink(p, target); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

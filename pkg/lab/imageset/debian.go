package imageset

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// Package is one Debian package, the candidate apt would install.
type Package struct {
	Name, Version, Architecture string
	// SHA256 of the .deb, from the archive's index.
	SHA256 string
}

func (p Package) String() string { return p.Name + "=" + p.Version }

// Repo is where Debian packages come from: apt on this machine (AptRepo),
// or a fake in tests. Nothing is ever installed on the host.
type Repo interface {
	// Depends returns the dependency graph reachable from names: each
	// package (or virtual package) to what it depends on (Depends and
	// Pre-Depends, every alternative, the providers of a virtual package),
	// in the repository's order.
	Depends(ctx context.Context, names []string) (map[string][]string, error)
	// Show returns the candidate of every name that is a real package;
	// names of virtual or unknown packages are left out.
	Show(ctx context.Context, names []string) (map[string]Package, error)
	// Fetch makes the packages' files available (downloads them).
	Fetch(ctx context.Context, pkgs []Package) error
	// Contents is the package's file system as a tar stream.
	Contents(ctx context.Context, p Package) (io.ReadCloser, error)
	// State changes whenever the candidates may have changed (an apt-get
	// update), so a cache can be trusted without asking Show again.
	State() (string, error)
}

// AptRepo takes packages from the apt repositories this machine is
// configured with: apt-cache for the metadata, apt-get download for the
// .deb files (kept in Dir by name and digest), dpkg-deb for their content.
type AptRepo struct {
	Dir string
	Log *slog.Logger

	mu sync.Mutex // one download at a time into Dir
}

// Depends runs apt-cache depends --recurse over Depends and Pre-Depends.
func (a *AptRepo) Depends(ctx context.Context, names []string) (map[string][]string, error) {
	args := append([]string{"depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
		"--no-breaks", "--no-replaces", "--no-enhances"}, names...)
	out, err := run(ctx, "apt-cache", args...)
	if err != nil {
		return nil, fmt.Errorf("resolve dependencies of %s: %w", strings.Join(names, " "), err)
	}
	return parseDepends(out), nil
}

// parseDepends reads apt-cache depends output: a package at the start of a
// line, then its "Depends:"/"PreDepends:" lines (an alternative marked "|"),
// a virtual package in <> followed by its providers, indented further.
func parseDepends(out []byte) map[string][]string {
	graph := map[string][]string{}
	var cur string
	var inVirtual bool
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "":
		case !strings.HasPrefix(line, " "):
			cur = stripArch(strings.Trim(trimmed, "<>"))
			if _, ok := graph[cur]; !ok {
				graph[cur] = nil
			}
			inVirtual = false
		case strings.HasPrefix(line, "    ") && inVirtual:
			graph[cur] = append(graph[cur], stripArch(trimmed))
		default:
			kind, dep, ok := strings.Cut(strings.TrimLeft(trimmed, "|"), ": ")
			if !ok || (kind != "Depends" && kind != "PreDepends") {
				inVirtual = false
				continue
			}
			inVirtual = strings.HasPrefix(dep, "<")
			graph[cur] = append(graph[cur], stripArch(strings.Trim(dep, "<>")))
		}
	}
	return graph
}

func stripArch(name string) string {
	n, _, _ := strings.Cut(name, ":")
	return n
}

// Show runs apt-cache show --no-all-versions.
func (a *AptRepo) Show(ctx context.Context, names []string) (map[string]Package, error) {
	out := map[string]Package{}
	if len(names) == 0 {
		return out, nil
	}
	stdout, err := run(ctx, "apt-cache", append([]string{"show", "--no-all-versions"}, names...)...)
	if err != nil && len(stdout) == 0 {
		return nil, fmt.Errorf("show packages %s: %w", strings.Join(names, " "), err)
	}
	for _, stanza := range strings.Split(string(stdout), "\n\n") {
		var p Package
		for _, line := range strings.Split(stanza, "\n") {
			k, v, ok := strings.Cut(line, ": ")
			if !ok {
				continue
			}
			switch k {
			case "Package":
				p.Name = v
			case "Version":
				p.Version = v
			case "Architecture":
				p.Architecture = v
			case "SHA256":
				p.SHA256 = v
			}
		}
		if p.Name != "" && p.Version != "" {
			if _, dup := out[p.Name]; !dup {
				out[p.Name] = p
			}
		}
	}
	return out, nil
}

func (a *AptRepo) debPath(p Package) string {
	return filepath.Join(a.Dir, p.Name+"_"+shortHash(p.SHA256)+".deb")
}

// Fetch downloads, with one apt-get download, the packages not in Dir yet,
// and checks each file against the digest apt's index gives.
func (a *AptRepo) Fetch(ctx context.Context, pkgs []Package) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var need []string
	want := map[string]Package{}
	for _, p := range pkgs {
		if p.SHA256 == "" {
			return fmt.Errorf("fetch %s: no SHA256 in the package index", p)
		}
		if _, err := os.Stat(a.debPath(p)); err == nil {
			continue
		}
		if _, ok := want[p.SHA256]; !ok {
			need = append(need, p.Name+"="+p.Version)
			want[p.SHA256] = p
		}
	}
	if len(need) == 0 {
		return nil
	}
	if err := os.MkdirAll(a.Dir, 0o755); err != nil {
		return fmt.Errorf("fetch packages: %w", err)
	}
	tmp, err := os.MkdirTemp(a.Dir, ".download-")
	if err != nil {
		return fmt.Errorf("fetch packages: %w", err)
	}
	defer os.RemoveAll(tmp)
	a.log().Info("downloading Debian packages", "packages", strings.Join(need, " "))
	cmd := exec.CommandContext(ctx, "apt-get", append([]string{"download", "-q"}, need...)...)
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get download %s: %w: %s", strings.Join(need, " "), err, lastLines(out, 5))
	}
	files, err := os.ReadDir(tmp)
	if err != nil {
		return fmt.Errorf("fetch packages: %w", err)
	}
	for _, f := range files {
		src := filepath.Join(tmp, f.Name())
		sum, err := fileSHA256(src)
		if err != nil {
			return fmt.Errorf("fetch packages: %w", err)
		}
		p, ok := want[sum]
		if !ok {
			return fmt.Errorf("fetch packages: downloaded %s has digest %s, which no requested package has", f.Name(), sum)
		}
		if err := os.Rename(src, a.debPath(p)); err != nil {
			return fmt.Errorf("fetch packages: %w", err)
		}
		delete(want, sum)
	}
	for _, p := range want {
		return fmt.Errorf("fetch %s: apt-get download gave no file with digest %s", p, p.SHA256)
	}
	return nil
}

// Contents runs dpkg-deb --fsys-tarfile on the package's .deb.
func (a *AptRepo) Contents(ctx context.Context, p Package) (io.ReadCloser, error) {
	if err := a.Fetch(ctx, []Package{p}); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", a.debPath(p))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	return &cmdReader{ReadCloser: out, cmd: cmd, stderr: &stderr, what: p.String()}, nil
}

// cmdReader is a command's stdout; Close waits for the command.
type cmdReader struct {
	io.ReadCloser
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	what   string
}

func (c *cmdReader) Close() error {
	_, _ = io.Copy(io.Discard, c.ReadCloser)
	if err := c.cmd.Wait(); err != nil {
		return fmt.Errorf("dpkg-deb %s: %w: %s", c.what, err, strings.TrimSpace(c.stderr.String()))
	}
	return nil
}

// State hashes the names, sizes and times of apt's package lists and the
// pinning configuration: an apt-get update that changes a list changes it.
func (a *AptRepo) State() (string, error) {
	h := sha256.New()
	lists, err := filepath.Glob("/var/lib/apt/lists/*Packages*")
	if err != nil {
		return "", err
	}
	prefs, _ := filepath.Glob("/etc/apt/preferences.d/*")
	files := append(append(lists, "/etc/apt/preferences"), prefs...)
	sort.Strings(files)
	for _, f := range files {
		st, err := os.Stat(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("apt state: %w", err)
		}
		fmt.Fprintf(h, "%s %d %d\n", f, st.Size(), st.ModTime().UnixNano())
	}
	if len(lists) == 0 {
		return "", errors.New("apt state: no package lists in /var/lib/apt/lists (run apt-get update)")
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (a *AptRepo) log() *slog.Logger {
	if a.Log != nil {
		return a.Log
	}
	return slog.New(slog.DiscardHandler)
}

// run runs a command and returns its stdout; the error carries the end of
// its stderr.
func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", name, err, lastLines(stderr.Bytes(), 5))
	}
	return out, nil
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func shortHash(s string) string {
	if len(s) > 16 {
		return s[:16]
	}
	return s
}

package imageset

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/podnet/podnet/pkg/lab/oci"
)

// inputFile is a file an image takes from outside the Debian archive: a
// binary built by this repository's scripts, or pause, compiled here.
type inputFile struct {
	path string
	hash string // what the cache key records
	// make produces the file (into dir) when path is empty.
	make func(ctx context.Context, dir string) (string, error)
}

func (in *inputFile) file(ctx context.Context, dir string) (string, error) {
	if in.path == "" && in.make != nil {
		p, err := in.make(ctx, dir)
		if err != nil {
			return "", err
		}
		in.path = p
	}
	return in.path, nil
}

// pauseFlags are upstream's (build/pause/Makefile), stripped.
var pauseFlags = []string{"-Os", "-Wall", "-Werror", "-static", "-s", "-DVERSION=v" + pauseVersion + "-podnet"}

// pauseInput compiles pause.c with the host's gcc and libc6-dev; the key
// is the source, the flags and the toolchain's versions.
func pauseInput(source string) (*inputFile, error) {
	src, err := os.ReadFile(source)
	if err != nil {
		return nil, fmt.Errorf("pause source: %w", err)
	}
	gcc, err := exec.Command("gcc", "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("pause: gcc: %w", err)
	}
	libc, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", "libc6-dev").Output()
	if err != nil {
		return nil, fmt.Errorf("pause: libc6-dev (static libc) is not installed: %w", err)
	}
	firstLine, _, _ := strings.Cut(string(gcc), "\n")
	key := fmt.Sprintf("%s\n%s\nlibc6-dev %s\n%s", oci.DigestOf(src), firstLine, libc, strings.Join(pauseFlags, " "))
	return &inputFile{
		hash: string(oci.DigestOf([]byte(key))),
		make: func(ctx context.Context, dir string) (string, error) {
			work, err := os.MkdirTemp(dir, "pause-")
			if err != nil {
				return "", err
			}
			// Compiled under a fixed name in its own directory: no path of this
			// machine ends up in the binary.
			if err := os.WriteFile(filepath.Join(work, "pause.c"), src, 0o644); err != nil {
				return "", err
			}
			cmd := exec.CommandContext(ctx, "gcc", append(pauseFlags, "-o", "pause", "pause.c")...)
			cmd.Dir = work
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Run(); err != nil {
				return "", fmt.Errorf("compile pause.c: %w: %s", err, strings.TrimSpace(out.String()))
			}
			return filepath.Join(work, "pause"), nil
		},
	}, nil
}

// fileInput is a file given by path, keyed by its content.
func fileInput(name, p string) (*inputFile, error) {
	if p == "" {
		return nil, fmt.Errorf("input %s: no path given", name)
	}
	sum, err := fileSHA256(p)
	if err != nil {
		return nil, fmt.Errorf("input %s: %w", name, err)
	}
	return &inputFile{path: p, hash: "sha256:" + sum}, nil
}

// inputs resolves and hashes the inputs the selected recipes use.
func (o Options) inputs(selected []recipe) (map[string]*inputFile, error) {
	paths := map[string]string{
		inAgnhost:     o.Agnhost,
		inAgnhostCert: joinIf(o.AgnhostCerts, "localhost.crt"),
		inAgnhostKey:  joinIf(o.AgnhostCerts, "localhost.key"),
		inCoreDNS:     o.CoreDNS,
		inPodnet:      joinIf(o.PodnetBin, "podnet"),
		inPodnetd:     joinIf(o.PodnetBin, "podnetd"),
		inPodnetctl:   joinIf(o.PodnetBin, "podnetctl"),
		inKubeProxy:   o.KubeProxy,
	}
	option := map[string]string{
		inPause: "PauseSource", inAgnhost: "Agnhost", inAgnhostCert: "AgnhostCerts", inAgnhostKey: "AgnhostCerts",
		inCoreDNS: "CoreDNS", inPodnet: "PodnetBin", inPodnetd: "PodnetBin", inPodnetctl: "PodnetBin",
		inKubeProxy: "KubeProxy",
	}
	out := map[string]*inputFile{}
	for _, r := range selected {
		for _, name := range inputNames(r) {
			if _, done := out[name]; done {
				continue
			}
			var (
				in  *inputFile
				err error
			)
			if name == inPause {
				if o.PauseSource == "" {
					err = errors.New("no path given")
				} else {
					in, err = pauseInput(o.PauseSource)
				}
			} else {
				in, err = fileInput(name, paths[name])
			}
			if err != nil {
				return nil, fmt.Errorf("image %s needs %s (Options.%s): %w", r.Name, name, option[name], err)
			}
			out[name] = in
		}
	}
	return out, nil
}

func joinIf(dir, name string) string {
	if dir == "" {
		return ""
	}
	return filepath.Join(dir, name)
}

// Package benchenv is what podnet's benchmark programs (bench/cni,
// bench/net) share about the machine they run on: finding the tools and
// the plugin binaries they measure, stopping cleanly on a signal, and the
// load they ran under.
package benchenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/podnet/podnet/internal/cnitest"
)

// SignalError is the cause of a run stopped by a signal.
type SignalError struct{ Sig syscall.Signal }

func (e SignalError) Error() string { return "interrupted by " + e.Sig.String() }

// Run runs a benchmark of prog and returns its exit code: 0, 1 on an
// error, 128+N when signal N stopped it. Whatever happens, cleanup
// (removing what the run created; safe to call more than once) runs
// before Run returns, and on a signal the run's context is cancelled.
func Run(prog string, cleanup func() []error, run func(context.Context) error) int {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	done := make(chan struct{})
	HandleSignals(prog, cancel, cleanup, done)
	err := run(ctx)
	close(done)
	code := 0
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
			err = cause
		}
		fmt.Fprintf(os.Stderr, "%s: %v\n", prog, err)
		code = 1
		var sig SignalError
		if errors.As(err, &sig) {
			code = 128 + int(sig.Sig)
		}
	}
	if errs := cleanup(); len(errs) > 0 {
		fmt.Fprintf(os.Stderr, "%s: cleanup: %v\n", prog, errors.Join(errs...))
		code = 1
	}
	return code
}

// HandleSignals stops the run of prog on SIGINT or SIGTERM: it cancels the
// run's context with a SignalError, so the run unwinds through its own
// cleanup. Should that not finish within 15s, or on a second signal, it
// calls cleanup itself and exits. done closes when the run has ended.
func HandleSignals(prog string, cancel context.CancelCauseFunc, cleanup func() []error, done <-chan struct{}) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		var s os.Signal
		select {
		case s = <-sigs:
		case <-done:
			return
		}
		sig, _ := s.(syscall.Signal)
		fmt.Fprintf(os.Stderr, "\n%s: %v: stopping, removing the benchmark's namespaces\n", prog, s)
		cancel(SignalError{sig})
		select {
		case <-done:
			return
		case <-sigs:
		case <-time.After(15 * time.Second):
		}
		if errs := cleanup(); len(errs) > 0 {
			fmt.Fprintf(os.Stderr, "%s: cleanup: %v\n", prog, errors.Join(errs...))
		}
		os.Exit(128 + int(sig))
	}()
}

// LookPath finds a program, also in the sbin directories a root shell's
// PATH may lack; pkg is the Debian package to install when it is missing.
func LookPath(name, pkg string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		if p := filepath.Join(d, name); isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s is not installed (apt-get install %s)", name, pkg)
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// PodnetBinary is the podnet plugin in dir (the module's bin/ when
// empty). It builds nothing: a missing binary is an error saying what to
// run, and warning is non-empty when a source file it is built from is
// newer than it.
func PodnetBinary(dir string) (bin, warning string, err error) {
	root, err := cnitest.ModuleRoot()
	if err != nil {
		return "", "", fmt.Errorf("find the module root: %w", err)
	}
	if dir == "" {
		dir = filepath.Join(root, "bin")
	}
	bin = filepath.Join(dir, "podnet")
	if !isExecutable(bin) {
		return "", "", fmt.Errorf("no podnet plugin binary at %s: run `make build` first (`make bench` does)", bin)
	}
	if newer := newerSource(root, bin); newer != "" {
		warning = fmt.Sprintf("%s is newer than %s: run `make build` to measure the current plugin", newer, bin)
	}
	return bin, warning, nil
}

// RefPluginDir is the directory of the reference CNI plugins: dir when
// given, else $PODNET_REF_CNI_DIR, else the cache `make ref-plugins`
// fills. Each of plugins must be there.
func RefPluginDir(dir string, plugins ...string) (string, error) {
	if dir == "" {
		dir = os.Getenv("PODNET_REF_CNI_DIR")
	}
	if dir == "" {
		dir = "/var/cache/podnet/cni-plugins/" + cnitest.RefVersion
	}
	for _, p := range plugins {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			return "", fmt.Errorf("reference CNI plugin %s is not in %s: run `make ref-plugins` (`make bench` does)", p, dir)
		}
	}
	return dir, nil
}

// newerSource returns a Go source file the plugin is built from (a
// non-test file of a package of this module that ./cmd/podnet imports, or
// go.mod, go.sum) modified after bin, or "" (also when `go list` fails).
func newerSource(root, bin string) string {
	fi, err := os.Stat(bin)
	if err != nil {
		return ""
	}
	cmd := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.Dir}}{{end}}", "./cmd/podnet")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	files := []string{filepath.Join(root, "go.mod"), filepath.Join(root, "go.sum")}
	for _, dir := range strings.Fields(string(out)) {
		if rel, err := filepath.Rel(root, dir); err == nil && !strings.HasPrefix(rel, "..") {
			src, _ := filepath.Glob(filepath.Join(dir, "*.go"))
			files = append(files, src...)
		}
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		if info, err := os.Stat(f); err == nil && info.ModTime().After(fi.ModTime()) {
			rel, _ := filepath.Rel(root, f)
			return rel
		}
	}
	return ""
}

// LoadAvg is the first three fields of /proc/loadavg, or "?".
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

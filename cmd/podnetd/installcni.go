package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/podnet/podnet/pkg/podnetd"
)

// installMain is `podnetd install-cni`, the DaemonSet's init container: it
// places the CNI plugin into the host's plugin directory.
func installMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("podnetd install-cni", flag.ContinueOnError)
	from := fs.String("from", "/usr/local/bin/podnet", "the plugin binary in the image")
	dir := fs.String("cni-bin-dir", "/opt/cni/bin", "the host's CNI plugin directory (mounted)")
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	msg, err := installPlugin(*from, *dir)
	if err != nil {
		fmt.Fprintln(stderr, "podnetd install-cni:", err)
		return 1
	}
	fmt.Fprintln(stdout, msg)
	return 0
}

// installPlugin copies from into dir/podnet atomically: written to a
// temporary in dir (the same filesystem), synced, made executable and
// renamed over the old plugin, then the directory synced. A runtime that
// execs the plugin meanwhile runs the old binary or the new one, whole,
// never a half-copied file (and never fails with "text file busy", since
// the running binary's inode is replaced, not written). An identical
// plugin is left as it is.
func installPlugin(from, dir string) (string, error) {
	src, err := os.ReadFile(from)
	if err != nil {
		return "", fmt.Errorf("read the plugin: %w", err)
	}
	sum := sha256.Sum256(src)
	digest := hex.EncodeToString(sum[:])[:16]
	dst := filepath.Join(dir, "podnet")
	if old, err := os.ReadFile(dst); err == nil && bytes.Equal(old, src) {
		if st, err := os.Stat(dst); err == nil && st.Mode().Perm()&0o111 != 0 {
			return fmt.Sprintf("%s is up to date (sha256 %s)", dst, digest), nil
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, podnetd.InstallTempPrefix+"*")
	if err != nil {
		return "", fmt.Errorf("create a temporary in %s: %w", dir, err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(src); err != nil {
		return "", fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		return "", fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return "", fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return "", fmt.Errorf("rename %s to %s: %w", tmp.Name(), dst, err)
	}
	done = true
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil && !errors.Is(err, os.ErrInvalid) {
			return "", fmt.Errorf("sync %s: %w", dir, err)
		}
	}
	return fmt.Sprintf("installed %s (%d bytes, sha256 %s)", dst, len(src), digest), nil
}

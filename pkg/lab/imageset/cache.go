package imageset

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"syscall"
	"time"
)

func appendKey(keys []string, k string) []string {
	for _, x := range keys {
		if x == k {
			return keys
		}
	}
	keys = append(keys, k)
	if len(keys) > 5 {
		keys = keys[len(keys)-5:]
	}
	return keys
}

// cacheKey hashes everything an image is made of.
func cacheKey(r recipe, inputs map[string]*inputFile, packages []string) string {
	b, err := json.Marshal(struct {
		Builder, Go string
		Recipe      recipe
		Inputs      map[string]string
		Packages    []string
	}{builderVersion, runtime.Version(), r, usedInputs(r, inputs), packages})
	if err != nil {
		panic(err) // recipes are plain data
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// usedInputs are the digests of the inputs recipe r takes files from.
func usedInputs(r recipe, inputs map[string]*inputFile) map[string]string {
	out := map[string]string{}
	for _, name := range inputNames(r) {
		if in, ok := inputs[name]; ok {
			out[name] = in.hash
		}
	}
	return out
}

func inputNames(r recipe) []string {
	var out []string
	for _, l := range r.Layers {
		for _, f := range l.Files {
			if f.Input != "" {
				out = append(out, f.Input)
			}
		}
	}
	return out
}

// findCached finds the image of recipe name last found current under
// quick, and marks it used.
func findCached(cacheDir, name, quick string) (Image, bool) {
	dirs, _ := filepath.Glob(filepath.Join(cacheDir, name+"-*"))
	for _, d := range dirs {
		rec, err := readRecord(d)
		if err != nil || rec.Recipe != name {
			continue
		}
		for _, k := range rec.QuickKeys {
			if k != quick {
				continue
			}
			if _, err := os.Stat(filepath.Join(d, "image.tar")); err != nil {
				return Image{}, false
			}
			now := time.Now()
			_ = os.Chtimes(filepath.Join(d, "image.json"), now, now)
			return rec.image(d, true), true
		}
	}
	return Image{}, false
}

func readRecord(dir string) (record, error) {
	var rec record
	b, err := os.ReadFile(filepath.Join(dir, "image.json"))
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("read %s: %w", filepath.Join(dir, "image.json"), err)
	}
	return rec, nil
}

func writeRecord(dir string, rec record) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	p := filepath.Join(dir, "image.json")
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

// prune removes all but the keep most recently used cached versions of an
// image.
func prune(cacheDir, name string, keep int, log *slog.Logger) {
	dirs, _ := filepath.Glob(filepath.Join(cacheDir, name+"-*"))
	type used struct {
		dir string
		at  time.Time
	}
	var all []used
	for _, d := range dirs {
		if rec, err := readRecord(d); err != nil || rec.Recipe != name {
			continue
		}
		st, err := os.Stat(filepath.Join(d, "image.json"))
		if err != nil {
			continue
		}
		all = append(all, used{d, st.ModTime()})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].at.After(all[j].at) })
	for i := keep; i < len(all); i++ {
		log.Info("removing old image", "image", name, "dir", all[i].dir)
		_ = os.RemoveAll(all[i].dir)
	}
}

// lockDir takes an exclusive lock of the cache, so two builds (a lab and a
// test) do not build the same image at once.
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock image cache: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock image cache %s: %w", dir, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// removeStale removes what a build killed midway left: scratch directories
// and unfinished downloads. Only called under the lock, when no build runs.
func removeStale(cacheDir string, log *slog.Logger) {
	stale, _ := filepath.Glob(filepath.Join(cacheDir, ".build-*"))
	downloads, _ := filepath.Glob(filepath.Join(cacheDir, "debs", ".download-*"))
	for _, d := range append(stale, downloads...) {
		log.Info("removing what an interrupted build left", "dir", d)
		_ = os.RemoveAll(d)
	}
}

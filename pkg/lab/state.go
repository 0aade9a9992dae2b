package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// DefaultStateDir is where a lab keeps its state, certificates, etcd data
// and logs. It is outside /etc, /opt and /var/lib, which machines overlay.
const DefaultStateDir = "/run/podnet-lab"

// State is what a lab has made, written before it is made.
type State struct {
	Created time.Time `json:"created"`
	Backend string    `json:"backend"`
	// ServiceProxy is the --service-proxy of `lab up` (see ServiceProxy).
	ServiceProxy string        `json:"serviceProxy,omitempty"`
	Machines     []MachineSpec `json:"machines"`
	K8sDir       string        `json:"k8sDir"`
	// RuntimeDir holds containerd, ctr, crictl and the registry.
	RuntimeDir string `json:"runtimeDir,omitempty"`
	// Phase is "building" until Up has finished, then "up".
	Phase string `json:"phase"`
}

func statePath(dir string) string { return filepath.Join(dir, "state.json") }

// LoadState reads the state of the lab in dir; ok is false when there is no
// lab there.
func LoadState(dir string) (st State, ok bool, err error) {
	b, err := os.ReadFile(statePath(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("read lab state: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, false, fmt.Errorf("read lab state %s: %w", statePath(dir), err)
	}
	return st, true, nil
}

func saveState(dir string, st State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := statePath(dir) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	if err := os.Rename(tmp, statePath(dir)); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	return nil
}

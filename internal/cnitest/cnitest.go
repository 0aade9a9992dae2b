// Package cnitest drives CNI plugins in kernel tests exactly as a container
// runtime does: through libcni, from inside a throwaway "node" network
// namespace, against pods that are throwaway namespaces of their own. It
// builds the podnet plugin from this module once per test binary and finds
// the reference plugins (portmap, bridge, host-local, …) that `make` builds.
package cnitest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/internal/netnstest"
)

// RefVersion is the release of containernetworking/plugins whose binaries
// the tests use as the reference (built by hack/ref-plugins.sh).
const RefVersion = "v1.9.1"

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// ModuleRoot is the directory holding this module's go.mod.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// PluginDir builds ./cmd/podnet once and returns the directory holding the
// "podnet" binary.
func PluginDir(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := ModuleRoot()
		if err != nil {
			buildErr = err
			return
		}
		buildDir, buildErr = os.MkdirTemp("", "podnet-plugin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(buildDir, "podnet"), "./cmd/podnet")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/podnet: %w: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

// RefDir is the directory of the reference plugins: $PODNET_REF_CNI_DIR, or
// the cache hack/ref-plugins.sh fills. A missing plugin fails the test with
// what to run: these tests are part of `make test`, which builds them.
func RefDir(t testing.TB, plugins ...string) string {
	t.Helper()
	dir := os.Getenv("PODNET_REF_CNI_DIR")
	if dir == "" {
		dir = "/var/cache/podnet/cni-plugins/" + RefVersion
	}
	for _, p := range plugins {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Fatalf("reference CNI plugin %s is not in %s: run `make ref-plugins` (make test does it)", p, dir)
		}
	}
	return dir
}

// Node is a throwaway node: a network namespace the plugins run in, and a
// directory for the IPAM store and libcni's cache.
type Node struct {
	NS      *netnstest.NS
	Dir     string
	DataDir string
	CNI     *libcni.CNIConfig
	Path    []string
}

// NewNode makes a node whose CNI_PATH is podnet's build dir and the
// reference plugins' dir.
func NewNode(t testing.TB) *Node {
	t.Helper()
	n := &Node{NS: netnstest.New(t, "node"), Dir: t.TempDir()}
	n.DataDir = filepath.Join(n.Dir, "ipam")
	n.Path = []string{PluginDir(t), RefDir(t)}
	n.CNI = libcni.NewCNIConfigWithCacheDir(n.Path, filepath.Join(n.Dir, "cache"), nil)
	return n
}

// PodnetConf is a podnet plugin entry for a conflist with the given subnet
// and this node's data dir; extra is spliced in as more JSON fields.
func (n *Node) PodnetConf(subnet string, extra string) string {
	if extra != "" {
		extra = "," + extra
	}
	return fmt.Sprintf(`{"type":"podnet","mtu":1450,"ipam":{"ranges":[[{"subnet":%q}]],"dataDir":%q}%s}`,
		subnet, n.DataDir, extra)
}

// List parses a conflist made of the given plugin entries.
func List(t testing.TB, version, name string, plugins ...string) *libcni.NetworkConfigList {
	t.Helper()
	js := fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[%s]}`, version, name, strings.Join(plugins, ","))
	list, err := libcni.ConfListFromBytes([]byte(js))
	if err != nil {
		t.Fatalf("parse conflist %s: %v", js, err)
	}
	return list
}

// Pod is a throwaway pod sandbox.
type Pod struct {
	Name        string
	NS          *netnstest.NS
	ContainerID string
	IfName      string
}

// NewPod makes a pod sandbox namespace with a random container ID.
func NewPod(t testing.TB, name string) *Pod {
	t.Helper()
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return &Pod{Name: name, NS: netnstest.New(t, name), ContainerID: hex.EncodeToString(b), IfName: "eth0"}
}

// RT is the runtime configuration libcni passes for this pod.
func (p *Pod) RT() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: p.ContainerID, NetNS: p.NS.Path, IfName: p.IfName,
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", p.Name}}}
}

// in runs fn inside the node namespace, where the plugins are exec'd.
func (n *Node) in(fn func() error) error { return n.NS.Do(fn) }

// Add runs ADD of the list for the pod.
func (n *Node) Add(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (res types.Result, err error) {
	err = n.in(func() error {
		res, err = n.CNI.AddNetworkList(context.Background(), list, rt)
		return err
	})
	return res, err
}

// Del runs DEL.
func (n *Node) Del(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return n.in(func() error { return n.CNI.DelNetworkList(context.Background(), list, rt) })
}

// Check runs CHECK (libcni passes the cached ADD result as prevResult).
func (n *Node) Check(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return n.in(func() error { return n.CNI.CheckNetworkList(context.Background(), list, rt) })
}

// Status runs STATUS.
func (n *Node) Status(list *libcni.NetworkConfigList) error {
	return n.in(func() error { return n.CNI.GetStatusNetworkList(context.Background(), list) })
}

// GC runs GC with the given valid attachments.
func (n *Node) GC(list *libcni.NetworkConfigList, valid []types.GCAttachment) error {
	return n.in(func() error {
		return n.CNI.GCNetworkList(context.Background(), list, &libcni.GCArgs{ValidAttachments: valid})
	})
}

// Exec runs the podnet binary directly in the node namespace with exactly
// env (nothing inherited from the test's environment) and stdin; it returns
// stdout and whether the plugin exited 0.
func (n *Node) Exec(t testing.TB, env map[string]string, stdin string) (string, bool) {
	t.Helper()
	bin := filepath.Join(PluginDir(t), "podnet")
	args := []string{"netns", "exec", n.NS.Name, "env", "-i"}
	for k, v := range env {
		args = append(args, k+"="+v)
	}
	cmd := exec.Command("ip", append(args, bin)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr
	err := cmd.Run()
	return out.String(), err == nil
}

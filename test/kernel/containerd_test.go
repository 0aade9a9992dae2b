package kernel

// podnet driven by containerd's own CNI library, github.com/containerd/go-cni,
// configured the way containerd's CRI plugin configures it.
//
// What a result must satisfy (go-cni v1.1.14, result.go and helper.go, and
// containerd's CRI, internal/cri/server/sandbox_run.go setupPodNetwork):
//   - go-cni converts each network's result to the current version and
//     builds Result.Interfaces, a map by interface name. Every IP is hung on
//     the interface its "interface" index names (an IP without an index goes
//     to the default "eth0"). An index past the end of the interface list
//     fails the whole Setup with ErrInvalidResult (the check is `>`, so an
//     index equal to the length panics instead of failing).
//   - go-cni always puts an empty entry for "eth0" in the map, so a result
//     that names no eth0 does not fail in go-cni: it fails in containerd,
//     which takes the sandbox's IP from Interfaces["eth0"].IPConfigs and
//     fails the sandbox with "failed to find network info for sandbox" when
//     that list is empty. The pod's interface must therefore be named eth0
//     in the result, and the address must point at it.
//   - Remove runs DEL of every network, and containerd calls it again
//     whenever a sandbox is stopped or removed, so DEL must succeed any
//     number of times (go-cni forgives an error mentioning "not found",
//     which is why the tests below check the kernel, not only the error).
//   - go-cni's Check cannot be used with containerd's setup: the loopback
//     network WithLoNetwork adds is a 0.3.1 conflist, and libcni refuses
//     CHECK for it ("configuration version "0.3.1" does not support the
//     CHECK command"). containerd's CRI never calls it.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	gocni "github.com/containerd/go-cni"

	"github.com/podnet/podnet/internal/cnitest"
	"github.com/podnet/podnet/pkg/wire"
)

// containerdNetwork is the name in containerd's default CNI template.
const containerdNetwork = "containerd-net"

// cniCacheDir is libcni's default cache directory; go-cni offers no other.
const cniCacheDir = "/var/lib/cni"

// newGoCNI builds a go-cni instance as containerd's CRI plugin does: the
// conflist read from a conf dir (the first file is the pod network, on eth0
// with the default "eth" prefix), plus containerd's own loopback network,
// and at least two networks before it reports ready.
func newGoCNI(t *testing.T, node *cnitest.Node, subnet string, opts ...gocni.Opt) gocni.CNI {
	t.Helper()
	// libcni's default cache, where go-cni keeps results: if this test is
	// what creates it, it removes it again (os.Remove leaves a directory
	// that is not empty alone).
	if _, err := os.Stat(cniCacheDir); errors.Is(err, fs.ErrNotExist) {
		t.Cleanup(func() {
			os.Remove(filepath.Join(cniCacheDir, "results"))
			os.Remove(cniCacheDir)
		})
	}
	confDir := t.TempDir()
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[%s,{"type":"portmap","capabilities":{"portMappings":true}}]}`,
		containerdNetwork, node.PodnetConf(subnet, ""))
	if err := os.WriteFile(filepath.Join(confDir, "10-containerd-net.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	opts = append(opts, gocni.WithMinNetworkCount(2), gocni.WithPluginConfDir(confDir),
		gocni.WithPluginDir(node.Path), gocni.WithPluginMaxConfNum(1))
	c, err := gocni.New(opts...)
	if err != nil {
		t.Fatalf("go-cni New: %v", err)
	}
	if err := c.Load(gocni.WithLoNetwork, gocni.WithDefaultConf); err != nil {
		t.Fatalf("go-cni Load: %v", err)
	}
	return c
}

// sandbox is one pod sandbox as containerd sets it up.
type sandbox struct {
	pod  *cnitest.Pod
	opts []gocni.NamespaceOpts
}

func newSandbox(t *testing.T, name string) *sandbox {
	t.Helper()
	pod := cnitest.NewPod(t, name)
	// go-cni caches results in libcni's default cache: drop this sandbox's
	// if a test stops half-way.
	t.Cleanup(func() {
		for _, n := range []string{containerdNetwork + "-" + pod.ContainerID + "-*", "cni-loopback-" + pod.ContainerID + "-lo"} {
			m, _ := filepath.Glob(filepath.Join(cniCacheDir, "results", n))
			for _, f := range m {
				os.Remove(f)
			}
		}
	})
	// The namespace options containerd's cniNamespaceOpts passes.
	return &sandbox{pod: pod, opts: []gocni.NamespaceOpts{
		gocni.WithLabels(map[string]string{
			"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": name, "K8S_POD_UID": "uid-" + name,
			"K8S_POD_INFRA_CONTAINER_ID": pod.ContainerID, "IgnoreUnknown": "1",
		}),
		gocni.WithCapability("io.kubernetes.cri.pod-annotations", map[string]string{}),
		gocni.WithCapabilityPortMap([]gocni.PortMapping{{HostPort: 18081, ContainerPort: 80, Protocol: "tcp"}}),
	}}
}

// setup is containerd's setupPodNetwork: Setup, then the sandbox's IP from
// the default interface's IP configs, or the sandbox fails.
//
// It calls SetupSerially, which containerd uses when its CNI config sets
// setup_serially: plain Setup attaches each network on a goroutine of its
// own, and a new goroutine does not run on the thread node.NS.Do locked
// into the node namespace, so the plugins would run in the host's network
// namespace. containerd itself runs in the node's namespace as a whole
// process, where the two are the same.
func (s *sandbox) setup(t *testing.T, node *cnitest.Node, c gocni.CNI) (*gocni.Result, netip.Addr, error) {
	t.Helper()
	var res *gocni.Result
	err := node.NS.Do(func() error {
		var err error
		res, err = c.SetupSerially(context.Background(), s.pod.ContainerID, s.pod.NS.Path, s.opts...)
		return err
	})
	if err != nil {
		return nil, netip.Addr{}, err
	}
	ip, err := sandboxIP(s.pod.ContainerID, res)
	return res, ip, err
}

// sandboxIP mirrors containerd's check: the default interface must carry
// at least one IP config, and the first one is the pod's IP.
func sandboxIP(id string, res *gocni.Result) (netip.Addr, error) {
	if cfg, ok := res.Interfaces["eth0"]; ok && len(cfg.IPConfigs) > 0 {
		ip, _ := netip.AddrFromSlice(cfg.IPConfigs[0].IP)
		return ip.Unmap(), nil
	}
	return netip.Addr{}, fmt.Errorf("failed to find network info for sandbox %q", id)
}

func (s *sandbox) remove(node *cnitest.Node, c gocni.CNI) error {
	return node.NS.Do(func() error {
		return c.Remove(context.Background(), s.pod.ContainerID, s.pod.NS.Path, s.opts...)
	})
}

// TestContainerd sets up a sandbox through go-cni, checks the result is
// one containerd accepts, removes it twice, and sets up another.
func TestContainerd(t *testing.T) {
	cnitest.RefDir(t, "portmap", "loopback")
	node := cnitest.NewNode(t)
	subnet := netip.MustParsePrefix("10.244.2.0/24")
	c := newGoCNI(t, node, subnet.String())
	// containerd reports NetworkReady from Status (STATUS for 1.1.0 lists).
	if err := node.NS.Do(c.Status); err != nil {
		t.Fatalf("go-cni Status: %v", err)
	}

	first := newSandbox(t, "first")
	res, ip, err := first.setup(t, node, c)
	if err != nil {
		t.Fatalf("sandbox setup: %v", err)
	}
	if !subnet.Contains(ip) {
		t.Errorf("the sandbox IP %s is outside the node's subnet %s", ip, subnet)
	}
	eth0 := res.Interfaces["eth0"]
	if eth0.Sandbox != first.pod.NS.Path {
		t.Errorf("go-cni's eth0 is in sandbox %q, want %q", eth0.Sandbox, first.pod.NS.Path)
	}
	if gw := eth0.IPConfigs[0].Gateway; !gw.Equal(subnet.Addr().Next().AsSlice()) {
		t.Errorf("eth0's gateway is %v, want %s", gw, subnet.Addr().Next())
	}
	hostVeth := wire.HostName(first.pod.ContainerID, "eth0")
	if _, ok := res.Interfaces[hostVeth]; !ok {
		t.Errorf("go-cni's result has no host veth %s: %v", hostVeth, res.Interfaces)
	}
	// The kernel agrees with what containerd now believes.
	if out := first.pod.NS.MustRun(t, "ip", "-4", "-o", "addr", "show", "dev", "eth0"); !slices.Contains(strings.Fields(out), netip.PrefixFrom(ip, subnet.Bits()).String()) {
		t.Errorf("eth0 in the pod does not carry %s/%d: %s", ip, subnet.Bits(), out)
	}

	// StopPodSandbox, then RemovePodSandbox: DEL twice, both succeed, and
	// the first already left nothing behind.
	for i := 1; i <= 2; i++ {
		if err := first.remove(node, c); err != nil {
			t.Fatalf("Remove #%d: %v", i, err)
		}
		assertNodeClean(t, node, containerdNetwork)
	}

	second := newSandbox(t, "second")
	_, ip2, err := second.setup(t, node, c)
	if err != nil {
		t.Fatalf("setup of a new sandbox after the removals: %v", err)
	}
	if !subnet.Contains(ip2) {
		t.Errorf("the new sandbox IP %s is outside %s", ip2, subnet)
	}
	if err := second.remove(node, c); err != nil {
		t.Fatalf("Remove of the new sandbox: %v", err)
	}
	assertNodeClean(t, node, containerdNetwork)
}

// TestContainerdNoIPOnEth0 is the other side of containerd's rule: a pod
// network whose result names its interface anything but eth0 (here go-cni's
// prefix makes it "net0") leaves eth0 without IP configs, and containerd
// fails the sandbox. It keeps sandboxIP honest.
func TestContainerdNoIPOnEth0(t *testing.T) {
	cnitest.RefDir(t, "portmap", "loopback")
	node := cnitest.NewNode(t)
	c := newGoCNI(t, node, "10.244.4.0/24", gocni.WithInterfacePrefix("net"))
	s := newSandbox(t, "noeth0")
	res, _, err := s.setup(t, node, c)
	if err == nil {
		t.Errorf("containerd's check accepted a result with no IP on eth0: %v", res.Interfaces)
	} else if res == nil {
		t.Fatalf("go-cni Setup itself failed: %v", err)
	}
	if cfg := res.Interfaces["net0"]; cfg == nil || len(cfg.IPConfigs) == 0 {
		t.Errorf("podnet's result gave net0 no IP: %v", res.Interfaces)
	}
	if err := s.remove(node, c); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	assertNodeClean(t, node, containerdNetwork)
}

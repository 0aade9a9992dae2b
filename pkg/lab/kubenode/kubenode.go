// Package kubenode describes the real node software of a lab machine — the
// containerd runtime (with Debian's runc) and the kubelet — as the files
// they read and the command lines they run with. It renders; it starts
// nothing (package lab does, on the machine).
//
// What this machine kind needs of them, and why (see docs/lab.md):
//   - the host is cgroup v1 (hybrid): kubelet runs with the cgroupfs driver,
//     failCgroupV1: false, and a cgroupRoot per machine that the lab makes
//     beforehand in every v1 hierarchy; containerd's runc runs without
//     SystemdCgroup;
//   - nothing here may lower oom_score_adj, not even root: kubelet asks
//     -998 for sandboxes and -997 for Guaranteed pods, which runc fails to
//     set. containerd's own restrict_oom_score_adj clamps every container's
//     score to containerd's (0), and kubelet is told oomScoreAdj: 0;
//   - images come from the lab's registry only: every registry host maps to
//     it (hosts.toml with override_path, the registry host as the first
//     path component), and an unknown host to a path that does not exist
//     there, so nothing is ever asked of the internet.
package kubenode

import (
	"fmt"
	"net/netip"
	"path"
	"sort"
	"strings"

	"github.com/podnet/podnet/pkg/lab/oci"
)

// Paths on the machine.
const (
	ContainerdConfig = "/etc/containerd/config.toml"
	CertsDir         = "/etc/containerd/certs.d"
	ContainerdSocket = "/run/containerd/containerd.sock"
	KubeletConfig    = "/var/lib/kubelet/config.yaml"
	CrictlConfig     = "/etc/crictl.yaml"
)

// PauseImage is the sandbox image: the one kubelet and the e2e framework of
// this Kubernetes version name.
const PauseImage = "registry.k8s.io/pause:3.10.2"

// MirroredRegistries are the registry hosts the lab registry serves, each
// under its own name: registry.k8s.io/pause is <lab registry>/registry.k8s.io/pause.
var MirroredRegistries = []string{"registry.k8s.io", "docker.io", "gcr.io", "quay.io", "ghcr.io", "k8s.gcr.io"}

// Node is one machine's node software.
type Node struct {
	Name         string
	IP           netip.Addr
	ControlPlane bool
	// Kubeconfig, ServingCert, ServingKey and ClientCA are paths the
	// machine sees (the lab's PKI).
	Kubeconfig, ServingCert, ServingKey, ClientCA string
	// CgroupRoot is the machine's cgroup (the same path in every v1
	// hierarchy and in the v2 one), such as /podnet-lab/node-1.
	CgroupRoot string
	// Registry is the lab registry's host:port (plain HTTP).
	Registry string
	// ClusterDNS and ClusterDomain go to every pod's resolv.conf.
	ClusterDNS    netip.Addr
	ClusterDomain string
}

// Files are the configuration files of the node, by path on the machine.
func (n Node) Files() map[string]string {
	files := map[string]string{
		ContainerdConfig: n.containerdConfig(),
		KubeletConfig:    n.kubeletConfig(),
		CrictlConfig:     "runtime-endpoint: unix://" + ContainerdSocket + "\nimage-endpoint: unix://" + ContainerdSocket + "\ntimeout: 10\n",
		path.Join(CertsDir, "_default", "hosts.toml"): n.hostsTOML("unmirrored"),
	}
	for _, h := range MirroredRegistries {
		files[path.Join(CertsDir, h, "hosts.toml")] = n.hostsTOML(h)
	}
	return files
}

// FileNames are Files' paths, sorted.
func (n Node) FileNames() []string {
	var out []string
	for p := range n.Files() {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// ContainerdArgv runs containerd (found in runtimeDir).
func (n Node) ContainerdArgv(runtimeDir string) []string {
	return []string{path.Join(runtimeDir, "containerd"), "--config", ContainerdConfig}
}

// KubeletArgv runs the kubelet (found in k8sDir).
func (n Node) KubeletArgv(k8sDir string) []string {
	return []string{path.Join(k8sDir, "kubelet"),
		"--config=" + KubeletConfig,
		"--kubeconfig=" + n.Kubeconfig,
		"--hostname-override=" + n.Name,
		"--node-ip=" + n.IP.String(),
	}
}

// hostsTOML points the registry host at the lab registry, with no
// fallback to the host itself (oci.HostsTOML, which pairs with the
// repositories oci.MirrorRepository pushes to).
func (n Node) hostsTOML(host string) string { return oci.HostsTOML(host, "http://"+n.Registry) }

func (n Node) containerdConfig() string {
	return fmt.Sprintf(`# containerd of lab machine %[1]s (written by podnetctl lab up).
version = 3
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = %[2]q

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %[3]q
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = %[4]q

[plugins.'io.containerd.cri.v1.runtime']
  # This machine forbids lowering oom_score_adj: keep every container's at
  # containerd's own (0) instead of kubelet's -998 for sandboxes.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
`, n.Name, ContainerdSocket, PauseImage, CertsDir)
}

func (n Node) kubeletConfig() string {
	var b strings.Builder
	fmt.Fprintf(&b, `# kubelet of lab machine %s (written by podnetctl lab up).
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: %s
tlsPrivateKeyFile: %s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %s}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://%s
# cgroup v1 host (hybrid), no systemd.
cgroupDriver: cgroupfs
cgroupRoot: %s
failCgroupV1: false
# This machine forbids lowering oom_score_adj.
oomScoreAdj: 0
clusterDNS: [%s]
clusterDomain: %s
resolvConf: /etc/resolv.conf
failSwapOn: false
serializeImagePulls: false
# Many machines share one disk and one memory: only the hardest pressure
# evicts.
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%%
  imagefs.available: 1%%
  nodefs.inodesFree: 1%%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
nodeStatusReportFrequency: 10s
nodeStatusUpdateFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 10s
shutdownGracePeriod: 0s
`, n.Name, n.IP, n.ServingCert, n.ServingKey, n.ClientCA, ContainerdSocket, n.CgroupRoot,
		n.ClusterDNS, n.ClusterDomain)
	if n.ControlPlane {
		b.WriteString("registerWithTaints:\n- {key: node-role.kubernetes.io/control-plane, effect: NoSchedule}\n")
	}
	return b.String()
}

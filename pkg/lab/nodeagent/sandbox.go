package nodeagent

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
)

// sandbox is a pod's network namespace, wired by the CNI plugin.
type sandbox struct {
	netns string // name under /run/netns (the machine's own)
	rt    *libcni.RuntimeConf
	ips   []netip.Addr
}

func (s *sandbox) path() string { return "/run/netns/" + s.netns }

// newNetNSName is containerd's naming: cni-<uuid>.
func newNetNSName() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return fmt.Sprintf("cni-%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// networkList loads the first CNI conflist of the conf dir, as containerd
// does.
func (a *Agent) networkList() (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(a.cfg.CNIConfDir, []string{".conflist"})
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("no CNI network config in %s", a.cfg.CNIConfDir)
	}
	sort.Strings(files)
	return libcni.ConfListFromFile(files[0])
}

func (a *Agent) cni() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir(a.cfg.CNIBinDirs, a.cfg.CNICacheDir, nil)
}

// createSandbox makes the pod's namespace and calls CNI STATUS then ADD.
func (a *Agent) createSandbox(ctx context.Context, pod *corev1.Pod) (*sandbox, error) {
	list, err := a.networkList()
	if err != nil {
		return nil, err
	}
	if err := a.cni().GetStatusNetworkList(ctx, list); err != nil {
		return nil, fmt.Errorf("CNI STATUS of %s: %w", list.Name, err)
	}
	s := &sandbox{netns: newNetNSName()}
	if err := run("ip", "netns", "add", s.netns); err != nil {
		return nil, err
	}
	if err := run("ip", "-n", s.netns, "link", "set", "lo", "up"); err != nil {
		_ = run("ip", "netns", "del", s.netns)
		return nil, err
	}
	s.rt = &libcni.RuntimeConf{ContainerID: string(pod.UID), NetNS: s.path(), IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", pod.Namespace}, {"K8S_POD_NAME", pod.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", string(pod.UID)}, {"K8S_POD_UID", string(pod.UID)}},
		CapabilityArgs: map[string]any{"portMappings": portMappings(pod)}}
	res, err := a.cni().AddNetworkList(ctx, list, s.rt)
	if err != nil {
		_ = a.cni().DelNetworkList(ctx, list, s.rt)
		_ = run("ip", "netns", "del", s.netns)
		return nil, fmt.Errorf("CNI ADD for pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	cur, err := current.NewResultFromResult(res)
	if err == nil {
		for _, ipc := range cur.IPs {
			if ipc.Interface != nil && cur.Interfaces[*ipc.Interface].Sandbox == s.path() {
				if ip, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
					s.ips = append(s.ips, ip.Unmap())
				}
			}
		}
	}
	if len(s.ips) == 0 {
		_ = a.cni().DelNetworkList(ctx, list, s.rt)
		_ = run("ip", "netns", "del", s.netns)
		return nil, fmt.Errorf("CNI ADD for pod %s/%s returned no IP on eth0", pod.Namespace, pod.Name)
	}
	return s, nil
}

// deleteSandbox calls CNI DEL and removes the namespace.
func (a *Agent) deleteSandbox(ctx context.Context, s *sandbox) error {
	var firstErr error
	if list, err := a.networkList(); err == nil {
		if err := a.cni().DelNetworkList(ctx, list, s.rt); err != nil {
			firstErr = fmt.Errorf("CNI DEL: %w", err)
		}
	}
	if _, err := os.Stat(s.path()); err == nil {
		if err := run("ip", "netns", "del", s.netns); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

func portMappings(pod *corev1.Pod) []map[string]any {
	var out []map[string]any
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.HostPort != 0 {
				proto := strings.ToLower(string(p.Protocol))
				if proto == "" {
					proto = "tcp"
				}
				out = append(out, map[string]any{"hostPort": p.HostPort, "containerPort": p.ContainerPort, "protocol": proto})
			}
		}
	}
	return out
}

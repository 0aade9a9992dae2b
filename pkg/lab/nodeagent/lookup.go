package nodeagent

import (
	"fmt"
	"net/netip"
	"path/filepath"
)

// Container is what the kubelet API and the probers need to know of a
// running container.
type Container struct {
	// PID is the container's main process: `nsenter -t PID -n -m -u`
	// enters its network, mount and UTS namespaces. 0 when not running.
	PID int
	// LogPath is the file that collects its stdout and stderr.
	LogPath string
	// PodIP is the pod's first address.
	PodIP netip.Addr
	// NetNS is the path of the pod's network namespace.
	NetNS string
}

// LookupContainer finds a container of a pod this agent runs.
func (a *Agent) LookupContainer(namespace, pod, container string) (Container, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, ps := range a.pods {
		if ps.namespace != namespace || ps.name != pod {
			continue
		}
		c, ok := ps.containers[container]
		if !ok {
			return Container{}, fmt.Errorf("pod %s/%s has no container %q", namespace, pod, container)
		}
		return Container{PID: c.pid, LogPath: filepath.Join(a.cfg.PodDir, string(ps.uid), "logs", container+".log"),
			PodIP: ps.sb.ips[0], NetNS: ps.sb.path()}, nil
	}
	return Container{}, fmt.Errorf("pod %s/%s is not running on node %s", namespace, pod, a.cfg.NodeName)
}

package nodeagent

import (
	"fmt"
	"net/netip"
)

// Container is what the kubelet API and the probers need to know of a
// running container.
type Container struct {
	// PID is the container's main process: `nsenter -t PID -n -m -u`
	// enters its network, mount and UTS namespaces. 0 when not running.
	PID int
	// LogPath is the file that collects the stdout and stderr of the
	// current (or last) instance; PreviousLogPath that of the instance
	// before it ("" when there was none).
	LogPath         string
	PreviousLogPath string
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
		out := Container{PID: c.pid, LogPath: a.logPath(ps, container, c.restarts), PodIP: ps.sb.ips[0], NetNS: ps.sb.path()}
		if c.restarts > 0 {
			out.PreviousLogPath = a.logPath(ps, container, c.restarts-1)
		}
		return out, nil
	}
	return Container{}, fmt.Errorf("pod %s/%s is not running on node %s", namespace, pod, a.cfg.NodeName)
}

package lab

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podnet/podnet/pkg/lab/machine"
	"github.com/podnet/podnet/pkg/lab/pki"
)

// nodePlugins are the CNI plugins every node gets in /opt/cni/bin.
var nodePlugins = []string{"portmap", "loopback", "bandwidth", "tuning", "firewall", "host-local", "bridge"}

// startNode installs the reference CNI plugins on a machine and starts
// its node software, containerd and kubelet. podnet comes as users
// install it: its DaemonSet's init container puts the plugin in place and
// podnetd writes the CNI config (installPodnet); kube-proxy, when chosen,
// is a DaemonSet too.
func (l *Lab) startNode(b *pki.Bundle, ms MachineSpec) error {
	var srcs []string
	for _, p := range nodePlugins {
		srcs = append(srcs, filepath.Join(l.opts.RefPluginDir, p))
	}
	m := machine.New(l.dir, ms.Name)
	install := m.Command("/bin/sh", "-c", `mkdir -p /opt/cni/bin /etc/cni/net.d /var/lib/cni && cp -f "$@" /opt/cni/bin/`, "-")
	install.Args = append(install.Args, srcs...)
	if out, err := install.CombinedOutput(); err != nil {
		return fmt.Errorf("install CNI plugins on %s: %w: %s", ms.Name, err, out)
	}
	return l.startKubeNode(b, ms)
}

// Client is a Kubernetes client with the lab's admin credentials.
func (l *Lab) Client() (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", l.AdminKubeconfig())
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", l.AdminKubeconfig(), err)
	}
	return kubernetes.NewForConfig(cfg)
}

// createNodes creates every machine's Node with its pod subnet, the i-th
// machine 10.244.i.0/24 (seed 003: controlplane .0, node-N .N), before any
// kubelet registers (it takes the Node over, as kubeadm's pre-made ones). kube-controller-manager's node IPAM takes subnets
// already set on Nodes as allocated; left to itself, its parallel workers
// hand them out in no fixed order. A Node deleted and registered again
// later gets whatever subnet node IPAM allocates, as on a real cluster.
func (l *Lab) createNodes(ctx context.Context, ms []MachineSpec) error {
	c, err := l.Client()
	if err != nil {
		return err
	}
	for i, m := range ms {
		subnet, err := nodeSubnet(i)
		if err != nil {
			return err
		}
		n := nodeObject(m.Name, m.ControlPlane)
		n.Spec.PodCIDR, n.Spec.PodCIDRs = subnet.String(), []string{subnet.String()}
		if _, err := c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create node %s with pod subnet %s: %w", m.Name, subnet, err)
		}
	}
	return nil
}

// ControlPlaneTaint keeps ordinary pods off the control plane's node, as
// kubeadm's taint does.
const ControlPlaneTaint = "node-role.kubernetes.io/control-plane"

// nodeObject is a machine's Node as the lab makes it before kubelet
// registers: the labels kubelet sets itself, and the control plane's taint
// (which kubelet, registering an existing Node, leaves in place).
func nodeObject(name string, controlPlane bool) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
	}}}
	if controlPlane {
		n.Spec.Taints = []corev1.Taint{{Key: ControlPlaneTaint, Effect: corev1.TaintEffectNoSchedule}}
	}
	return n
}

// nodeSubnet is the i-th /24 of the cluster CIDR.
func nodeSubnet(i int) (netip.Prefix, error) {
	if i < 0 || i > 255 {
		return netip.Prefix{}, fmt.Errorf("no /24 number %d in the cluster CIDR %s", i, ClusterCIDR)
	}
	b := ClusterCIDR.Addr().As4()
	b[2] = byte(i)
	return netip.PrefixFrom(netip.AddrFrom4(b), 24), nil
}

// waitNodesReady waits for every machine's Node to be Ready, labels the
// control plane's (kubelets may not set node-role labels themselves), and
// says which nodes are not ready and why when time runs out.
func (l *Lab) waitNodesReady(ctx context.Context, ms []MachineSpec, timeout time.Duration) error {
	c, err := l.Client()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		notReady := map[string]string{}
		for _, m := range ms {
			notReady[m.Name] = "not registered"
		}
		if nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err == nil {
			for _, n := range nodes.Items {
				for _, cond := range n.Status.Conditions {
					if cond.Type == corev1.NodeReady {
						if cond.Status == corev1.ConditionTrue {
							delete(notReady, n.Name)
						} else {
							notReady[n.Name] = cond.Message
						}
					}
				}
			}
		}
		if len(notReady) == 0 {
			break
		}
		if time.Now().After(deadline) {
			var why []string
			for n, m := range notReady {
				why = append(why, n+": "+m)
			}
			sort.Strings(why)
			return fmt.Errorf("nodes not Ready after %s: %s; see %s", timeout, strings.Join(why, "; "), l.LogDir())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	patch := []byte(`{"metadata":{"labels":{"node-role.kubernetes.io/control-plane":""}}}`)
	if _, err := c.CoreV1().Nodes().Patch(ctx, ControlPlane, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("label the control plane node: %w", err)
	}
	return nil
}

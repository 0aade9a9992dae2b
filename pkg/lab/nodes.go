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

	"github.com/podnet/podnet/pkg/lab/images"
	"github.com/podnet/podnet/pkg/lab/machine"
	"github.com/podnet/podnet/pkg/lab/nodeagent"
	"github.com/podnet/podnet/pkg/lab/pki"
)

// nodePlugins are the CNI plugins every node gets in /opt/cni/bin.
var nodePlugins = []string{"portmap", "loopback", "bandwidth", "tuning", "firewall", "host-local", "bridge"}

// startNode installs the CNI plugins on a machine and starts podnetd, the
// service proxy and the node software: kubelet and containerd, or the lab
// agent.
func (l *Lab) startNode(b *pki.Bundle, ms MachineSpec) error {
	// With the real node software podnet comes as users install it: its
	// DaemonSet's init container puts the plugin in place (installPodnet).
	var srcs []string
	if l.opts.Runtime != RuntimeContainerd {
		srcs = append(srcs, filepath.Join(l.opts.PluginDir, "podnet"))
	}
	for _, p := range nodePlugins {
		srcs = append(srcs, filepath.Join(l.opts.RefPluginDir, p))
	}
	m := machine.New(l.dir, ms.Name)
	install := m.Command("/bin/sh", "-c", `mkdir -p /opt/cni/bin /etc/cni/net.d /var/lib/cni && cp -f "$@" /opt/cni/bin/`, "-")
	install.Args = append(install.Args, srcs...)
	if out, err := install.CombinedOutput(); err != nil {
		return fmt.Errorf("install CNI plugins on %s: %w: %s", ms.Name, err, out)
	}
	kc, err := b.NodeKubeconfig(ms.Name)
	if err != nil {
		return err
	}
	cert, key, err := b.NodeServingCert(ms.Name, []netip.Addr{ms.IP})
	if err != nil {
		return err
	}
	if l.opts.Runtime == RuntimeContainerd { // kube-proxy too is a DaemonSet then
		return l.startKubeNode(b, ms)
	}
	// podnetd writes the node's CNI config and programs the routes to the
	// other nodes; the agent waits for that config, as kubelet does.
	pkc, err := b.PodnetdKubeconfig(ms.Name)
	if err != nil {
		return err
	}
	if err := l.start(component{Machine: ms.Name, Name: "podnetd", Argv: l.podnetdArgv(pkc, ms)}); err != nil {
		return err
	}
	if err := l.startServiceProxy(b, ms); err != nil {
		return err
	}
	argv := append(append([]string{}, l.opts.NodeAgent...), "--node", ms.Name, "--ip", ms.IP.String(), "--kubeconfig", kc,
		"--tls-cert", cert, "--tls-key", key, "--client-ca", b.Path(pki.CACert), "--write-cni-config=false")
	if ms.ControlPlane {
		argv = append(argv, "--control-plane")
	}
	// The agent runs CoreDNS images with the binary of CoreDNSDir.
	return l.start(component{Machine: ms.Name, Name: "node-agent", Argv: argv,
		Env: []string{images.CoreDNSDirEnv + "=" + l.opts.CoreDNSDir}})
}

// startServiceProxy starts kube-proxy on the machine when the lab runs it.
func (l *Lab) startServiceProxy(b *pki.Bundle, ms MachineSpec) error {
	proxies, err := l.serviceProxyComponents(b, ms)
	if err != nil {
		return err
	}
	for _, c := range proxies {
		if err := l.start(c); err != nil {
			return err
		}
	}
	return nil
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
// node agent registers. kube-controller-manager's node IPAM takes subnets
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
		n := nodeagent.NodeObject(m.Name, m.ControlPlane)
		n.Spec.PodCIDR, n.Spec.PodCIDRs = subnet.String(), []string{subnet.String()}
		if _, err := c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create node %s with pod subnet %s: %w", m.Name, subnet, err)
		}
	}
	return nil
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

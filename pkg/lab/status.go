package lab

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/pkg/lab/cgroup"
	"github.com/podnet/podnet/pkg/lab/machine"
)

// PrintStatus writes the lab's machines, their components (alive or not)
// and the API server's readiness.
func PrintStatus(w io.Writer, dir string) error {
	st, ok, err := LoadState(dir)
	if err != nil {
		return err
	}
	if !ok {
		fmt.Fprintln(w, "no lab is up (podnetctl lab up builds one)")
		return nil
	}
	proxy := ServiceProxy(st.ServiceProxy)
	if proxy == "" {
		proxy = ServiceProxyNone // a lab from before the option
	}
	l := New(Options{Dir: dir, K8sDir: st.K8sDir, ServiceProxy: proxy})
	fmt.Fprintf(w, "lab %s since %s, backend %s, service proxy %s, Kubernetes %s\n\n", st.Phase, st.Created.Local().Format(time.RFC3339),
		st.Backend, proxy, filepath.Base(st.K8sDir))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MACHINE\tADDRESS\tNAMESPACES\tCOMPONENTS")
	root := cgroup.Group{}
	if m, err := cgroup.Mount(); err == nil {
		root = cgroup.Group{Path: filepath.Join(m, CgroupName)}
	}
	for _, ms := range st.Machines {
		ns := "missing"
		if machine.New(dir, ms.Name).Exists() {
			ns = "ok"
		}
		comps := ""
		for _, c := range componentsOn(l, ms) {
			state := "down"
			if root.Path != "" && root.Sub(ms.Name+"/"+c).Populated() {
				state = "running"
				if url, ok := healthURL(c, ms); ok && ns == "ok" {
					if answering(dir, ms.Name, url) {
						state += ",answering"
					} else {
						state += ",not-answering"
					}
				}
			}
			comps += fmt.Sprintf("%s=%s ", c, state)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", ms.Name, ms.IP, ns, comps)
	}
	tw.Flush()
	api := "ready"
	if err := l.waitAPIServer(context.Background(), 0); err != nil {
		api = "not ready: " + err.Error()
	}
	fmt.Fprintf(w, "\nAPI server %s: %s\n", APIServer(), api)
	if c, err := l.Client(); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err == nil {
			agents := nodeAgents(ctx, c, dir, st)
			fmt.Fprintln(w)
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NODE\tREADY\tPOD CIDR\tNODE AGENTS\tMESSAGE")
			for _, n := range nodes.Items {
				ready, msg := "Unknown", ""
				for _, c := range n.Status.Conditions {
					if c.Type == corev1.NodeReady {
						ready, msg = string(c.Status), c.Message
					}
				}
				a := agents[n.Name]
				if a == "" {
					a = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.Name, ready, n.Spec.PodCIDR, a, msg)
			}
			tw.Flush()
		}
	}
	fmt.Fprintf(w, "\nkubeconfig: %s\nlogs: %s\n", l.AdminKubeconfig(), l.LogDir())
	return nil
}

// healthURL is where a component answers on its machine: control plane
// components, kubelet and podnetd on the loopback, kube-proxy on the
// machine's address (where load balancers would probe it).
func healthURL(component string, ms MachineSpec) (string, bool) {
	u, ok := map[string]string{
		"etcd":                    "http://127.0.0.1:2379/health",
		"kube-apiserver":          "https://127.0.0.1:6443/readyz",
		"kube-controller-manager": "https://127.0.0.1:10257/healthz",
		"kube-scheduler":          "https://127.0.0.1:10259/healthz",
		"podnetd":                 "http://127.0.0.1:9965/healthz",
		"kubelet":                 "http://127.0.0.1:10248/healthz",
		"registry":                fmt.Sprintf("http://%s/v2/", RegistryAddr()),
		"kube-proxy":              fmt.Sprintf("http://%s/healthz", netip.AddrPortFrom(ms.IP, kubeProxyHealthPort)),
	}[component]
	return u, ok
}

// answering reports whether url answers 200 from inside the machine.
func answering(dir, machineName, url string) bool {
	out, err := machine.New(dir, machineName).Command("curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", url).Output()
	return err == nil && string(out) == "200"
}

// componentsOn names the lab's processes on a machine: the control plane
// and the registry on its own, containerd and kubelet on every one.
// podnetd (and kube-proxy, when chosen) are DaemonSet pods: nodeAgents.
func componentsOn(l *Lab, ms MachineSpec) []string {
	var out []string
	if ms.ControlPlane {
		for _, c := range l.controlPlane() {
			out = append(out, c.Name)
		}
		out = append(out, "registry")
	}
	return append(out, "containerd", "kubelet")
}

// nodeAgents describes, per node, the pods of the add-ons that run the
// network on the real node software (the DaemonSets podnet and, when
// chosen, kube-proxy): "podnet-x7k2p=Running,ready,answering". Answering
// is podnetd's (or kube-proxy's) /healthz, asked from inside the node's
// machine.
func nodeAgents(ctx context.Context, c kubernetes.Interface, dir string, st State) map[string]string {
	out := map[string]string{}
	for _, sel := range []string{"app.kubernetes.io/name=podnet", "k8s-app=kube-proxy"} {
		pods, err := c.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			continue
		}
		for _, p := range pods.Items {
			s := fmt.Sprintf("%s=%s", p.Name, p.Status.Phase)
			if podIsReady(&p) {
				s += ",ready"
			} else {
				s += ",not-ready"
			}
			if p.Status.Phase == corev1.PodRunning {
				for _, ms := range st.Machines {
					url, _ := healthURL("podnetd", ms)
					if sel == "k8s-app=kube-proxy" {
						url, _ = healthURL("kube-proxy", ms)
					}
					if ms.Name == p.Spec.NodeName && machine.New(dir, ms.Name).Exists() {
						if answering(dir, ms.Name, url) {
							s += ",answering"
						} else {
							s += ",not-answering"
						}
					}
				}
			}
			if out[p.Spec.NodeName] != "" {
				out[p.Spec.NodeName] += " "
			}
			out[p.Spec.NodeName] += s
		}
	}
	return out
}

func podIsReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

package lab

import (
	"fmt"
	"path/filepath"

	"github.com/podnet/podnet/pkg/lab/pki"
)

// component is one long-running process of the lab, run on a machine in
// its own cgroup, with its output in logs/<machine>-<name>.log.
type component struct {
	Machine string
	Name    string
	Argv    []string
	// Env is added to the lab's environment.
	Env []string
}

// controlPlane returns etcd and the three control plane components. etcd
// listens on the control plane's loopback only (as kubeadm's stacked etcd,
// without TLS since nothing else can reach it); the API server serves
// 192.168.56.10:6443 with the lab's CA, RBAC and the Node authorizer.
func (l *Lab) controlPlane() []component {
	p := func(f string) string { return filepath.Join(l.PKIDir(), f) }
	k8s := func(bin string) string { return filepath.Join(l.opts.K8sDir, bin) }
	return []component{
		{Machine: ControlPlane, Name: "etcd", Argv: []string{"etcd",
			"--name", ControlPlane,
			"--data-dir", filepath.Join(l.dir, "etcd"),
			"--listen-client-urls", "http://127.0.0.1:2379",
			"--advertise-client-urls", "http://127.0.0.1:2379",
			"--listen-peer-urls", "http://127.0.0.1:2380",
			"--initial-advertise-peer-urls", "http://127.0.0.1:2380",
			"--initial-cluster", ControlPlane + "=http://127.0.0.1:2380",
		}},
		{Machine: ControlPlane, Name: "kube-apiserver", Argv: []string{k8s("kube-apiserver"),
			"--etcd-servers=http://127.0.0.1:2379",
			"--advertise-address=" + ControlPlaneIP.String(),
			"--bind-address=0.0.0.0",
			"--secure-port=6443",
			"--service-cluster-ip-range=" + ServiceCIDR.String(),
			"--client-ca-file=" + p(pki.CACert),
			"--tls-cert-file=" + p(pki.APIServerCert),
			"--tls-private-key-file=" + p(pki.APIServerKey),
			"--kubelet-client-certificate=" + p(pki.APIServerKubeletCert),
			"--kubelet-client-key=" + p(pki.APIServerKubeletKey),
			"--kubelet-certificate-authority=" + p(pki.CACert),
			"--kubelet-preferred-address-types=InternalIP",
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + p(pki.ServiceAccountPub),
			"--service-account-signing-key-file=" + p(pki.ServiceAccountKey),
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--allow-privileged=true",
			"--endpoint-reconciler-type=lease",
		}},
		{Machine: ControlPlane, Name: "kube-controller-manager", Argv: []string{k8s("kube-controller-manager"),
			"--kubeconfig=" + p(pki.ControllerManagerConfig),
			"--authentication-kubeconfig=" + p(pki.ControllerManagerConfig),
			"--authorization-kubeconfig=" + p(pki.ControllerManagerConfig),
			"--bind-address=127.0.0.1",
			"--leader-elect=false",
			"--allocate-node-cidrs=true",
			"--cluster-cidr=" + ClusterCIDR.String(),
			"--node-cidr-mask-size=24",
			"--service-cluster-ip-range=" + ServiceCIDR.String(),
			"--cluster-signing-cert-file=" + p(pki.CACert),
			"--cluster-signing-key-file=" + p(pki.CAKey),
			"--root-ca-file=" + p(pki.CACert),
			"--service-account-private-key-file=" + p(pki.ServiceAccountKey),
			"--use-service-account-credentials=true",
			// The lab's node agent has no cloud provider; nodes are never
			// "uninitialized".
			"--controllers=*,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller",
		}},
		{Machine: ControlPlane, Name: "kube-scheduler", Argv: []string{k8s("kube-scheduler"),
			"--kubeconfig=" + p(pki.SchedulerKubeconfig),
			"--authentication-kubeconfig=" + p(pki.SchedulerKubeconfig),
			"--authorization-kubeconfig=" + p(pki.SchedulerKubeconfig),
			"--bind-address=127.0.0.1",
			"--leader-elect=false",
		}},
	}
}

// registryConfigYAML configures the lab registry: plain HTTP on the control
// plane's address (containerd on every machine is told so), storage in the
// machine's /var/lib/registry.
func registryConfigYAML() string {
	return fmt.Sprintf(`# The lab registry (written by podnetctl lab up).
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
http:
  addr: %s
`, RegistryAddr())
}

// APIServer is the API server's URL.
func APIServer() string { return fmt.Sprintf("https://%s:6443", ControlPlaneIP) }

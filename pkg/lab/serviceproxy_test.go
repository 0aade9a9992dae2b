package lab

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

func TestParseServiceProxy(t *testing.T) {
	for _, s := range []string{"podnet", "kube-proxy", "none"} {
		if p, err := ParseServiceProxy(s); err != nil || string(p) != s {
			t.Errorf("ParseServiceProxy(%q) = %q, %v", s, p, err)
		}
	}
	if _, err := ParseServiceProxy("ipvs"); err == nil || !strings.Contains(err.Error(), `--service-proxy "ipvs": use podnet or kube-proxy or none`) {
		t.Errorf("ParseServiceProxy(ipvs): %v", err)
	}
	if New(Options{}).opts.ServiceProxy != DefaultServiceProxy || !DefaultServiceProxy.Runs() || ServiceProxyNone.Runs() {
		t.Error("an unset service proxy is not the default, or Runs is wrong")
	}
}

// TestKubeProxyStaysOnItsMachine: kube-proxy listens on the machine's own
// addresses only, in nftables mode, and leaves the host's global conntrack
// table size alone.
func TestKubeProxyStaysOnItsMachine(t *testing.T) {
	m := Machines(1, 0)[1]
	argv := strings.Join(KubeProxyArgv("/k8s/kube-proxy", "/pki/kube-proxy.conf", m), " ")
	for _, want := range []string{"--proxy-mode=nftables", "--hostname-override=node-1", "--cluster-cidr=10.244.0.0/16",
		"--nodeport-addresses=192.168.56.11/32", "--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=192.168.56.11:10256",
		"--conntrack-max-per-core=0", "--kubeconfig=/pki/kube-proxy.conf"} {
		if !strings.Contains(argv, want) {
			t.Errorf("kube-proxy's command lacks %s: %s", want, argv)
		}
	}
	if strings.Contains(argv, "0.0.0.0") {
		t.Errorf("kube-proxy binds a wildcard address: %s", argv)
	}
}

// TestCoreDNSManifest: the add-on decodes, serves the cluster's zones at
// 10.96.0.10 without forwarding anywhere, and the node agents' resolv.conf
// points at it.
func TestCoreDNSManifest(t *testing.T) {
	objs, err := coreDNSObjects()
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.ConfigMap:
			cf := o.Data["Corefile"]
			if strings.Contains(cf, "forward") || !strings.Contains(cf, "kubernetes cluster.local in-addr.arpa ip6.arpa") {
				t.Errorf("Corefile:\n%s", cf)
			}
		case *corev1.Service:
			if o.Spec.ClusterIP != DNSServiceIP.String() || len(o.Spec.Ports) != 3 {
				t.Errorf("kube-dns Service %+v", o.Spec)
			}
		case *appsv1.Deployment:
			c := o.Spec.Template.Spec.Containers[0]
			if *o.Spec.Replicas != DNSReplicas || c.Image != CoreDNSImage || c.ReadinessProbe.HTTPGet.Port.IntValue() != 8181 {
				t.Errorf("Deployment: %d replicas, image %s, readiness %+v", *o.Spec.Replicas, c.Image, c.ReadinessProbe)
			}
		}
		kinds = append(kinds, o.GetObjectKind().GroupVersionKind().Kind)
	}
	if got := strings.Join(kinds, " "); got != "ServiceAccount ClusterRole ClusterRoleBinding ConfigMap Deployment Service" {
		t.Errorf("objects: %s", got)
	}
}

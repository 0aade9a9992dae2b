package kubenode

import (
	"net/netip"
	"strings"
	"testing"

	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	"sigs.k8s.io/yaml"
)

func node(cp bool) Node {
	return Node{Name: "node-1", IP: netip.MustParseAddr("192.168.56.11"), ControlPlane: cp,
		Kubeconfig: "/run/podnet-lab/pki/node-1.kubeconfig", ServingCert: "/s.crt", ServingKey: "/s.key", ClientCA: "/ca.crt",
		CgroupRoot: "/podnet-lab/node-1", Registry: "192.168.56.10:5000",
		ClusterDNS: netip.MustParseAddr("10.96.0.10"), ClusterDomain: "cluster.local"}
}

// The kubelet's configuration decodes strictly into the kubelet's own type
// (a misspelt field would be dropped silently by kubelet's lenient path),
// with what this machine needs.
func TestKubeletConfigIsTheKubeletsType(t *testing.T) {
	for _, cp := range []bool{false, true} {
		var c kubeletv1beta1.KubeletConfiguration
		if err := yaml.UnmarshalStrict([]byte(node(cp).Files()[KubeletConfig]), &c); err != nil {
			t.Fatalf("kubelet config (control plane %v) does not decode strictly: %v", cp, err)
		}
		if c.Kind != "KubeletConfiguration" || c.CgroupDriver != "cgroupfs" || c.CgroupRoot != "/podnet-lab/node-1" ||
			c.FailCgroupV1 == nil || *c.FailCgroupV1 || c.OOMScoreAdj == nil || *c.OOMScoreAdj != 0 ||
			c.Address != "192.168.56.11" || c.TLSCertFile != "/s.crt" || len(c.ClusterDNS) != 1 || c.ClusterDNS[0] != "10.96.0.10" ||
			c.ContainerRuntimeEndpoint != "unix:///run/containerd/containerd.sock" || c.Authentication.X509.ClientCAFile != "/ca.crt" ||
			c.Authorization.Mode != "Webhook" || c.FailSwapOn == nil || *c.FailSwapOn {
			t.Errorf("kubelet config (control plane %v): %+v", cp, c)
		}
		if got := len(c.RegisterWithTaints); (got == 1) != cp {
			t.Errorf("control plane %v: taints %v", cp, c.RegisterWithTaints)
		}
	}
}

// Every registry host the e2e framework and the seeds name is served by the
// lab registry under its own name, and nothing falls back to the internet.
func TestEveryRegistryGoesToTheLabRegistryOnly(t *testing.T) {
	files := node(false).Files()
	for _, h := range append(MirroredRegistries, "_default") {
		f, ok := files[CertsDir+"/"+h+"/hosts.toml"]
		if !ok {
			t.Fatalf("no hosts.toml for %s", h)
		}
		want := h
		if h == "_default" {
			want = "unmirrored"
		}
		if !strings.Contains(f, `server = "http://192.168.56.10:5000/v2/`+want+`"`) || !strings.Contains(f, "override_path = true") {
			t.Errorf("hosts.toml of %s:\n%s", h, f)
		}
		if strings.Contains(f, "[host.") {
			t.Errorf("hosts.toml of %s has a second host to fall back to:\n%s", h, f)
		}
	}
	cc := files[ContainerdConfig]
	for _, want := range []string{"restrict_oom_score_adj = true", "SystemdCgroup = false", `config_path = "/etc/containerd/certs.d"`, `sandbox = "` + PauseImage + `"`} {
		if !strings.Contains(cc, want) {
			t.Errorf("containerd config lacks %q:\n%s", want, cc)
		}
	}
}

package lab

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/template"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/podnet/podnet/deploy"
)

// PodnetImage is the image deploy/podnet.yaml runs (docker.io/podnet/podnet
// with the VERSION tag): the lab builds podnet's image from its own
// binaries under this very name, so the manifest applies unchanged.
func PodnetImage() (string, error) {
	for _, line := range strings.Split(string(deploy.Manifest), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "image: "); ok && strings.Contains(v, "/podnet:") {
			return strings.Trim(v, `"`), nil
		}
	}
	return "", fmt.Errorf("deploy/podnet.yaml names no podnet image")
}

// PodnetImageTag is the tag of PodnetImage.
func PodnetImageTag() (string, error) {
	img, err := PodnetImage()
	if err != nil {
		return "", err
	}
	return img[strings.LastIndex(img, ":")+1:], nil
}

// podnetManifest is deploy/podnet.yaml with the lab's options in the
// ConfigMap podnet-config, as a user edits it before applying: the backend,
// the Service proxy or not, NetworkPolicy or not, the API server's address (podnet's proxy is
// what implements the kubernetes Service, so podnetd cannot reach the API
// through it before it has programmed it), NodePorts on the lab's segments.
func (l *Lab) podnetManifest(machines []MachineSpec) ([]byte, error) {
	docs := bytes.Split(deploy.Manifest, []byte("\n---\n"))
	found := false
	for i, d := range docs {
		var cm corev1.ConfigMap
		if err := yaml.Unmarshal(d, &cm); err != nil || cm.Kind != "ConfigMap" || cm.Name != "podnet-config" {
			continue
		}
		found = true
		cm.Data["config.yaml"] = fmt.Sprintf(`# podnetd's options in the lab (podnetctl lab up; docs/deploy.md).
backend: %q
serviceProxy: %v
network: true
networkPolicy: %v
antiSpoofing: %v
clusterCIDR: %q
nodePortAddresses: [%s]
apiServer: %q
listen: "127.0.0.1:9965"
`, l.opts.Backend, l.opts.ServiceProxy == ServiceProxyPodnet, !l.opts.NoNetworkPolicy, !l.opts.NoAntiSpoofing, ClusterCIDR.String(),
			quotedList(labSegments(machines)), netip.AddrPortFrom(ControlPlaneIP, 6443).String())
		out, err := yaml.Marshal(&cm)
		if err != nil {
			return nil, fmt.Errorf("encode ConfigMap podnet-config: %w", err)
		}
		docs[i] = out
	}
	if !found {
		return nil, fmt.Errorf("deploy/podnet.yaml has no ConfigMap podnet-config")
	}
	return bytes.Join(docs, []byte("\n---\n")), nil
}

// installPodnet applies podnet's manifest through the API server with the
// lab's kubectl, as a user installs it: the DaemonSet then runs podnetd from
// its image on every node and its init container puts the plugin in place.
func (l *Lab) installPodnet(ctx context.Context, machines []MachineSpec) error {
	img, err := PodnetImage()
	if err != nil {
		return err
	}
	m, err := l.podnetManifest(machines)
	if err != nil {
		return err
	}
	if err := l.kubectlApply(ctx, m, "deploy/podnet.yaml"); err != nil {
		return err
	}
	l.say("podnet: deploy/podnet.yaml applied (DaemonSet podnet, image %s)", img)
	return nil
}

// kubectlApply applies a manifest through the API server with the lab's
// kubectl and admin credentials.
func (l *Lab) kubectlApply(ctx context.Context, manifest []byte, what string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(l.opts.K8sDir, "kubectl"), "--kubeconfig", l.AdminKubeconfig(), "apply", "-f", "-")
	cmd.Stdin = bytes.NewReader(manifest)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kubectl apply -f %s: %w: %s", what, err, out)
	}
	return nil
}

// labSegments are the lab's underlay prefixes: where NodePorts answer.
func labSegments(machines []MachineSpec) []string {
	segments := []string{Underlay.String()}
	if hasFar(machines) {
		segments = append(segments, FarUnderlay.String())
	}
	return segments
}

// quotedList is a YAML flow list's items: "a", "b".
func quotedList(items []string) string { return `"` + strings.Join(items, `", "`) + `"` }

// kubeProxyManifest is the kube-proxy add-on (kube-proxy.yaml) for this
// lab: kubeadm's shape, the image the lab built, the API server by address
// (kube-proxy is what would implement the kubernetes Service).
//
//go:embed kube-proxy.yaml
var kubeProxyManifest string

// kubeProxyImage is kube-proxy's image, tagged as kubeadm tags it: the
// version of the lab's Kubernetes binaries.
func (l *Lab) kubeProxyImage() string {
	return "registry.k8s.io/kube-proxy:" + filepath.Base(l.opts.K8sDir)
}

// installKubeProxy applies the kube-proxy add-on.
func (l *Lab) installKubeProxy(ctx context.Context, machines []MachineSpec) error {
	t, err := template.New("kube-proxy.yaml").Option("missingkey=error").Parse(kubeProxyManifest)
	if err != nil {
		return fmt.Errorf("parse the kube-proxy manifest: %w", err)
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, map[string]any{"Image": l.kubeProxyImage(), "APIServer": netip.AddrPortFrom(ControlPlaneIP, 6443),
		"ClusterCIDR": ClusterCIDR, "NodePortAddresses": quotedList(labSegments(machines))}); err != nil {
		return fmt.Errorf("render the kube-proxy manifest: %w", err)
	}
	if err := l.kubectlApply(ctx, buf.Bytes(), "kube-proxy.yaml"); err != nil {
		return err
	}
	l.say("kube-proxy: DaemonSet kube-proxy applied (image %s, nftables mode)", l.kubeProxyImage())
	return nil
}

// NetworkPolicyAPIVersion is the sigs.k8s.io/network-policy-api release
// whose ClusterNetworkPolicy CRD the lab installs: the one go.mod pins
// (a test keeps them equal), which podnetd's client is built from.
const NetworkPolicyAPIVersion = "v0.3.0"

// CRDDirEnv overrides where hack/crds.sh put the CRD.
const CRDDirEnv = "PODNET_CRD_DIR"

// ClusterNetworkPolicyCRD is the CRD file hack/crds.sh caches (make crds).
func ClusterNetworkPolicyCRD() string {
	dir := os.Getenv(CRDDirEnv)
	if dir == "" {
		dir = "/var/cache/podnet/crds/network-policy-api-" + NetworkPolicyAPIVersion
	}
	return filepath.Join(dir, "policy.networking.k8s.io_clusternetworkpolicies.yaml")
}

// installClusterNetworkPolicyCRD installs the ClusterNetworkPolicy CRD, as
// a cluster operator does before podnet enforces it, and waits until the
// API server serves it.
func (l *Lab) installClusterNetworkPolicyCRD(ctx context.Context) error {
	kubectl := filepath.Join(l.opts.K8sDir, "kubectl")
	crd := ClusterNetworkPolicyCRD()
	// Server-side: the CRD is too large for the last-applied annotation.
	if out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", l.AdminKubeconfig(), "apply", "--server-side", "-f", crd).CombinedOutput(); err != nil {
		return fmt.Errorf("kubectl apply -f %s: %w: %s", crd, err, out)
	}
	// Polled rather than `kubectl wait`, which fails at once while the new
	// CRD has no status conditions yet.
	var out []byte
	var err error
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		out, err = exec.CommandContext(ctx, kubectl, "--kubeconfig", l.AdminKubeconfig(), "get", "crd", "clusternetworkpolicies.policy.networking.k8s.io",
			"-o", `jsonpath={.status.conditions[?(@.type=="Established")].status}`).CombinedOutput()
		if err == nil && strings.TrimSpace(string(out)) == "True" {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("the ClusterNetworkPolicy CRD is not established after 60 s (Established=%q, %v)", strings.TrimSpace(string(out)), err)
		}
	}
	l.say("ClusterNetworkPolicy CRD of network-policy-api %s installed", NetworkPolicyAPIVersion)
	return nil
}

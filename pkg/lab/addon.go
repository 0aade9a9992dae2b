package lab

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"

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
// the Service proxy or not, the API server's address (podnet's proxy is
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
		segments := []string{Underlay.String()}
		if hasFar(machines) {
			segments = append(segments, FarUnderlay.String())
		}
		cm.Data["config.yaml"] = fmt.Sprintf(`# podnetd's options in the lab (podnetctl lab up; docs/deploy.md).
backend: %q
serviceProxy: %v
network: true
clusterCIDR: %q
nodePortAddresses: [%s]
apiServer: %q
listen: "127.0.0.1:9965"
`, l.opts.Backend, l.opts.ServiceProxy == ServiceProxyPodnet, ClusterCIDR.String(),
			`"`+strings.Join(segments, `", "`)+`"`, netip.AddrPortFrom(ControlPlaneIP, 6443).String())
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
	cmd := exec.CommandContext(ctx, filepath.Join(l.opts.K8sDir, "kubectl"), "--kubeconfig", l.AdminKubeconfig(), "apply", "-f", "-")
	cmd.Stdin = bytes.NewReader(m)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kubectl apply -f deploy/podnet.yaml: %w: %s", err, out)
	}
	l.say("podnet: deploy/podnet.yaml applied (DaemonSet podnet, image %s)", img)
	return nil
}

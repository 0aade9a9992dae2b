package lab

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/podnet/podnet/pkg/lab/cgroup"
	"github.com/podnet/podnet/pkg/lab/imageset"
	"github.com/podnet/podnet/pkg/lab/kubenode"
	"github.com/podnet/podnet/pkg/lab/machine"
	"github.com/podnet/podnet/pkg/lab/oci"
	"github.com/podnet/podnet/pkg/lab/pki"
)

// RuntimeVersion is the containerd version hack/runtime.sh builds.
const RuntimeVersion = "v2.4.2"

// DefaultRuntimeDir is where hack/runtime.sh puts containerd, its runc
// shim, ctr, crictl and the registry ($PODNET_RUNTIME_DIR overrides).
func DefaultRuntimeDir() string {
	if d := os.Getenv("PODNET_RUNTIME_DIR"); d != "" {
		return d
	}
	return "/var/cache/podnet/runtime/" + RuntimeVersion
}

// RegistryPort is where the lab registry listens, on the control plane.
const RegistryPort = 5000

// RegistryAddr is the lab registry's host:port.
func RegistryAddr() string { return fmt.Sprintf("%s:%d", ControlPlaneIP, RegistryPort) }

// machineCgroup is a machine's cgroup path (v1 hierarchies and v2 alike):
// kubelet's cgroupRoot, so pods live below the machine's group.
func machineCgroup(name string) string { return CgroupName + "/" + name }

// kubeNode describes a machine's kubelet and containerd.
func (l *Lab) kubeNode(b *pki.Bundle, ms MachineSpec) (kubenode.Node, error) {
	kc, err := b.NodeKubeconfig(ms.Name)
	if err != nil {
		return kubenode.Node{}, err
	}
	cert, key, err := b.NodeServingCert(ms.Name, []netip.Addr{ms.IP})
	if err != nil {
		return kubenode.Node{}, err
	}
	return kubenode.Node{Name: ms.Name, IP: ms.IP, ControlPlane: ms.ControlPlane,
		Kubeconfig: kc, ServingCert: cert, ServingKey: key, ClientCA: b.Path(pki.CACert),
		CgroupRoot: "/" + machineCgroup(ms.Name), Registry: RegistryAddr(),
		ClusterDNS: DNSServiceIP, ClusterDomain: ClusterDomain}, nil
}

// startKubeNode writes a machine's containerd and kubelet configuration,
// makes its cgroup root in every v1 hierarchy and starts containerd, then
// the kubelet.
func (l *Lab) startKubeNode(b *pki.Bundle, ms MachineSpec) error {
	n, err := l.kubeNode(b, ms)
	if err != nil {
		return err
	}
	m := machine.New(l.dir, ms.Name)
	files := n.Files()
	for _, p := range n.FileNames() {
		if err := m.WriteFile(p, []byte(files[p]), 0o644); err != nil {
			return err
		}
	}
	// containerd's overlayfs snapshotter cannot put its layers on the
	// machine's /var/lib, itself an overlay: they go to a directory of the
	// machine's own on the state directory's filesystem.
	own := filepath.Join(m.Dir, "containerd")
	if err := os.MkdirAll(own, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", own, err)
	}
	if out, err := m.Command("/bin/sh", "-c", `mkdir -p /var/lib/containerd && mount --bind "$1" /var/lib/containerd`, "-", own).CombinedOutput(); err != nil {
		return fmt.Errorf("mount %s on /var/lib/containerd of %s: %w: %s", own, ms.Name, err, out)
	}
	if err := (cgroup.V1Root{Rel: machineCgroup(ms.Name)}).Create(); err != nil {
		return err
	}
	path := "PATH=" + strings.Join([]string{l.opts.RuntimeDir, l.opts.K8sDir, "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}, ":")
	if err := l.start(component{Machine: ms.Name, Name: "containerd", Argv: n.ContainerdArgv(l.opts.RuntimeDir), Env: []string{path}}); err != nil {
		return err
	}
	return l.start(component{Machine: ms.Name, Name: "kubelet", Argv: n.KubeletArgv(l.opts.K8sDir), Env: []string{path}})
}

// registryComponent is the lab registry on the control plane: the
// distribution registry serving the lab's images (built once per machine
// into the images cache) from an overlay, so what `lab load-image` pushes
// stays in this lab.
func (l *Lab) registryComponent() component {
	return component{Machine: ControlPlane, Name: "registry", Argv: []string{filepath.Join(l.opts.RuntimeDir, "registry"), "serve", registryConfig}}
}

const registryConfig = "/etc/distribution/config.yml"

// removeKubeNodeCgroups removes what kubelet and runc left in the v1
// hierarchies under the lab's cgroup (after its processes were stopped).
func removeKubeNodeCgroups() error {
	return cgroup.V1Root{Rel: CgroupName}.Remove(5 * time.Second)
}

// startRegistry starts the lab registry on the control plane and fills it
// with the lab's images.
func (l *Lab) startRegistry(ctx context.Context) error {
	m := machine.New(l.dir, ControlPlane)
	if err := m.WriteFile(registryConfig, []byte(registryConfigYAML()), 0o644); err != nil {
		return err
	}
	if err := l.start(l.registryComponent()); err != nil {
		return err
	}
	return l.fillRegistry(ctx)
}

// runtimeMissing says what a lab on the real node software lacks here.
func (l *Lab) runtimeMissing() []string {
	var missing []string
	for _, bin := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "crictl", "registry"} {
		if _, err := os.Stat(filepath.Join(l.opts.RuntimeDir, bin)); err != nil {
			missing = append(missing, bin+" in "+l.opts.RuntimeDir+" (make runtime builds it)")
		}
	}
	if _, err := os.Stat(filepath.Join(l.opts.K8sDir, "kubelet")); err != nil {
		missing = append(missing, "kubelet in "+l.opts.K8sDir+" (hack/k8s.sh builds it)")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		missing = append(missing, "the command runc (Debian package runc)")
	}
	return missing
}

// fillRegistry pushes the lab's images (Options.ImageArchives) into the
// lab registry, once it answers.
func (l *Lab) fillRegistry(ctx context.Context) error {
	start := time.Now()
	if err := waitHTTP(ctx, "http://"+RegistryAddr()+"/v2/", 30*time.Second); err != nil {
		return fmt.Errorf("the lab registry: %w; see %s", err, filepath.Join(l.LogDir(), ControlPlane+"-registry.log"))
	}
	n := 0
	for _, a := range l.opts.ImageArchives {
		imgs, err := LoadImages(ctx, a)
		if err != nil {
			return err
		}
		n += imgs
	}
	l.say("registry: %s holds %d images after %s", RegistryAddr(), n, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// LoadImages pushes every image of an OCI image archive (`docker save`'s
// or an OCI layout's tar) into the lab registry under its names, which
// every node then pulls as from their own registries: `podnetctl lab
// load-image`, as `kind load image-archive`. It returns how many images
// the archive held.
func LoadImages(ctx context.Context, archive string) (int, error) {
	r := &oci.Registry{URL: "http://" + RegistryAddr()}
	imgs, err := r.PushArchive(ctx, archive)
	if err != nil {
		return 0, fmt.Errorf("load images into the lab registry: %w", err)
	}
	return len(imgs), nil
}

// waitHTTP waits until url answers 200.
func waitHTTP(ctx context.Context, url string, timeout time.Duration) error {
	c := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	var last string
	for {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer in %s (last: %s)", url, timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// LabImagesEnv, when set, names the only image recipes the lab builds
// (comma-separated, such as pause,busybox,coredns): a quicker lab for work
// that needs no other image.
const LabImagesEnv = "PODNET_LAB_IMAGES"

// buildImages builds (or finds in the machine's image cache) the lab's
// images from the binaries the lab runs: agnhost and pause.c beside the
// Kubernetes binaries (hack/e2e-build.sh puts them there), CoreDNS, and
// podnet's own image from the podnet binaries of this lab, tagged as the
// manifest that installs it asks.
func (l *Lab) buildImages(ctx context.Context) error {
	start := time.Now()
	tag, err := PodnetImageTag()
	if err != nil {
		return err
	}
	o := imageset.Options{CacheDir: l.opts.ImageCacheDir,
		PauseSource: filepath.Join(l.opts.K8sDir, "pause.c"),
		Agnhost:     filepath.Join(l.opts.K8sDir, "agnhost"), AgnhostCerts: filepath.Join(l.opts.K8sDir, "agnhost-porter"),
		CoreDNS: filepath.Join(l.opts.CoreDNSDir, "coredns"), PodnetBin: l.opts.PluginDir, PodnetVersion: tag,
		KubeProxy: filepath.Join(l.opts.K8sDir, "kube-proxy")}
	if only := os.Getenv(LabImagesEnv); only != "" {
		o.Only = strings.Split(only, ",")
	}
	imgs, err := imageset.Build(ctx, o)
	if err != nil {
		return fmt.Errorf("%w (hack/e2e-build.sh builds agnhost and copies pause.c; make coredns builds CoreDNS)", err)
	}
	built := 0
	for _, img := range imgs {
		l.opts.ImageArchives = append(l.opts.ImageArchives, img.Archive)
		if !img.Cached {
			built++
		}
	}
	l.say("images: %d (%d built, %d from the cache) after %s", len(imgs), built, len(imgs)-built, time.Since(start).Round(100*time.Millisecond))
	return nil
}

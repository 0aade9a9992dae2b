package lab

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/podnet/podnet/pkg/lab/cgroup"
	"github.com/podnet/podnet/pkg/lab/imageset"
	"github.com/podnet/podnet/pkg/lab/machine"
	"github.com/podnet/podnet/pkg/lab/pki"
)

// CgroupName is the lab's cgroup v2 group.
const CgroupName = "podnet-lab"

// Options configure a lab.
type Options struct {
	Workers int
	// FarWorkers of the workers (the last ones) sit on a second underlay
	// segment behind a router.
	FarWorkers int
	Backend    string
	// Dir is the state directory (DefaultStateDir when empty).
	Dir string
	// K8sDir holds kube-apiserver, kube-controller-manager, kube-scheduler
	// and kubectl of one version (hack/k8s.sh builds them).
	K8sDir string
	// PluginDir holds podnet's binaries (the podnet image is made of
	// them), RefPluginDir the reference plugins (portmap, loopback, …),
	// which every node gets in /opt/cni/bin.
	PluginDir    string
	RefPluginDir string
	// ServiceProxy implements Services on every machine (empty:
	// DefaultServiceProxy); with one, the lab also runs the cluster DNS.
	ServiceProxy ServiceProxy
	// NoNetworkPolicy turns podnet's NetworkPolicy engine off (it is on
	// by default, whichever service proxy runs).
	NoNetworkPolicy bool
	// NoAntiSpoofing lets pods send from any address (anti-spoofing is on
	// by default).
	NoAntiSpoofing bool
	// CoreDNSDir holds the coredns binary hack/coredns.sh builds (empty:
	// imageset.CoreDNSDir()).
	CoreDNSDir string
	// RuntimeDir holds containerd, containerd-shim-runc-v2, ctr, crictl
	// and the registry (empty: DefaultRuntimeDir()).
	RuntimeDir string
	// ImageArchives are OCI image archives whose images the lab registry
	// serves.
	ImageArchives []string
	// ImageCacheDir is where the lab's images are built once per machine
	// (empty: imageset.DefaultCacheDir).
	ImageCacheDir string
	// Out receives progress lines.
	Out io.Writer
}

// Lab is one lab on this machine.
type Lab struct {
	opts Options
	dir  string
}

// New returns the lab described by opts.
func New(opts Options) *Lab {
	if opts.Dir == "" {
		opts.Dir = DefaultStateDir
	}
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	opts.ServiceProxy = opts.ServiceProxy.orDefault()
	if opts.RuntimeDir == "" {
		opts.RuntimeDir = DefaultRuntimeDir()
	}
	if opts.CoreDNSDir == "" {
		opts.CoreDNSDir = imageset.CoreDNSDir()
	}
	return &Lab{opts: opts, dir: opts.Dir}
}

// Dir is the lab's state directory.
func (l *Lab) Dir() string { return l.dir }

// PKIDir holds the lab's certificates and kubeconfigs.
func (l *Lab) PKIDir() string { return filepath.Join(l.dir, "pki") }

// LogDir holds one log file per component.
func (l *Lab) LogDir() string { return filepath.Join(l.dir, "logs") }

// AdminKubeconfig is the path of the admin kubeconfig.
func (l *Lab) AdminKubeconfig() string { return filepath.Join(l.PKIDir(), pki.AdminKubeconfig) }

func (l *Lab) say(format string, a ...any) { fmt.Fprintf(l.opts.Out, format+"\n", a...) }

// preflight says what is missing for a lab on this machine.
func (l *Lab) preflight() error {
	if os.Geteuid() != 0 {
		return errors.New("the lab needs root: it creates network namespaces, veths, mounts and cgroups (run it with sudo)")
	}
	var missing []string
	for _, f := range []string{"/proc/self/ns/net", "/proc/self/ns/mnt", "/proc/self/ns/uts"} {
		if _, err := os.Stat(f); err != nil {
			missing = append(missing, "namespace "+filepath.Base(f))
		}
	}
	fs, _ := os.ReadFile("/proc/filesystems")
	if !strings.Contains(string(fs), "overlay") {
		if exec.Command("modprobe", "overlay").Run() != nil {
			missing = append(missing, "overlayfs (modprobe overlay)")
		}
	}
	if _, err := cgroup.Mount(); err != nil {
		missing = append(missing, "a cgroup v2 hierarchy")
	}
	for _, tool := range []string{"ip", "nsenter", "unshare", "mount", "etcd"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, "the command "+tool)
		}
	}
	for _, bin := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"} {
		if _, err := os.Stat(filepath.Join(l.opts.K8sDir, bin)); err != nil {
			missing = append(missing, bin+" in "+l.opts.K8sDir+" (hack/k8s.sh builds it)")
		}
	}
	if l.opts.ServiceProxy == ServiceProxyKubeProxy {
		if _, err := os.Stat(filepath.Join(l.opts.K8sDir, "kube-proxy")); err != nil {
			missing = append(missing, "kube-proxy in "+l.opts.K8sDir+" (hack/k8s.sh builds it; or --service-proxy none)")
		}
	}
	if _, err := exec.LookPath("nft"); err != nil && l.opts.ServiceProxy.Runs() {
		missing = append(missing, "the command nft, which the service proxy runs (Debian package nftables)")
	}
	if l.opts.ServiceProxy.Runs() {
		if _, err := os.Stat(filepath.Join(l.opts.CoreDNSDir, "coredns")); err != nil {
			missing = append(missing, "coredns in "+l.opts.CoreDNSDir+" (make coredns builds it; or --service-proxy none)")
		}
	}
	if !l.opts.NoNetworkPolicy {
		if _, err := os.Stat(ClusterNetworkPolicyCRD()); err != nil {
			missing = append(missing, "the ClusterNetworkPolicy CRD "+ClusterNetworkPolicyCRD()+" (make crds; or --network-policy=false)")
		}
	}
	missing = append(missing, l.runtimeMissing()...)
	for _, bin := range []string{"podnet", "podnetd"} {
		if _, err := os.Stat(filepath.Join(l.opts.PluginDir, bin)); err != nil {
			missing = append(missing, bin+" in "+l.opts.PluginDir+" (make build)")
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("this machine cannot run the lab; missing: %s", strings.Join(missing, "; "))
	}
	return nil
}

// Up builds the lab and returns when the API server answers, every node
// is Ready and (with a service proxy) the cluster DNS answers. A failure
// part-way removes what was built.
func (l *Lab) Up(ctx context.Context) (err error) {
	if err := l.preflight(); err != nil {
		return err
	}
	if st, ok, err := LoadState(l.dir); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("a lab is already %s here (built %s): see `podnetctl lab status`, or `podnetctl lab down` first",
			st.Phase, st.Created.Format(time.RFC3339))
	}
	start := time.Now()
	st := State{Created: start.UTC(), Backend: l.opts.Backend, ServiceProxy: string(l.opts.ServiceProxy), RuntimeDir: l.opts.RuntimeDir,
		Machines: Machines(l.opts.Workers, l.opts.FarWorkers), K8sDir: l.opts.K8sDir, Phase: "building"}
	for _, d := range []string{l.dir, l.LogDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	if err := saveState(l.dir, st); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			// Keep the logs: they say why.
			kept := filepath.Join(os.TempDir(), "podnet-lab-logs-"+start.Format("20060102-150405"))
			if rerr := os.Rename(l.LogDir(), kept); rerr != nil {
				kept = "(lost: " + rerr.Error() + ")"
			}
			l.say("lab up failed: %v\nremoving what was built; the logs are in %s", err, kept)
			if derr := Down(l.dir); derr != nil {
				l.say("cleanup: %v", derr)
			}
		}
	}()
	if err := l.buildImages(ctx); err != nil {
		return err
	}
	if err := l.buildNetwork(st.Machines); err != nil {
		return err
	}
	bundle, err := l.startControlPlane(ctx, start)
	if err != nil {
		return err
	}
	if err := l.createNodes(ctx, st.Machines); err != nil {
		return err
	}
	for _, ms := range st.Machines {
		if err := l.startNode(bundle, ms); err != nil {
			return err
		}
	}
	if !l.opts.NoNetworkPolicy {
		if err := l.installClusterNetworkPolicyCRD(ctx); err != nil {
			return err
		}
	}
	if err := l.installPodnet(ctx, st.Machines); err != nil {
		return err
	}
	if l.opts.ServiceProxy == ServiceProxyKubeProxy {
		if err := l.installKubeProxy(ctx, st.Machines); err != nil {
			return err
		}
	}
	if err := l.waitNodesReady(ctx, st.Machines, 60*time.Second); err != nil {
		return err
	}
	l.say("nodes: %d Ready after %s", len(st.Machines), time.Since(start).Round(100*time.Millisecond))
	if err := l.startDNS(ctx, st.Machines, start); err != nil {
		return err
	}
	st.Phase = "up"
	return saveState(l.dir, st)
}

// buildNetwork makes the underlay switch (and the second segment), the
// machines and their links.
func (l *Lab) buildNetwork(machines []MachineSpec) error {
	l.say("underlay %s: switch netns %s, host %s %s", Underlay, SwitchNS, HostLink, HostIP)
	if err := buildSwitch(); err != nil {
		return err
	}
	far := hasFar(machines)
	if far {
		l.say("second segment %s: switch netns %s, router %s (%s, %s)", FarUnderlay, FarSwitchNS, RouterNS, RouterIP, RouterFarIP)
		if err := buildRouter(); err != nil {
			return err
		}
	}
	for _, ms := range machines {
		if err := machine.New(l.dir, ms.Name).Create(); err != nil {
			return err
		}
		if err := plug(ms, far); err != nil {
			return err
		}
		l.say("machine %-12s %s on %s", ms.Name, ms.IP, NodeLink)
	}
	return nil
}

// startControlPlane makes the PKI, starts etcd and the control plane
// components and applies the lab's RBAC.
func (l *Lab) startControlPlane(ctx context.Context, start time.Time) (*pki.Bundle, error) {
	spec := pki.DefaultSpec()
	spec.Server = APIServer()
	bundle, err := pki.Create(l.PKIDir(), spec)
	if err != nil {
		return nil, err
	}
	// etcd and the API server first; the controller manager and the
	// scheduler read RBAC-protected objects at start-up.
	cp := l.controlPlane()
	for _, c := range cp[:2] {
		if err := l.start(c); err != nil {
			return nil, err
		}
	}
	if err := l.waitAPIServer(ctx, 60*time.Second); err != nil {
		return nil, err
	}
	for _, c := range cp[2:] {
		if err := l.start(c); err != nil {
			return nil, err
		}
	}
	if err := l.startRegistry(ctx); err != nil {
		return nil, err
	}
	l.say("control plane: %s ready after %s", APIServer(), time.Since(start).Round(100*time.Millisecond))
	return bundle, nil
}

// startDNS deploys the cluster DNS when a service proxy runs, and waits
// until it answers.
func (l *Lab) startDNS(ctx context.Context, machines []MachineSpec, start time.Time) error {
	if !l.opts.ServiceProxy.Runs() {
		l.say("services: no service proxy (--service-proxy none), so no cluster DNS")
		return nil
	}
	c, err := l.Client()
	if err != nil {
		return err
	}
	if err := deployDNS(ctx, c); err != nil {
		return err
	}
	unanswered, err := l.waitDNS(ctx, c, machines, 90*time.Second)
	if err != nil {
		return err
	}
	for _, u := range unanswered {
		l.say("cluster DNS: no answer %s: that machine cannot reach the CoreDNS pods", u)
	}
	l.say("services: %s on every machine; cluster DNS: CoreDNS %s (%d pods) behind kube-dns %s answering after %s",
		l.opts.ServiceProxy, imageset.CoreDNSVersion, DNSReplicas, DNSServiceIP, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// start runs a component on its machine, detached, in its own cgroup.
func (l *Lab) start(c component) error {
	root, err := cgroup.Root(CgroupName)
	if err != nil {
		return err
	}
	g, err := root.Child(c.Machine + "/" + c.Name)
	if err != nil {
		return err
	}
	logPath := filepath.Join(l.LogDir(), c.Machine+"-"+c.Name+".log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log %s: %w", logPath, err)
	}
	defer logf.Close()
	// Into the cgroup first (on the host), then onto the machine, under a
	// loop that restarts the component when it exits (what systemd or
	// kubelet's static pods do on a real control plane).
	inner := machine.New(l.dir, c.Machine).Command(c.Argv...)
	argv := g.Wrap(append([]string{"/bin/sh", "-c",
		`while :; do "$@"; echo "podnet lab: $1 exited with status $?; restarting in 1s" >&2; sleep 1; done`, "-"},
		inner.Args...)...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), "PATH="+l.opts.K8sDir+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	cmd.Env = append(cmd.Env, c.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s on %s: %w", c.Name, c.Machine, err)
	}
	return cmd.Process.Release() // it outlives podnetctl; its cgroup keeps track of it
}

// apiClient is an HTTP client that trusts the lab's CA; /readyz needs no
// credentials (RBAC's system:public-info-viewer).
func (l *Lab) apiClient() (*http.Client, error) {
	caPEM, err := os.ReadFile(filepath.Join(l.PKIDir(), pki.CACert))
	if err != nil {
		return nil, fmt.Errorf("read CA: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}}}, nil
}

// waitAPIServer waits until /readyz answers ok, from the host through
// podnetlab0, as a user's kubectl would reach it.
func (l *Lab) waitAPIServer(ctx context.Context, timeout time.Duration) error {
	c, err := l.apiClient()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	var last string
	for first := true; first || time.Now().Before(deadline); first = false { // once at least: status asks with no time
		resp, err := c.Get(APIServer() + "/readyz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("the API server did not become ready in %s (last: %s); see %s", timeout, last,
		filepath.Join(l.LogDir(), ControlPlane+"-kube-apiserver.log"))
}

// Down removes everything a lab in dir made: processes (by cgroup),
// machines, the switch and the host's link, mounts and state. It works on a
// half-built lab and after a crash, and is a no-op when there is no lab.
func Down(dir string) error {
	if dir == "" {
		dir = DefaultStateDir
	}
	var errs []error
	if m, err := cgroup.Mount(); err == nil {
		g := cgroup.Group{Path: filepath.Join(m, CgroupName)}
		if err := g.Remove(5 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	// kubelet and runc also put pods in the v1 hierarchies, below the lab's
	// group there.
	if err := removeKubeNodeCgroups(); err != nil {
		errs = append(errs, err)
	}
	for _, name := range machineNames(dir) {
		if err := machine.New(dir, name).Destroy(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := unplugSwitch(); err != nil {
		errs = append(errs, err)
	}
	if err := machine.ReleaseNSDir(dir); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// machineNames are the machines of the lab in dir: from its state, and from
// the namespace files of machines a crash left unrecorded.
func machineNames(dir string) []string {
	seen := map[string]bool{}
	var names []string
	if st, ok, _ := LoadState(dir); ok {
		for _, m := range st.Machines {
			seen[m.Name] = true
			names = append(names, m.Name)
		}
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "ns"))
	for _, e := range ents {
		if n, ok := strings.CutSuffix(e.Name(), ".mnt"); ok && !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	return names
}

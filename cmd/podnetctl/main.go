// Command podnetctl is podnet's command line: a thin client of the lab and
// (later) of the node agent's debug API.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/podnet/podnet/pkg/lab"
	"github.com/podnet/podnet/pkg/lab/machine"
)

const usage = `podnetctl — podnet's command line

  podnetctl lab up [--workers N] [--far-workers N] [--backend vxlan|host-gw|hybrid]
                   [--service-proxy podnet|kube-proxy|none] [--network-policy=false]
                                   build a Kubernetes cluster of network namespaces on this machine, each
                                   node the real kubelet, containerd and runc, podnet installed from its
                                   manifest as a DaemonSet;
                                   with a service proxy (default podnet's own, in podnetd) it also runs
                                   the cluster DNS: CoreDNS behind the kube-dns Service, 10.96.0.10
  podnetctl lab down               remove everything the lab made (safe to run twice, and after a crash)
  podnetctl lab status             machines, components, nodes and where the logs are
  podnetctl lab kubeconfig         print the path of the admin kubeconfig (for any kubectl)
  podnetctl lab kubectl -- ARGS    kubectl of the control plane's version, with that kubeconfig
  podnetctl lab load-image FILE... push the images of OCI image archives (docker save, ctr export) into
                                   the lab registry, from which every node pulls them (like kind load)
  podnetctl lab node NAME [-- CMD] run CMD (default: a shell) on a machine: its network, filesystem
                                   view (/etc/cni/net.d, /opt/cni/bin, ip netns list) and hostname
  podnetctl lab node-rebuild NAME  tear a worker machine down (processes, pods, namespaces, disk) and
                                   build it again: its Node is deleted and registers anew, Ready

The lab keeps its state in ` + lab.DefaultStateDir + ` (override: --dir or PODNET_LAB_DIR).
`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "podnetctl:", err)
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			os.Exit(ee.ExitCode())
		}
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 2 || args[0] != "lab" {
		fmt.Fprint(os.Stderr, usage)
		if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
			return nil
		}
		return fmt.Errorf("unknown command %q", args)
	}
	verb, rest := args[1], args[2:]
	fs := flag.NewFlagSet("podnetctl lab "+verb, flag.ContinueOnError)
	dir := fs.String("dir", envOr("PODNET_LAB_DIR", lab.DefaultStateDir), "lab state directory")
	k8sDir := fs.String("k8s-dir", envOr("PODNET_K8S_DIR", lab.DefaultK8sDir()), "directory of the Kubernetes binaries")
	workers := fs.Int("workers", 2, "number of worker nodes")
	far := fs.Int("far-workers", 0, "put the last N workers on a second underlay segment, 192.168.57.0/24, behind a router (for hybrid)")
	backend := fs.String("backend", "vxlan", "cross-node backend: vxlan, host-gw or hybrid")
	proxy := fs.String("service-proxy", string(lab.DefaultServiceProxy), "what implements Services on the nodes: podnet (podnetd's own proxy), kube-proxy (the real one, nftables mode) or none (and then no cluster DNS)")
	netpol := fs.Bool("network-policy", true, "enforce NetworkPolicy with podnetd (false: podnetd deletes its policy table; policies are ignored)")
	antispoof := fs.Bool("anti-spoofing", true, "let each pod send only from its own IP and MAC, and VXLAN come only from Nodes (false: any source passes)")
	if err := fs.Parse(rest); err != nil {
		return err
	}
	rest = fs.Args()
	if len(rest) > 0 && rest[0] == "--" {
		rest = rest[1:]
	}
	switch verb {
	case "up":
		return labUp(lab.Options{Workers: *workers, FarWorkers: *far, Backend: *backend, Dir: *dir, K8sDir: *k8sDir, NoNetworkPolicy: !*netpol, NoAntiSpoofing: !*antispoof}, *proxy)
	case "down":
		return lab.Down(*dir)
	case "status":
		return lab.PrintStatus(os.Stdout, *dir)
	case "kubeconfig":
		l := lab.New(lab.Options{Dir: *dir})
		if _, ok, err := lab.LoadState(*dir); err != nil || !ok {
			return orNoLab(err)
		}
		fmt.Println(l.AdminKubeconfig())
		return nil
	case "kubectl":
		l := lab.New(lab.Options{Dir: *dir})
		st, ok, err := lab.LoadState(*dir)
		if err != nil || !ok {
			return orNoLab(err)
		}
		return execInto(filepath.Join(st.K8sDir, "kubectl"), append([]string{"kubectl", "--kubeconfig", l.AdminKubeconfig()}, rest...), os.Environ())
	case "load-image":
		if len(rest) == 0 {
			return errors.New("usage: podnetctl lab load-image ARCHIVE.tar ... (OCI image archives, as `docker save` or `ctr images export` write them)")
		}
		if _, ok, err := lab.LoadState(*dir); err != nil || !ok {
			return orNoLab(err)
		}
		for _, a := range rest {
			n, err := lab.LoadImages(context.Background(), a)
			if err != nil {
				return err
			}
			fmt.Printf("%s: %d images in the lab registry %s\n", a, n, lab.RegistryAddr())
		}
		return nil
	case "node":
		if len(rest) == 0 {
			return errors.New("usage: podnetctl lab node NAME [-- CMD ...]")
		}
		st, ok, err := lab.LoadState(*dir)
		if err != nil || !ok {
			return orNoLab(err)
		}
		cmdArgs := rest[1:]
		if len(cmdArgs) > 0 && cmdArgs[0] == "--" {
			cmdArgs = cmdArgs[1:]
		}
		return onNode(*dir, st, rest[0], cmdArgs)
	case "node-rebuild":
		if len(rest) != 1 {
			return errors.New("usage: podnetctl lab node-rebuild NAME")
		}
		return nodeRebuild(*dir, rest[0])
	}
	fmt.Fprint(os.Stderr, usage)
	return fmt.Errorf("unknown lab command %q", verb)
}

// labUp checks the options of `lab up` and builds the lab.
func labUp(opts lab.Options, proxy string) error {
	if opts.Workers < 1 || opts.Workers > 50 {
		return fmt.Errorf("--workers %d: give between 1 and 50", opts.Workers)
	}
	if opts.FarWorkers < 0 || opts.FarWorkers > opts.Workers {
		return fmt.Errorf("--far-workers %d: give between 0 and --workers (%d)", opts.FarWorkers, opts.Workers)
	}
	switch opts.Backend {
	case "vxlan", "host-gw", "hybrid":
	default:
		return fmt.Errorf("--backend %q: use vxlan, host-gw or hybrid", opts.Backend)
	}
	sp, err := lab.ParseServiceProxy(proxy)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	self, _ := os.Executable()
	opts.ServiceProxy, opts.PluginDir, opts.Out = sp, filepath.Dir(self), os.Stdout
	opts.RefPluginDir = envOr("PODNET_REF_CNI_DIR", "/var/cache/podnet/cni-plugins/v1.9.1")
	l := lab.New(opts)
	if err := l.Up(ctx); err != nil {
		return err
	}
	fmt.Printf("\nThe lab is up. Try:\n  podnetctl lab kubectl -- get nodes -o wide\n  podnetctl lab node node-1 -- ip route\n")
	if sp.Runs() {
		fmt.Printf("  podnetctl lab kubectl -- run -it --rm dns --image=nicolaka/netshoot --restart=Never -- nslookup kubernetes.default\n")
	}
	fmt.Printf("  export KUBECONFIG=%s\n", l.AdminKubeconfig())
	return nil
}

// nodeRebuild rebuilds a machine of the lab with the binaries and options
// the lab was built with.
func nodeRebuild(dir, name string) error {
	st, ok, err := lab.LoadState(dir)
	if err != nil || !ok {
		return orNoLab(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	proxy := lab.ServiceProxy(st.ServiceProxy)
	if proxy == "" {
		proxy = lab.ServiceProxyNone // a lab from before the option
	}
	self, _ := os.Executable()
	l := lab.New(lab.Options{Dir: dir, K8sDir: st.K8sDir, Backend: st.Backend, ServiceProxy: proxy,
		RuntimeDir: st.RuntimeDir, PluginDir: filepath.Dir(self),
		RefPluginDir: envOr("PODNET_REF_CNI_DIR", "/var/cache/podnet/cni-plugins/v1.9.1"), Out: os.Stdout})
	return l.RebuildMachine(ctx, name)
}

func orNoLab(err error) error {
	if err != nil {
		return err
	}
	return errors.New("no lab is up: run `podnetctl lab up` first")
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func execInto(path string, argv, env []string) error {
	if err := syscall.Exec(path, argv, env); err != nil {
		return fmt.Errorf("exec %s: %w", path, err)
	}
	return nil
}

// onNode runs a command on a lab machine with the admin kubeconfig and the
// lab's kubectl on PATH, so the seeds' commands work there verbatim.
func onNode(dir string, st lab.State, name string, argv []string) error {
	known := false
	for _, m := range st.Machines {
		known = known || m.Name == name
	}
	if !known {
		return fmt.Errorf("the lab has no machine %q (see `podnetctl lab status`)", name)
	}
	if len(argv) == 0 {
		argv = []string{"/bin/bash", "-l"}
	}
	m := machine.New(dir, name)
	cmd := m.Command(argv...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "KUBECONFIG="+lab.New(lab.Options{Dir: dir}).AdminKubeconfig(),
		"PATH="+strings.Join(append(nodePath(st), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"), ":"))
	return cmd.Run()
}

// nodePath is what a machine's PATH holds besides the system's: kubectl,
// and on the real node software crictl and ctr.
func nodePath(st lab.State) []string {
	p := []string{st.K8sDir}
	if st.RuntimeDir != "" {
		p = append(p, st.RuntimeDir)
	}
	return p
}

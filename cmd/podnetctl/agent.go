package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podnet/podnet/pkg/lab"
	"github.com/podnet/podnet/pkg/lab/images"
	"github.com/podnet/podnet/pkg/lab/machine"
	"github.com/podnet/podnet/pkg/lab/nodeagent"
)

// runNodeAgent is `podnetctl lab node-agent`, which `lab up` starts on each
// machine; it is not meant to be typed.
func runNodeAgent(args []string) error {
	fs := flag.NewFlagSet("podnetctl lab node-agent", flag.ContinueOnError)
	node := fs.String("node", "", "node name")
	ip := fs.String("ip", "", "node address")
	kubeconfig := fs.String("kubeconfig", "", "the node's kubeconfig")
	controlPlane := fs.Bool("control-plane", false, "register with the control-plane taint")
	writeConf := fs.Bool("write-cni-config", true, "write the CNI conflist from the node's podCIDR")
	tlsCert := fs.String("tls-cert", "", "serving certificate of the kubelet API on :10250 (with --tls-key and --client-ca)")
	tlsKey := fs.String("tls-key", "", "key of --tls-cert")
	clientCA := fs.String("client-ca", "", "CA that kubelet API clients' certificates must chain to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	addr, err := netip.ParseAddr(*ip)
	if *node == "" || *kubeconfig == "" || err != nil {
		return errors.New("node-agent needs --node, --ip and --kubeconfig")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return fmt.Errorf("load %s: %w", *kubeconfig, err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	a := nodeagent.New(nodeagent.Config{NodeName: *node, NodeIP: addr, ControlPlane: *controlPlane,
		KubeletVersion: lab.KubernetesVersion, CNIConfDir: "/etc/cni/net.d", CNIBinDirs: []string{"/opt/cni/bin"},
		CNICacheDir: "/var/lib/cni", PodDir: "/var/lib/podnet-lab/pods", WriteCNIConfig: *writeConf,
		PodnetDataDir: "/var/lib/cni/podnet", NodeDirs: machine.OwnDirs(), Log: log}, client)
	if *tlsCert != "" || *tlsKey != "" || *clientCA != "" {
		tlsCfg, err := nodeagent.KubeletTLSConfig(*tlsCert, *tlsKey, *clientCA)
		if err != nil {
			return err
		}
		// The kubelet API (logs, exec, port-forward) failing must not stop
		// the node: its pods and heartbeat go on, and the error is logged.
		go func() {
			if err := a.ServeKubeletAPI(ctx, fmt.Sprintf(":%d", nodeagent.KubeletPort), tlsCfg); err != nil {
				log.Error("kubelet API stopped", "err", err)
			}
		}()
	}
	return a.Run(ctx)
}

// runBuiltin is `podnetctl lab run-builtin NAME ARGS…`: a container whose
// image maps to one of the lab's built-in programs.
func runBuiltin(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: podnetctl lab run-builtin NAME [ARGS...]")
	}
	code := images.RunBuiltin(context.Background(), args[0], args[1:], os.Stdout, os.Stderr)
	os.Exit(code)
	return nil
}

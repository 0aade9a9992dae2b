// Command podnetd is podnet's node agent: one per node (a process in each
// lab machine; a DaemonSet on a real cluster). See package podnetd.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podnet/podnet/pkg/agentapi"
	"github.com/podnet/podnet/pkg/podnetd"
)

func main() {
	host, _ := os.Hostname()
	node := flag.String("node", envOr("NODE_NAME", host), "this node's name (default: $NODE_NAME, else the hostname)")
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig (default: in-cluster service account)")
	be := flag.String("backend", "vxlan", "cross-node backend: vxlan, host-gw or hybrid")
	mtu := flag.Int("mtu", 0, "pod MTU (default: derived from the underlay: minus 50 under VXLAN)")
	confDir := flag.String("cni-conf-dir", "/etc/cni/net.d", "where to write the node's CNI conflist")
	dataDir := flag.String("podnet-data-dir", "/var/lib/cni/podnet", "the CNI plugin's reservation store")
	listen := flag.String("listen", "127.0.0.1:9965", "address of /healthz and /metrics (empty: off)")
	clusterCIDR := flag.String("cluster-cidr", "10.244.0.0/16", "the pod network(s), comma-separated; egress from them to elsewhere is masqueraded")
	flag.Parse()
	var cidrs []netip.Prefix
	for _, c := range strings.Split(*clusterCIDR, ",") {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			fmt.Fprintf(os.Stderr, "podnetd: --cluster-cidr %q: %v\n", c, err)
			os.Exit(2)
		}
		cidrs = append(cidrs, p.Masked())
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*node, *kubeconfig, *listen, podnetd.Config{NodeName: *node, Backend: *be, MTU: *mtu,
		CNIConfDir: *confDir, PodnetDataDir: *dataDir, ClusterCIDRs: cidrs, Log: log}); err != nil {
		fmt.Fprintln(os.Stderr, "podnetd:", err)
		os.Exit(1)
	}
}

func run(node, kubeconfig, listen string, cfg podnetd.Config) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg.Metrics = reg
	var rc *rest.Config
	var err error
	if kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("kubernetes client config: %w", err)
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	a, err := podnetd.New(cfg, client)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if listen != "" {
		go func() {
			if err := agentapi.Serve(ctx, listen, reg, a.Health); err != nil {
				cfg.Log.Error("serve /healthz and /metrics", "err", err)
			}
		}()
	}
	return a.Run(ctx)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

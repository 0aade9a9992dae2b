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
	clusterCIDR := flag.String("cluster-cidr", "10.244.0.0/16", "the pod network(s), comma-separated; egress from them to elsewhere is masqueraded, and connections from elsewhere to a ClusterIP too")
	runProxy := flag.Bool("run-service-proxy", true, "implement Services (ClusterIP, NodePort, LoadBalancer, externalIPs) in nftables, in place of kube-proxy; when false, podnetd deletes its proxy table at start")
	runNetwork := flag.Bool("run-network", true, "run the pod network (backend, CNI config, egress masquerade, Node facts); false runs the Service proxy alone")
	npAddrs := flag.String("nodeport-addresses", "", "comma-separated prefixes: NodePorts answer only on this node's addresses inside them (default: every local address but loopback)")
	flag.Parse()
	cidrs, err := prefixes("--cluster-cidr", *clusterCIDR)
	if err == nil && len(cidrs) == 0 {
		err = fmt.Errorf("--cluster-cidr: give at least one pod network")
	}
	var nps []netip.Prefix
	if err == nil {
		nps, err = prefixes("--nodeport-addresses", *npAddrs)
	}
	if err == nil && !*runNetwork && !*runProxy {
		err = fmt.Errorf("--run-network=false and --run-service-proxy=false: nothing to run")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "podnetd:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*node, *kubeconfig, *listen, podnetd.Config{NodeName: *node, Backend: *be, MTU: *mtu,
		CNIConfDir: *confDir, PodnetDataDir: *dataDir, ClusterCIDRs: cidrs, ServiceProxy: *runProxy,
		NodePortAddresses: nps, ProxyOnly: !*runNetwork, Log: log}); err != nil {
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
	if !cfg.ServiceProxy {
		if err := podnetd.CleanupServiceProxy(ctx); err != nil {
			cfg.Log.Warn("the Service proxy is off, and its table could not be deleted", "err", err)
		}
	}
	if listen != "" {
		go func() {
			if err := agentapi.Serve(ctx, listen, reg, a); err != nil {
				cfg.Log.Error("serve /healthz and /metrics", "err", err)
			}
		}()
	}
	return a.Run(ctx)
}

// prefixes parses a comma-separated list of prefixes ("" is none).
func prefixes(flagName, s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, c := range strings.Split(s, ",") {
		if c = strings.TrimSpace(c); c == "" {
			continue
		}
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("%s %q: want a prefix such as 192.168.56.0/24: %v", flagName, c, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

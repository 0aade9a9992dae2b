package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	cnpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"

	"github.com/podnet/podnet/pkg/agentapi"
	"github.com/podnet/podnet/pkg/podnetd"
)

// agentArgs is the agent's command line, checked.
type agentArgs struct {
	node, kubeconfig string
	opts             podnetd.Options
	cfg              podnetd.Config
}

// configHint tells a person where the config file comes from in the
// DaemonSet, after an error in it.
const configHint = "(in the DaemonSet the config file is the key config.yaml of the ConfigMap kube-system/podnet-config: " +
	"fix it with `kubectl -n kube-system edit configmap podnet-config`, then `kubectl -n kube-system rollout restart ds/podnet`)"

// parseAgentArgs reads the flags, then the config file (--config) for the
// settings no flag gave, and checks every setting; nothing is touched on
// the node until it has succeeded.
func parseAgentArgs(args []string, getenv func(string) string, readFile func(string) ([]byte, error), stderr io.Writer) (agentArgs, int, error) {
	host, _ := os.Hostname()
	if v := getenv("NODE_NAME"); v != "" {
		host = v
	}
	o := podnetd.DefaultOptions()
	fs := flag.NewFlagSet("podnetd", flag.ContinueOnError)
	var a agentArgs
	fs.StringVar(&a.node, "node", host, "this node's name (default: $NODE_NAME, else the hostname)")
	fs.StringVar(&a.kubeconfig, "kubeconfig", "", "kubeconfig (default: in-cluster service account)")
	config := fs.String("config", "", "a YAML file of settings (keys: backend, mtu, serviceProxy, network, networkPolicy, clusterCIDR, nodePortAddresses, apiServer, listen, cniConfDir, podnetDataDir); a flag given here wins over the file")
	fs.StringVar(&o.Backend, "backend", o.Backend, "cross-node backend: vxlan, host-gw or hybrid")
	fs.IntVar(&o.MTU, "mtu", o.MTU, "pod MTU (default: derived from the underlay: minus 50 under VXLAN)")
	fs.StringVar(&o.CNIConfDir, "cni-conf-dir", o.CNIConfDir, "where to write the node's CNI conflist")
	fs.StringVar(&o.PodnetDataDir, "podnet-data-dir", o.PodnetDataDir, "the CNI plugin's reservation store")
	fs.StringVar(&o.Listen, "listen", o.Listen, "address of /healthz, /livez and /metrics (empty: off)")
	fs.StringVar(&o.ClusterCIDR, "cluster-cidr", o.ClusterCIDR, "the pod network(s), comma-separated; egress from them to elsewhere is masqueraded, and connections from elsewhere to a ClusterIP too")
	fs.BoolVar(&o.ServiceProxy, "run-service-proxy", o.ServiceProxy, "implement Services (ClusterIP, NodePort, LoadBalancer, externalIPs) in nftables, in place of kube-proxy; when false, podnetd deletes its proxy table at start")
	fs.BoolVar(&o.NetworkPolicy, "run-network-policy", o.NetworkPolicy, "enforce NetworkPolicy for this node's pods in nftables; when false, podnetd deletes its policy table at start (every pod open)")
	fs.BoolVar(&o.AntiSpoofing, "anti-spoofing", o.AntiSpoofing, "let each pod send only from its own IP and MAC, and accept VXLAN only from Nodes (with the pod network); when false, podnetd deletes its anti-spoofing tables at start")
	fs.BoolVar(&o.Network, "run-network", o.Network, "run the pod network (backend, CNI config, egress masquerade, Node facts); false runs the Service proxy alone")
	fs.StringVar(&o.NodePortAddresses, "nodeport-addresses", o.NodePortAddresses, "comma-separated prefixes: NodePorts answer only on this node's addresses inside them (default: every local address but loopback)")
	fs.StringVar(&o.APIServer, "api-server", o.APIServer, "the API server as host:port or https://host:port, instead of the in-cluster kubernetes Service (a ClusterIP, which podnetd cannot reach where its own Service proxy replaces kube-proxy and has not programmed it yet)")
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return a, code, nil
	}
	fs.Visit(func(f *flag.Flag) { o.SetFlag(f.Name) })
	if *config != "" {
		b, err := readFile(*config)
		if err != nil {
			return a, 2, fmt.Errorf("--config: %w %s", err, configHint)
		}
		if err := o.ApplyFile(*config, b); err != nil {
			return a, 2, fmt.Errorf("%w\n%s", err, configHint)
		}
	}
	cfg, err := o.Config(a.node)
	if err != nil {
		if *config != "" {
			err = fmt.Errorf("%w\n%s", err, configHint)
		}
		return a, 2, err
	}
	a.opts, a.cfg = o, cfg
	return a, 0, nil
}

func agentMain(args []string, stderr io.Writer) int {
	a, code, err := parseAgentArgs(args, os.Getenv, os.ReadFile, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "podnetd:", err)
	}
	if err != nil || code != 0 {
		return code
	}
	if a.cfg.NodeName == "" {
		fmt.Fprintln(stderr, "podnetd: no node name: give --node or set NODE_NAME")
		return 2
	}
	a.cfg.Log = slog.New(slog.NewTextHandler(stderr, nil))
	if err := run(a); err != nil {
		fmt.Fprintln(stderr, "podnetd:", err)
		return 1
	}
	return 0
}

func run(a agentArgs) error {
	cfg := a.cfg
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg.Metrics = reg
	var rc *rest.Config
	var err error
	if a.kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags(a.opts.APIServer, a.kubeconfig)
	} else if rc, err = rest.InClusterConfig(); err == nil && a.opts.APIServer != "" {
		rc.Host = a.opts.APIServer
	}
	if err != nil {
		return fmt.Errorf("kubernetes client config: %w", err)
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	var opts []podnetd.Option
	if cfg.NetworkPolicy {
		cc, err := cnpclient.NewForConfig(rc)
		if err != nil {
			return fmt.Errorf("ClusterNetworkPolicy client: %w", err)
		}
		opts = append(opts, podnetd.WithClusterPolicyClient(cc))
	}
	ag, err := podnetd.New(cfg, client, opts...)
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
	if !cfg.NetworkPolicy {
		if err := podnetd.CleanupNetworkPolicy(ctx); err != nil {
			cfg.Log.Warn("NetworkPolicy is off, and its table could not be deleted", "err", err)
		}
	}
	if !cfg.AntiSpoofing && !cfg.ProxyOnly {
		if err := podnetd.CleanupAntiSpoofing(ctx); err != nil {
			cfg.Log.Warn("anti-spoofing is off, and its tables could not be deleted", "err", err)
		}
	}
	if a.opts.Listen != "" {
		go func() {
			if err := agentapi.Serve(ctx, a.opts.Listen, reg, ag); err != nil {
				cfg.Log.Error("serve /healthz, /livez and /metrics", "err", err)
			}
		}()
	}
	return ag.Run(ctx)
}

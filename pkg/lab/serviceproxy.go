package lab

import (
	"fmt"
	"net/netip"
	"strings"
)

// ServiceProxy is what implements Services (ClusterIPs, NodePorts) on the
// lab's machines. With one running, `lab up` also deploys the cluster DNS,
// which reaches the API server through the kubernetes Service.
type ServiceProxy string

const (
	// ServiceProxyNone runs no Service proxy: Services exist in the API
	// only, and the lab has no cluster DNS.
	ServiceProxyNone ServiceProxy = "none"
	// ServiceProxyKubeProxy runs the real kube-proxy, in nftables mode,
	// on every machine (in the machine's network namespace, so its
	// nftables tables are the machine's).
	ServiceProxyKubeProxy ServiceProxy = "kube-proxy"
	// ServiceProxyPodnet is podnet's own proxy, in podnetd (package proxy,
	// table "ip podnet-proxy"): no kube-proxy runs.
	ServiceProxyPodnet ServiceProxy = "podnet"
)

// DefaultServiceProxy is what `lab up` runs unless told otherwise.
const DefaultServiceProxy = ServiceProxyPodnet

// ServiceProxies are the choices, in the order help lists them.
func ServiceProxies() []ServiceProxy {
	return []ServiceProxy{ServiceProxyPodnet, ServiceProxyKubeProxy, ServiceProxyNone}
}

// ParseServiceProxy checks a --service-proxy value.
func ParseServiceProxy(s string) (ServiceProxy, error) {
	var names []string
	for _, p := range ServiceProxies() {
		if string(p) == s {
			return p, nil
		}
		names = append(names, string(p))
	}
	return "", fmt.Errorf("--service-proxy %q: use %s", s, strings.Join(names, " or "))
}

// Runs says whether the proxy runs anything (and so whether the lab has
// cluster DNS).
func (p ServiceProxy) Runs() bool { return p != ServiceProxyNone && p != "" }

// orDefault is p, or DefaultServiceProxy when p is unset.
func (p ServiceProxy) orDefault() ServiceProxy {
	if p == "" {
		return DefaultServiceProxy
	}
	return p
}

// Ports of kube-proxy: metrics on the machine's loopback, health (what
// load balancers probe) on the machine's address; both inside the
// machine's network namespace, never the host's.
const (
	kubeProxyMetricsPort = 10249
	kubeProxyHealthPort  = 10256
)

// KubeProxyArgv runs kube-proxy for one machine. It leaves the host's
// global conntrack settings alone (--conntrack-max-per-core=0: the table
// size and hash size are the host's, and a network namespace may not
// change them); the timeouts it sets are per network namespace, the
// machine's.
func KubeProxyArgv(bin, kubeconfig string, ms MachineSpec) []string {
	return []string{bin,
		"--kubeconfig=" + kubeconfig,
		"--proxy-mode=nftables",
		"--hostname-override=" + ms.Name,
		"--bind-address=" + ms.IP.String(), // the node's primary address
		"--cluster-cidr=" + ClusterCIDR.String(),
		"--nodeport-addresses=" + netip.PrefixFrom(ms.IP, 32).String(),
		"--metrics-bind-address=" + netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), kubeProxyMetricsPort).String(),
		"--healthz-bind-address=" + netip.AddrPortFrom(ms.IP, kubeProxyHealthPort).String(),
		"--conntrack-max-per-core=0",
		"--oom-score-adj=0", // not -999: a lab process has no claim over the host's
	}
}

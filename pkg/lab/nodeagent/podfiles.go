package nodeagent

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// The cluster's DNS, as kubelet's --cluster-dns and --cluster-domain give
// it: the kube-dns Service the lab deploys.
const (
	ClusterDNS    = "10.96.0.10"
	ClusterDomain = "cluster.local"
)

// nodeResolvConf is the node's resolv.conf, the one pods with dnsPolicy
// Default get (kubelet's --resolv-conf).
const nodeResolvConf = "/etc/resolv.conf"

// writePodFiles writes the pod's resolv.conf and hosts, as kubelet does.
func (a *Agent) writePodFiles(pod *corev1.Pod, ip netip.Addr) (resolv, hosts string, err error) {
	dir := filepath.Join(a.cfg.PodDir, string(pod.UID))
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return "", "", err
	}
	node, err := os.ReadFile(nodeResolvConf)
	if err != nil && podDNSPolicy(pod) == corev1.DNSDefault {
		return "", "", fmt.Errorf("read the node's %s for dnsPolicy Default: %w", nodeResolvConf, err)
	}
	resolv, hosts = filepath.Join(dir, "resolv.conf"), filepath.Join(dir, "hosts")
	if err := os.WriteFile(resolv, []byte(resolvConf(pod, string(node))), 0o644); err != nil {
		return "", "", err
	}
	return resolv, hosts, os.WriteFile(hosts, []byte(hostsFile(pod, ip)), 0o644)
}

// podHostname is kubelet's: spec.hostname, else the pod's name, at most
// 63 characters.
func podHostname(pod *corev1.Pod) string {
	h := pod.Name
	if pod.Spec.Hostname != "" {
		h = pod.Spec.Hostname
	}
	if len(h) > 63 {
		h = strings.TrimRight(h[:63], "-.")
	}
	return h
}

// hostsFile is kubelet's managed /etc/hosts: localhost, the pod's own
// name (its FQDN first when it has a subdomain) and its hostAliases.
func hostsFile(pod *corev1.Pod, ip netip.Addr) string {
	var b strings.Builder
	b.WriteString("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	h := podHostname(pod)
	if sub := pod.Spec.Subdomain; sub != "" {
		fmt.Fprintf(&b, "%s\t%s.%s.%s.svc.%s\t%s\n", ip, h, sub, pod.Namespace, ClusterDomain, h)
	} else {
		fmt.Fprintf(&b, "%s\t%s\n", ip, h)
	}
	if len(pod.Spec.HostAliases) > 0 {
		b.WriteString("\n# Entries added by HostAliases.\n")
		for _, ha := range pod.Spec.HostAliases {
			fmt.Fprintf(&b, "%s\t%s\n", ha.IP, strings.Join(ha.Hostnames, "\t"))
		}
	}
	return b.String()
}

func podDNSPolicy(pod *corev1.Pod) corev1.DNSPolicy {
	p := pod.Spec.DNSPolicy
	if p == "" {
		p = corev1.DNSClusterFirst
	}
	if p == corev1.DNSClusterFirst && pod.Spec.HostNetwork {
		p = corev1.DNSDefault // kubelet's rule for host-network pods
	}
	return p
}

// resolvConf is the pod's resolv.conf as kubelet writes it for its
// dnsPolicy (ClusterFirst: the cluster DNS and search path; Default: the
// node's; None: nothing), with the pod's dnsConfig merged in.
func resolvConf(pod *corev1.Pod, node string) string {
	var servers, search []string
	var options []string
	switch podDNSPolicy(pod) {
	case corev1.DNSClusterFirst, corev1.DNSClusterFirstWithHostNet:
		servers = []string{ClusterDNS}
		search = []string{pod.Namespace + ".svc." + ClusterDomain, "svc." + ClusterDomain, ClusterDomain}
		options = []string{"ndots:5"}
	case corev1.DNSDefault:
		for line := range strings.Lines(node) {
			f := strings.Fields(line)
			if len(f) < 2 || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], ";") {
				continue
			}
			switch f[0] {
			case "nameserver":
				servers = append(servers, f[1])
			case "search", "domain":
				search = f[1:]
			case "options":
				options = append(options, f[1:]...)
			}
		}
	}
	if c := pod.Spec.DNSConfig; c != nil {
		servers = appendNew(servers, c.Nameservers...)
		search = appendNew(search, c.Searches...)
		for _, o := range c.Options {
			opt := o.Name
			if o.Value != nil {
				opt += ":" + *o.Value
			}
			options = slices.DeleteFunc(options, func(s string) bool { n, _, _ := strings.Cut(s, ":"); return n == o.Name })
			options = append(options, opt)
		}
	}
	if len(servers) > 3 { // what the resolver reads
		servers = servers[:3]
	}
	var b strings.Builder
	if len(search) > 0 {
		b.WriteString("search " + strings.Join(search, " ") + "\n")
	}
	for _, s := range servers {
		b.WriteString("nameserver " + s + "\n")
	}
	if len(options) > 0 {
		b.WriteString("options " + strings.Join(options, " ") + "\n")
	}
	return b.String()
}

func appendNew(list []string, add ...string) []string {
	for _, s := range add {
		if !slices.Contains(list, s) {
			list = append(list, s)
		}
	}
	return list
}

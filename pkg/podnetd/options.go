package podnetd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/podnet/podnet/pkg/announce"
	"github.com/podnet/podnet/pkg/backend"
	"github.com/podnet/podnet/pkg/ipam"
)

// Options are podnetd's settings as a person gives them: on the command
// line, or in the config file (podnetd --config) that the DaemonSet mounts
// from the ConfigMap podnet-config. A flag given on the command line wins
// over the file; the file wins over the defaults. Config checks them all
// before anything touches the node, and every error names the setting
// (the flag, or the file's key and line) and what to give instead, so that
// a bad ConfigMap stops podnetd at once, with the node as it was.
type Options struct {
	Backend string
	// MTU of pod interfaces; 0 derives it from the underlay.
	MTU int
	// ServiceProxy runs the Service proxy; Network the pod network;
	// NetworkPolicy the NetworkPolicy engine; AntiSpoofing keeps pods to
	// their own addresses (with the pod network only).
	ServiceProxy, Network, NetworkPolicy, AntiSpoofing bool
	// ClusterCIDR and NodePortAddresses are comma-separated prefixes.
	ClusterCIDR, NodePortAddresses string
	// APIServer is the API server's address (host:port or https URL),
	// instead of the kubernetes Service's ClusterIP (empty).
	APIServer string
	// Listen is the address of /healthz, /livez and /metrics (empty: off).
	Listen        string
	CNIConfDir    string
	PodnetDataDir string

	// from says where each setting that is not a default came from, by
	// flag name: "--mtu", or `config /etc/podnet/config.yaml, line 3, key "mtu"`.
	from map[string]string
}

// DefaultOptions are podnetd's defaults.
func DefaultOptions() Options {
	return Options{Backend: "vxlan", ServiceProxy: true, Network: true, NetworkPolicy: true, AntiSpoofing: true, ClusterCIDR: "10.244.0.0/16",
		Listen: "127.0.0.1:9965", CNIConfDir: "/etc/cni/net.d", PodnetDataDir: ipam.DefaultDataDir}
}

// A fileKey is one key of the config file, the flag it stands for, and
// how its value is read into Options.
type fileKey struct {
	key, flag string
	set       func(o *Options, n *yaml.Node) error
}

// fileKeys are the config file's keys, in the order the docs list them.
var fileKeys = []fileKey{
	{"backend", "backend", func(o *Options, n *yaml.Node) error { return scalar(n, &o.Backend) }},
	{"mtu", "mtu", func(o *Options, n *yaml.Node) error { return number(n, &o.MTU) }},
	{"serviceProxy", "run-service-proxy", func(o *Options, n *yaml.Node) error { return boolean(n, &o.ServiceProxy) }},
	{"network", "run-network", func(o *Options, n *yaml.Node) error { return boolean(n, &o.Network) }},
	{"networkPolicy", "run-network-policy", func(o *Options, n *yaml.Node) error { return boolean(n, &o.NetworkPolicy) }},
	{"antiSpoofing", "anti-spoofing", func(o *Options, n *yaml.Node) error { return boolean(n, &o.AntiSpoofing) }},
	{"clusterCIDR", "cluster-cidr", func(o *Options, n *yaml.Node) error { return list(n, &o.ClusterCIDR) }},
	{"nodePortAddresses", "nodeport-addresses", func(o *Options, n *yaml.Node) error { return list(n, &o.NodePortAddresses) }},
	{"apiServer", "api-server", func(o *Options, n *yaml.Node) error { return scalar(n, &o.APIServer) }},
	{"listen", "listen", func(o *Options, n *yaml.Node) error { return scalar(n, &o.Listen) }},
	{"cniConfDir", "cni-conf-dir", func(o *Options, n *yaml.Node) error { return scalar(n, &o.CNIConfDir) }},
	{"podnetDataDir", "podnet-data-dir", func(o *Options, n *yaml.Node) error { return scalar(n, &o.PodnetDataDir) }},
}

// FileKeys lists the config file's keys.
func FileKeys() []string {
	out := make([]string, len(fileKeys))
	for i, k := range fileKeys {
		out[i] = k.key
	}
	return out
}

// SetFlag records that the flag was given on the command line: the config
// file does not override it, and errors name it.
func (o *Options) SetFlag(flag string) {
	if o.from == nil {
		o.from = map[string]string{}
	}
	o.from[flag] = "--" + flag
}

// ApplyFile reads the config file (name is only for messages): a YAML
// mapping of the keys FileKeys lists, each optional. An unknown or
// repeated key, or a value of the wrong kind, is an error naming the key
// and its line. Keys whose flag was given (SetFlag) are checked but keep
// the flag's value.
func (o *Options) ApplyFile(name string, data []byte) error {
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&doc); errors.Is(err, io.EOF) {
		return nil // an empty file: every default stands
	} else if err != nil {
		return fmt.Errorf("config %s: not YAML: %w", name, err)
	}
	m := &doc
	if m.Kind == yaml.DocumentNode && len(m.Content) == 1 {
		m = m.Content[0]
	}
	if m.Kind == yaml.ScalarNode && m.Tag == "!!null" {
		return nil // only comments
	}
	if m.Kind != yaml.MappingNode {
		return fmt.Errorf("config %s: line %d: want a mapping of keys to values (backend: vxlan), one per line; the keys are %s",
			name, m.Line, strings.Join(FileKeys(), ", "))
	}
	byKey := map[string]fileKey{}
	for _, k := range fileKeys {
		byKey[k.key] = k
	}
	seen := map[string]int{}
	var errs []error
	for i := 0; i+1 < len(m.Content); i += 2 {
		kn, vn := m.Content[i], m.Content[i+1]
		at := fileWhere(name, kn.Line, kn.Value)
		k, ok := byKey[kn.Value]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("%s: unknown key%s; the keys are %s", at, suggest(kn.Value), strings.Join(FileKeys(), ", ")))
			continue
		case seen[k.key] != 0:
			errs = append(errs, fmt.Errorf("%s: given twice (first on line %d): keep one", at, seen[k.key]))
			continue
		}
		seen[k.key] = kn.Line
		target := o
		if _, given := o.from[k.flag]; given {
			scratch := *o // check the value, keep the flag's
			target = &scratch
		}
		if err := k.set(target, vn); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", at, err))
			continue
		}
		if target == o {
			if o.from == nil {
				o.from = map[string]string{}
			}
			o.from[k.flag] = fileWhere(name, kn.Line, k.key)
		}
	}
	return errors.Join(errs...)
}

// fileWhere names a key of the config file for an error.
func fileWhere(name string, line int, key string) string {
	return fmt.Sprintf("config %s, line %d, key %q", name, line, key)
}

// suggest names the known key a misspelt one most likely meant.
func suggest(key string) string {
	best, dist := "", 3
	for _, k := range fileKeys {
		if d := editDistance(strings.ToLower(key), strings.ToLower(k.key)); d < dist {
			best, dist = k.key, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

func scalar(n *yaml.Node, s *string) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("want one value (a string), got %s", kind(n))
	}
	if n.Tag == "!!null" {
		*s = ""
		return nil
	}
	*s = n.Value
	return nil
}

func number(n *yaml.Node, v *int) error {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		return fmt.Errorf("want a whole number, got %s", kind(n))
	}
	i, err := strconv.Atoi(n.Value)
	if err != nil {
		return fmt.Errorf("want a whole number, got %q", n.Value)
	}
	*v = i
	return nil
}

func boolean(n *yaml.Node, v *bool) error {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
		return fmt.Errorf("want true or false, got %s", kind(n))
	}
	return n.Decode(v)
}

// list reads a list of strings, or one string of comma-separated items,
// as the comma-separated string the flags take.
func list(n *yaml.Node, s *string) error {
	switch {
	case n.Kind == yaml.ScalarNode && n.Tag == "!!null":
		*s = ""
	case n.Kind == yaml.ScalarNode:
		*s = n.Value
	case n.Kind == yaml.SequenceNode:
		var items []string
		for _, c := range n.Content {
			if c.Kind != yaml.ScalarNode || c.Tag == "!!null" {
				return fmt.Errorf("item on line %d: want a prefix such as 10.244.0.0/16, got %s", c.Line, kind(c))
			}
			items = append(items, c.Value)
		}
		*s = strings.Join(items, ",")
	default:
		return fmt.Errorf("want a list of prefixes ([10.244.0.0/16]) or one, got %s", kind(n))
	}
	return nil
}

// kind describes a value for an error: its text, or what sort it is.
func kind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "nothing"
		}
		return strconv.Quote(n.Value)
	}
	return "something else"
}

// where names a setting for an error: the flag, or the file's key.
func (o *Options) where(flag string) string {
	if s, ok := o.from[flag]; ok {
		return s
	}
	return "--" + flag + " (default)"
}

// Config checks every setting and returns the agent's configuration (the
// node name, metrics and logger are the caller's). All errors are
// reported at once.
func (o *Options) Config(node string) (Config, error) {
	var errs []error
	bad := func(flag, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", o.where(flag), fmt.Sprintf(format, a...)))
	}
	if o.Network {
		if _, err := backend.New(o.Backend); err != nil {
			bad("backend", "%q is no backend: use vxlan, host-gw or hybrid", o.Backend)
		}
	}
	if o.MTU != 0 && (o.MTU < 576 || o.MTU > 65535) {
		bad("mtu", "%d is out of range: give the pod MTU in bytes (576 to 65535, at most the underlay's, minus %d under vxlan), or 0 to derive it from the underlay", o.MTU, backend.VXLANOverhead)
	}
	cidrs, err := parsePrefixes(o.ClusterCIDR)
	if err != nil {
		bad("cluster-cidr", "%v", err)
	} else if len(cidrs) == 0 {
		bad("cluster-cidr", "give at least one pod network, such as 10.244.0.0/16 (the cluster's --cluster-cidr)")
	}
	nps, err := parsePrefixes(o.NodePortAddresses)
	if err != nil {
		bad("nodeport-addresses", "%v", err)
	}
	if !o.Network && !o.ServiceProxy && !o.NetworkPolicy {
		errs = append(errs, fmt.Errorf("%s, %s and %s are all false: nothing to run", o.where("run-network"), o.where("run-service-proxy"), o.where("run-network-policy")))
	}
	if o.APIServer != "" {
		if err := checkAPIServer(o.APIServer); err != nil {
			bad("api-server", "%v", err)
		}
	}
	if o.Listen != "" {
		if err := checkListen(o.Listen); err != nil {
			bad("listen", "%v", err)
		}
	}
	for _, d := range [][2]string{{"cni-conf-dir", o.CNIConfDir}, {"podnet-data-dir", o.PodnetDataDir}} {
		if !filepath.IsAbs(d[1]) {
			bad(d[0], "%q: give an absolute directory", d[1])
		}
	}
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	return Config{NodeName: node, Backend: o.Backend, MTU: o.MTU, CNIConfDir: o.CNIConfDir,
		PodnetDataDir: o.PodnetDataDir, ClusterCIDRs: cidrs, ServiceProxy: o.ServiceProxy,
		NetworkPolicy: o.NetworkPolicy, AntiSpoofing: o.AntiSpoofing && o.Network,
		AgentSocket: agentSocket(o.Network && (o.NetworkPolicy || o.AntiSpoofing)), NodePortAddresses: nps, ProxyOnly: !o.Network}, nil
}

// parsePrefixes parses comma-separated prefixes ("" is none).
func parsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, c := range strings.Split(s, ",") {
		if c = strings.TrimSpace(c); c == "" {
			continue
		}
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("%q: want a prefix such as 192.168.56.0/24", c)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// checkAPIServer accepts host:port or an https URL with a host.
func checkAPIServer(s string) error {
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("%q: give the API server as host:port (192.168.56.10:6443) or https://host:port", s)
		}
		return nil
	}
	if _, port, err := net.SplitHostPort(s); err != nil || port == "" {
		return fmt.Errorf("%q: give the API server as host:port (192.168.56.10:6443) or https://host:port", s)
	}
	return nil
}

// checkListen accepts host:port with a numeric port.
func checkListen(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err == nil {
		var p int
		if p, err = strconv.Atoi(port); err == nil && (p < 1 || p > 65535) {
			err = errors.New("port out of range")
		}
	}
	if err != nil {
		return fmt.Errorf("%q: give an address and port such as 127.0.0.1:9965 (or nothing to serve no endpoints)", s)
	}
	return nil
}

// agentSocket is where podnetd hears of new pods, when it runs the pod
// network with NetworkPolicy or anti-spoofing.
func agentSocket(on bool) string {
	if on {
		return announce.DefaultSocket
	}
	return ""
}

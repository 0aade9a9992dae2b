package podnetd

// Kernel tests of `podnetd cleanup`: a throwaway node namespace gets
// podnet's objects from the real code paths — the vxlan backend's Setup
// and Sync, the masquerade's and the Service proxy's nft syncs, podnetd's
// conflist, and a pod added by the podnet plugin through libcni with that
// conflist, as a runtime does — beside foreign routes, tables and devices.
// Cleanup then runs inside the node namespace (netnstest's Do; every nft
// call goes through netnstest.GuardedNFT, so nothing can reach the host's
// ruleset), first with the pod still attached, then after its DEL, then
// once more. Root only; skipped otherwise and with -short.

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/knftables"

	"github.com/podnet/podnet/internal/cnitest"
	"github.com/podnet/podnet/internal/netnstest"
	"github.com/podnet/podnet/pkg/backend"
	"github.com/podnet/podnet/pkg/masq"
	"github.com/podnet/podnet/pkg/netconf"
	"github.com/podnet/podnet/pkg/policy"
	"github.com/podnet/podnet/pkg/proxy"
)

func requireCleanupKernel(t *testing.T) {
	t.Helper()
	netnstest.RequireNFT(t)
}

// cleanupNode is one node namespace and the nft handles of its tables.
type cleanupNode struct {
	ns                                      *netnstest.NS
	masqNFT, proxyNFT, proxy6NFT, policyNFT knftables.Interface
}

func newCleanupNode(t *testing.T, ns *netnstest.NS) *cleanupNode {
	return &cleanupNode{ns: ns,
		masqNFT:   netnstest.GuardedNFT(t, ns, masq.Family, masq.TableName),
		proxyNFT:  netnstest.GuardedNFT(t, ns, proxy.IPv4.NFT, proxy.TableName),
		proxy6NFT: netnstest.GuardedNFT(t, ns, proxy.IPv6.NFT, proxy.TableName),
		policyNFT: netnstest.GuardedNFT(t, ns, knftables.InetFamily, policy.TableName),
	}
}

func (n *cleanupNode) cleanup(t *testing.T, cfg CleanupConfig) CleanupReport {
	t.Helper()
	cfg.MasqNFT, cfg.ProxyNFT, cfg.Proxy6NFT, cfg.PolicyNFT = n.masqNFT, n.proxyNFT, n.proxy6NFT, n.policyNFT
	var rep CleanupReport
	err := n.ns.Do(func() (err error) { rep, err = Cleanup(context.Background(), cfg); return err })
	for _, r := range rep.Removed {
		t.Logf("removed %s", r)
	}
	for _, k := range rep.Kept {
		t.Logf("kept    %s", k)
	}
	if err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	return rep
}

// foreignState is what of the node is not podnet's: it must not change.
func foreignState(t *testing.T, ns *netnstest.NS) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"ip", "-o", "route", "show", "table", "all", "10.50.0.0/16"},
		{"ip", "-o", "route", "show", "table", "100"},
		{"ip", "-o", "route", "show", "10.244.4.0/24"},
		{"ip", "-o", "-6", "route", "show", "fd00:50::/64"},
		{"ip", "-o", "-d", "link", "show", "keepme0"},
		{"ip", "-o", "-d", "link", "show", "br-foreign"},
		{"ip", "-o", "-d", "link", "show", "vx-foreign"},
		{"nft", "list", "table", "inet", "foreign"},
		{"nft", "list", "table", "ip", "podnet-other"},
	} {
		b.WriteString(ns.MustRun(t, args...))
	}
	return b.String()
}

func addForeign(t *testing.T, ns *netnstest.NS) {
	t.Helper()
	for _, args := range [][]string{
		{"ip", "link", "add", "keepme0", "type", "veth", "peer", "name", "keepme1"},
		{"ip", "link", "set", "keepme0", "up"},
		{"ip", "link", "add", "br-foreign", "type", "bridge"},
		{"ip", "link", "add", "vx-foreign", "type", "vxlan", "id", "42", "dstport", "4789", "dev", "eth1"},
		{"ip", "route", "add", "10.50.0.0/16", "via", "192.168.56.1", "dev", "eth1"},
		{"ip", "route", "add", "10.60.0.0/16", "dev", "keepme0", "proto", "static", "table", "100"},
		// Anyone's route to a pod subnet podnet does not route.
		{"ip", "route", "add", "10.244.4.0/24", "via", "192.168.56.1", "dev", "eth1", "proto", "boot"},
		{"ip", "-6", "route", "add", "fd00:50::/64", "dev", "keepme0"},
		{"nft", "add", "table", "inet", "foreign"},
		{"nft", "add", "chain", "inet", "foreign", "c", "{ type filter hook forward priority 0; }"},
		{"nft", "add", "table", "ip", "podnet-other"},
	} {
		ns.MustRun(t, args...)
	}
}

// podnetLeft lists what of podnet's the kernel and the files still hold.
func podnetLeft(t *testing.T, ns *netnstest.NS, files ...string) []string {
	t.Helper()
	var left []string
	for _, args := range [][]string{
		{"ip", "-o", "route", "show", "table", "all", "proto", "201"},
		{"ip", "-o", "-6", "route", "show", "table", "all", "proto", "201"},
	} {
		if out := strings.TrimSpace(ns.MustRun(t, args...)); out != "" {
			left = append(left, out)
		}
	}
	tables := ns.MustRun(t, "nft", "list", "tables")
	for _, tb := range []string{"table inet podnet-masq", "table ip podnet-proxy", "table ip6 podnet-proxy", "table inet podnet-policy"} {
		if strings.Contains(tables+"\n", tb+"\n") {
			left = append(left, tb)
		}
	}
	for _, dev := range []string{backend.VXLANDevice, netconf.DefaultBridge} {
		if _, err := ns.Run("ip", "link", "show", dev); err == nil {
			left = append(left, "device "+dev)
		}
	}
	for _, f := range files {
		if _, err := os.Lstat(f); err == nil {
			left = append(left, f)
		}
	}
	return left
}

func TestKernelCleanup(t *testing.T) {
	requireCleanupKernel(t)
	ctx := context.Background()
	node := cnitest.NewNode(t)
	ns := node.NS
	n := newCleanupNode(t, ns)
	confDir, binDir := filepath.Join(node.Dir, "net.d"), filepath.Join(node.Dir, "bin")
	for _, args := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p"}, // this kernel has no dummy module
		{"ip", "link", "set", "eth1p", "up"},
		{"ip", "addr", "add", "192.168.56.11/24", "dev", "eth1"},
		{"ip", "link", "set", "eth1", "up"},
	} {
		ns.MustRun(t, args...)
	}
	addForeign(t, ns)
	foreignBefore := foreignState(t, ns)

	// podnet's objects, by the code that makes them in podnetd.
	local := backend.Local{Node: "node-1", PodCIDR: netip.MustParsePrefix("10.244.1.0/24"), NodeIP: netip.MustParseAddr("192.168.56.11"), Link: "eth1"}
	remotes := []backend.Remote{
		{Node: "node-2", PodCIDR: netip.MustParsePrefix("10.244.2.0/24"), NodeIP: netip.MustParseAddr("192.168.56.12"), VTEPMAC: backend.VTEPMAC("node-2")},
		{Node: "node-3", PodCIDR: netip.MustParsePrefix("10.244.3.0/24"), NodeIP: netip.MustParseAddr("192.168.56.13"), VTEPMAC: backend.VTEPMAC("node-3")},
	}
	be, err := backend.New("vxlan")
	if err != nil {
		t.Fatal(err)
	}
	var facts backend.Facts
	err = ns.Do(func() error {
		if facts, err = be.Setup(local); err != nil {
			return err
		}
		if _, err := be.Sync(remotes); err != nil {
			return err
		}
		if err := masq.New(n.masqNFT).Sync(ctx, masq.Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
			NoMasquerade: []netip.Prefix{netip.MustParsePrefix("192.168.56.0/24")}}); err != nil {
			return err
		}
		svcs, slices := cleanupServices()
		st := proxy.Build(proxy.IPv4, proxy.Node{Name: "node-1", IPs: []netip.Addr{local.NodeIP},
			ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, PodCIDRs: []netip.Prefix{local.PodCIDR}}, svcs, slices)
		if err := proxy.New(n.proxyNFT, proxy.Config{Family: proxy.IPv4}).Sync(ctx, st); err != nil {
			return err
		}
		return policy.NewEnforcer(n.policyNFT, policy.Config{}).Sync(ctx, nil)
	})
	if err != nil {
		t.Fatalf("set up podnet's dataplane: %v", err)
	}
	// A route of podnet's in another table and one in IPv6: the cleanup
	// takes protocol 201 from every table and family.
	ns.MustRun(t, "ip", "route", "add", "10.99.0.0/16", "dev", "eth1", "proto", "201", "table", "200")
	ns.MustRun(t, "ip", "-6", "route", "add", "fd00:99::/64", "dev", "eth1", "proto", "201")

	conf := netconf.Conflist(local.PodCIDR.String(), facts.MTU, node.DataDir, "")
	if _, err := netconf.WriteConflist(confDir, conf); err != nil {
		t.Fatal(err)
	}
	foreignConf := filepath.Join(confDir, "05-foreign.conflist")
	if err := os.WriteFile(foreignConf, []byte(`{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	plugin, err := os.ReadFile(filepath.Join(cnitest.PluginDir(t), "podnet"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"podnet": plugin, "portmap": []byte("someone else's"), InstallTempPrefix + "1": []byte("half")} {
		if err := os.WriteFile(filepath.Join(binDir, name), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	list, err := libcni.ConfListFromBytes(conf)
	if err != nil {
		t.Fatal(err)
	}
	pod := cnitest.NewPod(t, "pod")
	if _, err := node.Add(list, pod.RT()); err != nil {
		t.Fatalf("ADD of a pod with podnetd's conflist: %v", err)
	}
	t.Logf("node before the cleanup:\n%s%s%s", ns.MustRun(t, "ip", "-o", "route", "show", "table", "all", "proto", "201"),
		ns.MustRun(t, "ip", "-o", "link", "show"), ns.MustRun(t, "nft", "list", "tables"))
	store := filepath.Join(node.DataDir, "podnet")
	// DataDir too: once the conflist is gone, the default would be the
	// host's own store.
	cfg := CleanupConfig{CNIConfDir: confDir, CNIBinDir: binDir, RemoveCNIBin: true, DataDir: node.DataDir}

	// 1. The pod is still attached: everything of the node's goes; the
	// bridge, the store and the plugin stay for it, and it still reaches
	// its gateway.
	rep := n.cleanup(t, cfg)
	left := podnetLeft(t, ns, filepath.Join(confDir, netconf.ConflistName))
	if strings.Join(left, "|") != "device cni0" {
		t.Errorf("with a pod attached, left %q; want only the bridge", left)
	}
	if len(rep.Kept) != 3 || !strings.Contains(rep.Kept[0], "bridge cni0: 1 ports still attached") ||
		!strings.Contains(rep.Kept[1], "reservation store "+store+": 1 live reservations") || !strings.Contains(rep.Kept[1], "pod default/pod") ||
		!strings.Contains(rep.Kept[2], "pods still attached here") {
		t.Errorf("kept %q", rep.Kept)
	}
	if want := []string{"CNI config", "nftables table inet podnet-masq", "nftables table ip podnet-proxy", "nftables table inet podnet-policy",
		"route 10.244.2.0/24 via 10.244.2.0 dev podnet.1 proto 201 table main", "route 10.244.3.0/24", "route 10.99.0.0/16 dev eth1 proto 201 table 200",
		"route fd00:99::/64", "VXLAN device podnet.1"}; !reportHas(rep.Removed, want) {
		t.Errorf("removed %q; want %q", rep.Removed, want)
	}
	for _, f := range []string{store, filepath.Join(binDir, "podnet"), foreignConf} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("%s gone with a pod attached: %v", f, err)
		}
	}
	if out, err := pod.NS.Run("ping", "-c1", "-W2", "10.244.1.1"); err != nil {
		t.Errorf("the pod lost its gateway: %v %s", err, out)
	}

	// 2. The pod deleted (its DEL runs with the conflist the runtime
	// loaded): the bridge, the store and the plugin go.
	if err := node.Del(list, pod.RT()); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	rep = n.cleanup(t, cfg)
	if left := podnetLeft(t, ns, store, node.DataDir, filepath.Join(binDir, "podnet"), filepath.Join(binDir, InstallTempPrefix+"1")); len(left) != 0 {
		t.Errorf("after the pod's DEL, left %q", left)
	}
	if len(rep.Kept) != 0 || !reportHas(rep.Removed, []string{"bridge cni0 (no ports left)", "reservation store " + store, "CNI plugin "}) {
		t.Errorf("second run: %+v", rep)
	}

	// 3. Nothing left to do.
	if rep = n.cleanup(t, cfg); len(rep.Removed)+len(rep.Kept) != 0 {
		t.Errorf("third run: %+v", rep)
	}
	if after := foreignState(t, ns); after != foreignBefore {
		t.Errorf("foreign state changed:\nbefore:\n%s\nafter:\n%s", foreignBefore, after)
	}
	for _, f := range []string{foreignConf, filepath.Join(binDir, "portmap")} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("foreign file %s: %v", f, err)
		}
	}
}

// Devices that only look like podnet's are kept, and said why.
func TestKernelCleanupKeepsLookalikes(t *testing.T) {
	requireCleanupKernel(t)
	ns := netnstest.New(t, "cln")
	n := newCleanupNode(t, ns)
	for _, args := range [][]string{
		{"ip", "link", "add", backend.VXLANDevice, "type", "veth", "peer", "name", "podnet.1p"},
		{"ip", "link", "add", "cni0", "type", "bridge"}, // no podnet MAC
		{"ip", "addr", "add", "10.244.1.1/24", "dev", "cni0"},
	} {
		ns.MustRun(t, args...)
	}
	dir := t.TempDir()
	rep := n.cleanup(t, CleanupConfig{CNIConfDir: dir, CNIBinDir: dir, DataDir: filepath.Join(dir, "data")})
	if len(rep.Removed) != 0 || len(rep.Kept) != 2 || !strings.Contains(rep.Kept[0], "not the VTEP podnet makes") ||
		!strings.Contains(rep.Kept[1], "is not the one podnet's plugin gives it") {
		t.Errorf("%+v", rep)
	}
	if left := podnetLeft(t, ns); len(left) != 2 {
		t.Errorf("left %q; want both lookalikes", left)
	}
}

// reportHas says whether every want starts one of the lines.
func reportHas(lines, want []string) bool {
	for _, w := range want {
		found := false
		for _, l := range lines {
			found = found || strings.HasPrefix(l, w)
		}
		if !found {
			return false
		}
	}
	return true
}

// cleanupServices is one ClusterIP Service with an endpoint on this node.
func cleanupServices() ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
	name, proto, port, nodeName := "http", corev1.ProtocolTCP, int32(8080), "node-1"
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.5"}, NodeName: &nodeName}},
	}
	return []*corev1.Service{svc}, []*discoveryv1.EndpointSlice{slice}
}

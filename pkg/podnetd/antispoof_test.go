package podnetd_test

// Anti-spoofing inside the agent, on knftables Fakes: the bridge table
// follows this node's pods, an announcement is answered only once the
// pod's entry is in, and the VXLAN filter follows the Nodes.

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/knftables"

	"github.com/podnet/podnet/pkg/announce"
	"github.com/podnet/podnet/pkg/antispoof"
	"github.com/podnet/podnet/pkg/podnetd"
)

type fakePorts struct {
	mu    sync.Mutex
	ports []antispoof.Port
}

func (f *fakePorts) list() ([]antispoof.Port, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.ports), nil
}

func (f *fakePorts) set(ps ...antispoof.Port) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ports = ps
}

func port(name, ip string) antispoof.Port {
	a := netip.MustParseAddr(ip).As4()
	return antispoof.Port{Name: name, MAC: net.HardwareAddr{0x0a, 0x58, a[0], a[1], a[2], a[3]}, IPs: []netip.Addr{netip.MustParseAddr(ip)}}
}

func startSpoofAgent(t *testing.T, backendName string) (*harness, *lockedNFT, *lockedNFT, *fakePorts, string) {
	t.Helper()
	h := newHarness(t, node(selfName, "10.244.1.0/24", "192.168.56.11"),
		vtep(node("node-2", "10.244.2.0/24", "192.168.56.12"), "0a:5a:00:00:00:02"))
	bridge := &lockedNFT{Fake: knftables.NewFake(knftables.BridgeFamily, antispoof.TableName)}
	inet := &lockedNFT{Fake: knftables.NewFake(knftables.InetFamily, antispoof.TableName)}
	ports := &fakePorts{}
	ports.set(port("veth00000000001", "10.244.1.2"))
	socket := filepath.Join(t.TempDir(), "podnetd.sock")
	h.cfg.Backend, h.cfg.AntiSpoofing, h.cfg.AgentSocket = backendName, true, socket
	h.opts = append(h.opts, podnetd.WithSpoofNFTables(bridge, inet), podnetd.WithPodPorts(ports.list))
	h.start()
	h.ready()
	return h, bridge, inet, ports, socket
}

func TestAntiSpoofingFollowsThePodsAndTheAnnouncement(t *testing.T) {
	h, bridge, inet, ports, socket := startSpoofAgent(t, "vxlan")
	first := "veth00000000001 . 0a:58:0a:f4:01:02 . 10.244.1.2"
	eventually(t, "the first pod's entry", func() (bool, string) {
		got := bridge.keys("set", "pods")
		return slices.Equal(got, []string{first}), strings.Join(got, ", ")
	})
	eventually(t, "VXLAN accepted from node-2 only", func() (bool, string) {
		got := inet.keys("set", "nodes")
		return slices.Equal(got, []string{"192.168.56.12"}), strings.Join(got, ", ")
	})

	// A new pod: when the answer comes, its entry is in.
	ports.set(port("veth00000000001", "10.244.1.2"), port("veth00000000002", "10.244.1.3"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := announce.Send(ctx, socket, announce.Pod{IPs: []string{"10.244.1.3"}, HostIf: "veth00000000002"}); err != nil {
		t.Fatal(err)
	}
	if got := bridge.keys("set", "pods"); !slices.Contains(got, "veth00000000002 . 0a:58:0a:f4:01:03 . 10.244.1.3") {
		t.Errorf("pods %v when the announcement was answered, want the new pod's entry", got)
	}
	// A pod gone: its entry goes with the next pass.
	ports.set(port("veth00000000002", "10.244.1.3"))
	eventually(t, "the deleted pod's entry removed", func() (bool, string) {
		got := bridge.keys("set", "pods")
		return len(got) == 1 && !slices.Contains(got, first), strings.Join(got, ", ")
	})
	// A node gone: its VXLAN is no longer accepted.
	if err := h.client.CoreV1().Nodes().Delete(context.Background(), "node-2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "node-2's VXLAN refused", func() (bool, string) {
		got := inet.keys("set", "nodes")
		return len(got) == 0, strings.Join(got, ", ")
	})
	if v := metric(t, h.reg, "podnet_spoof_drops_total", "kind", "ipv4"); v != 0 {
		t.Errorf("podnet_spoof_drops_total{kind=ipv4} = %v, want 0", v)
	}
	if err := h.agent.Healthy(); err != nil {
		t.Errorf("Healthy: %v", err)
	}
}

func TestAntiSpoofingWithHostGWHasNoVXLANFilter(t *testing.T) {
	_, bridge, inet, _, _ := startSpoofAgent(t, "host-gw")
	eventually(t, "the pod's entry", func() (bool, string) {
		return len(bridge.keys("set", "pods")) == 1, ""
	})
	consistently(t, 300*time.Millisecond, "no VXLAN filter", func() (bool, string) {
		_, err := inet.ListAll(context.Background())
		return knftables.IsNotFound(err), ""
	})
}

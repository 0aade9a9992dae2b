package podnetd

import (
	"net/netip"
	"testing"

	"github.com/podnet/podnet/pkg/ipam"
	"github.com/podnet/podnet/pkg/wire"
)

// A pod's entry pairs its host veth (named from container and interface)
// with its reservations and the MAC the plugin gave it; a reservation
// without a veth (an ADD in progress, or a leak) and a veth without a
// reservation get none.
func TestPortsPairVethsWithReservations(t *testing.T) {
	va, vb := wire.HostName("ca", "eth0"), wire.HostName("cb", "eth0")
	veths := map[string]bool{va: true, vb: true, "vethnoreserved": true}
	rs := []ipam.Reservation{
		{IP: netip.MustParseAddr("10.244.1.2"), ContainerID: "ca", IfName: "eth0", PodNamespace: "default", PodName: "a"},
		{IP: netip.MustParseAddr("10.244.1.3"), ContainerID: "cb", IfName: "eth0"},
		{IP: netip.MustParseAddr("10.244.1.4"), ContainerID: "cc", IfName: "eth0"}, // no veth
		{IP: netip.MustParseAddr("fd00::4"), ContainerID: "cb", IfName: "eth0"},    // IPv6: not guarded here
	}
	got := portsOf(veths, rs)
	if len(got) != 2 {
		t.Fatalf("ports %+v, want a's and b's", got)
	}
	byName := map[string]int{got[0].Name: 0, got[1].Name: 1}
	a, b := got[byName[va]], got[byName[vb]]
	if a.Pod != "default/a" || a.MAC.String() != "0a:58:0a:f4:01:02" || len(a.IPs) != 1 || a.IPs[0].String() != "10.244.1.2" {
		t.Errorf("a's port %+v", a)
	}
	if b.Pod != "" || b.MAC.String() != "0a:58:0a:f4:01:03" || len(b.IPs) != 1 {
		t.Errorf("b's port %+v", b)
	}
}

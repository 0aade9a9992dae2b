package wire

import (
	"net/netip"
	"testing"
)

func TestHostNameIsAValidStableInterfaceName(t *testing.T) {
	a := HostName("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "eth0")
	if len(a) > 15 || a[:4] != "veth" {
		t.Fatalf("HostName %q: want veth… of at most 15 characters (IFNAMSIZ-1)", a)
	}
	if HostName("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "eth0") != a {
		t.Fatal("HostName is not deterministic")
	}
	if HostName("c1", "eth0") == HostName("c1", "net1") || HostName("c1", "eth0") == HostName("c2", "eth0") {
		t.Fatal("different attachments share a host name")
	}
}

func TestAliasRoundTrip(t *testing.T) {
	hl, ok := ParseAlias(Alias("podnet", "abc123", "eth0"))
	if !ok || hl.Network != "podnet" || hl.ContainerID != "abc123" || hl.IfName != "eth0" {
		t.Fatalf("round trip: %+v %v", hl, ok)
	}
	for _, other := range []string{"", "calico/x/y/z", "podnet/", "podnet/a/b", "podnet/a//c", "podnet/a/b/c/d"} {
		if _, ok := ParseAlias(other); ok {
			t.Errorf("ParseAlias(%q) claims someone else's alias", other)
		}
	}
}

func TestGroupIsPodnetsAndPerNetwork(t *testing.T) {
	g := Group("podnet")
	if g>>16 != 0x706e {
		t.Fatalf("group %#x lacks podnet's 0x706e prefix", g)
	}
	if Group("podnet") != g || Group("other") == g {
		t.Fatal("groups are not stable per network")
	}
}

func TestMACsAreLocalUnicastAndFollowTheAddress(t *testing.T) {
	gw := GatewayMAC([]netip.Prefix{netip.MustParsePrefix("10.244.1.1/24")})
	if gw.String() != "0a:58:0a:f4:01:01" {
		t.Fatalf("gateway MAC %s", gw)
	}
	pod := PodMAC([]netip.Prefix{netip.MustParsePrefix("fd00::7/64"), netip.MustParsePrefix("10.244.1.7/24")})
	if pod.String() != "0a:58:0a:f4:01:07" {
		t.Fatalf("pod MAC %s: want the IPv4 address's", pod)
	}
	v6 := PodMAC([]netip.Prefix{netip.MustParsePrefix("fd00::a:b/64")})
	if v6.String() != "0a:58:00:0a:00:0b" {
		t.Fatalf("IPv6-only pod MAC %s", v6)
	}
	for _, m := range [][]byte{gw, pod, v6, hostMAC("veth0")} {
		if m[0]&1 != 0 || m[0]&2 == 0 {
			t.Errorf("MAC %x is not locally administered unicast", m)
		}
	}
}

package ipam

import (
	"errors"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func mustParse(t *testing.T, confs [][]RangeConf) []RangeSet {
	t.Helper()
	sets, err := ParseRangeSets(confs)
	if err != nil {
		t.Fatalf("ParseRangeSets(%+v): %v", confs, err)
	}
	return sets
}

func one(subnet string) [][]RangeConf { return [][]RangeConf{{{Subnet: subnet}}} }

func TestParseRangeSetsDefaultsIPv4(t *testing.T) {
	sets := mustParse(t, one("10.244.1.0/24"))
	if len(sets) != 1 || len(sets[0]) != 1 {
		t.Fatalf("got %d sets, want 1 set of 1 range: %+v", len(sets), sets)
	}
	r := sets[0][0]
	if want := netip.MustParseAddr("10.244.1.1"); r.Gateway != want {
		t.Errorf("default gateway = %s, want %s (the subnet's first address)", r.Gateway, want)
	}
	if r.Subnet != netip.MustParsePrefix("10.244.1.0/24") {
		t.Errorf("subnet = %s", r.Subnet)
	}
	for addr, want := range map[string]bool{
		"10.244.1.0":   false, // network
		"10.244.1.1":   false, // gateway
		"10.244.1.2":   true,
		"10.244.1.100": true,
		"10.244.1.254": true,
		"10.244.1.255": false, // broadcast
		"10.244.2.2":   false,
		"10.244.0.255": false,
	} {
		if got := r.Contains(netip.MustParseAddr(addr)); got != want {
			t.Errorf("Contains(%s) = %v, want %v", addr, got, want)
		}
	}
	if got := r.Size(); got != 253 {
		t.Errorf("Size() = %d, want 253 (256 minus network, gateway, broadcast)", got)
	}
	if got := sets[0].Family(); got != "IPv4" {
		t.Errorf("Family() = %q, want IPv4", got)
	}
}

func TestParseRangeSetsExplicitFields(t *testing.T) {
	sets := mustParse(t, [][]RangeConf{{{
		Subnet: "10.244.1.0/24", RangeStart: "10.244.1.10", RangeEnd: "10.244.1.20", Gateway: "10.244.1.254",
	}}})
	r := sets[0][0]
	if r.Gateway != netip.MustParseAddr("10.244.1.254") {
		t.Errorf("gateway = %s, want 10.244.1.254", r.Gateway)
	}
	for addr, want := range map[string]bool{
		"10.244.1.9": false, "10.244.1.10": true, "10.244.1.20": true, "10.244.1.21": false,
		"10.244.1.254": false, "10.244.1.1": false,
	} {
		if got := r.Contains(netip.MustParseAddr(addr)); got != want {
			t.Errorf("Contains(%s) = %v, want %v", addr, got, want)
		}
	}
	if got := r.Size(); got != 11 {
		t.Errorf("Size() = %d, want 11", got)
	}

	// A gateway inside the range is never handed out and not counted.
	sets = mustParse(t, [][]RangeConf{{{Subnet: "10.244.1.0/24", RangeStart: "10.244.1.10", RangeEnd: "10.244.1.20", Gateway: "10.244.1.15"}}})
	if r := sets[0][0]; r.Contains(netip.MustParseAddr("10.244.1.15")) || r.Size() != 10 {
		t.Errorf("gateway inside range: Contains(gw)=%v Size=%d, want false, 10", r.Contains(r.Gateway), r.Size())
	}
}

func TestParseRangeSetsIPv6(t *testing.T) {
	sets := mustParse(t, [][]RangeConf{
		{{Subnet: "10.244.1.0/24"}},
		{{Subnet: "fd00:10:244:1::/64"}},
	})
	if len(sets) != 2 {
		t.Fatalf("got %d sets, want 2", len(sets))
	}
	if sets[0].Family() != "IPv4" || sets[1].Family() != "IPv6" {
		t.Errorf("families = %s, %s", sets[0].Family(), sets[1].Family())
	}
	r := sets[1][0]
	if want := netip.MustParseAddr("fd00:10:244:1::1"); r.Gateway != want {
		t.Errorf("IPv6 default gateway = %s, want %s", r.Gateway, want)
	}
	for addr, want := range map[string]bool{
		"fd00:10:244:1::":                   false, // subnet-router anycast
		"fd00:10:244:1::1":                  false, // gateway
		"fd00:10:244:1::2":                  true,
		"fd00:10:244:1:ffff:ffff:ffff:ffff": true, // IPv6 has no broadcast
		"fd00:10:244:2::2":                  false,
		"10.244.1.2":                        false,
		"fd00:10:244:1:ffff:ffff:ffff:fffe": true,
	} {
		if got := r.Contains(netip.MustParseAddr(addr)); got != want {
			t.Errorf("Contains(%s) = %v, want %v", addr, got, want)
		}
	}
	if got, want := r.Size(), uint64(math.MaxUint64-1); got != want {
		t.Errorf("Size() of a /64 = %d, want %d (2^64 minus anycast and gateway)", got, want)
	}

	// Several ranges of one family in one set are fine when disjoint.
	sets = mustParse(t, [][]RangeConf{{
		{Subnet: "fd00:1::/120"},
		{Subnet: "fd00:2::/120", RangeStart: "fd00:2::10", RangeEnd: "fd00:2::20"},
	}})
	if len(sets) != 1 || len(sets[0]) != 2 {
		t.Errorf("got %+v, want one set of two ranges", sets)
	}
}

func TestRangeSizeHugeIPv6DoesNotHang(t *testing.T) {
	sets := mustParse(t, one("fd00::/8"))
	done := make(chan uint64, 1)
	go func() { done <- sets[0][0].Size() }()
	select {
	case got := <-done:
		if got != math.MaxUint64 {
			t.Errorf("Size() of a /8 = %d, want saturation at MaxUint64", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Size() of a huge IPv6 range did not return")
	}
}

func TestParseRangeSetsErrors(t *testing.T) {
	v4 := func(rc RangeConf) [][]RangeConf { return [][]RangeConf{{rc}} }
	cases := []struct {
		name  string
		confs [][]RangeConf
		msg   string // substring of the message
		hint  string // substring of the hint
	}{
		{"no sets", nil, "no address ranges", "ranges"},
		{"no sets, empty list", [][]RangeConf{}, "no address ranges", "ranges"},
		{"empty set", [][]RangeConf{{}}, "empty", ""},
		{"empty second set", [][]RangeConf{{{Subnet: "10.244.1.0/24"}}, {}}, "range set 1 is empty", ""},
		{"no subnet", v4(RangeConf{}), "no subnet", "subnet"},
		{"not a CIDR", v4(RangeConf{Subnet: "banana"}), `"banana"`, "CIDR"},
		{"prefix too long", v4(RangeConf{Subnet: "10.244.1.0/33"}), `"10.244.1.0/33"`, "CIDR"},
		{"address without length", v4(RangeConf{Subnet: "10.244.1.0"}), `"10.244.1.0"`, "CIDR"},
		{"host bits set", v4(RangeConf{Subnet: "10.244.1.5/24"}), "host bits", `did you mean "10.244.1.0/24"`},
		{"IPv6 host bits set", v4(RangeConf{Subnet: "fd00::5/64"}), "host bits", `did you mean "fd00::/64"`},
		{"/31 too small", v4(RangeConf{Subnet: "10.244.1.0/31"}), "too small", ""},
		{"/32 too small", v4(RangeConf{Subnet: "10.244.1.7/32"}), "too small", ""},
		{"/128 too small", v4(RangeConf{Subnet: "fd00::1/128"}), "too small", ""},
		{"/127 holds only the gateway", v4(RangeConf{Subnet: "fd00::/127"}), "no address but the gateway", "widen"},
		{"range is only the gateway", v4(RangeConf{Subnet: "10.244.1.0/24", RangeStart: "10.244.1.1", RangeEnd: "10.244.1.1"}), "no address but the gateway", ""},
		{"gateway outside subnet", v4(RangeConf{Subnet: "10.244.1.0/24", Gateway: "10.244.2.1"}), "gateway 10.244.2.1", "10.244.1.1"},
		{"gateway is network address", v4(RangeConf{Subnet: "10.244.1.0/24", Gateway: "10.244.1.0"}), "gateway", ""},
		{"gateway is broadcast", v4(RangeConf{Subnet: "10.244.1.0/24", Gateway: "10.244.1.255"}), "gateway", "10.244.1.254"},
		{"gateway not an IP", v4(RangeConf{Subnet: "10.244.1.0/24", Gateway: "router"}), `"router"`, ""},
		{"rangeStart outside subnet", v4(RangeConf{Subnet: "10.244.1.0/24", RangeStart: "10.244.0.10"}), "rangeStart 10.244.0.10", ""},
		{"rangeEnd outside subnet", v4(RangeConf{Subnet: "10.244.1.0/24", RangeEnd: "10.244.2.10"}), "rangeEnd 10.244.2.10", ""},
		{"rangeEnd is broadcast", v4(RangeConf{Subnet: "10.244.1.0/24", RangeEnd: "10.244.1.255"}), "rangeEnd", ""},
		{"rangeStart of other family", v4(RangeConf{Subnet: "10.244.1.0/24", RangeStart: "fd00::2"}), "rangeStart", ""},
		{"start after end", v4(RangeConf{Subnet: "10.244.1.0/24", RangeStart: "10.244.1.20", RangeEnd: "10.244.1.10"}), "after rangeEnd", "swap"},
		{"mixed families in one set", [][]RangeConf{{{Subnet: "10.244.1.0/24"}, {Subnet: "fd00::/64"}}}, "mixes IPv4", "separate"},
		{"two IPv4 sets", [][]RangeConf{{{Subnet: "10.244.1.0/24"}}, {{Subnet: "10.244.2.0/24"}}}, "both IPv4", "one range set per address family"},
		{"two IPv6 sets", [][]RangeConf{{{Subnet: "fd00:1::/64"}}, {{Subnet: "10.244.2.0/24"}}, {{Subnet: "fd00:2::/64"}}}, "both IPv6", ""},
		{"overlapping ranges", [][]RangeConf{{
			{Subnet: "10.244.1.0/24", RangeStart: "10.244.1.10", RangeEnd: "10.244.1.20"},
			{Subnet: "10.244.1.0/24", RangeStart: "10.244.1.20", RangeEnd: "10.244.1.30"},
		}}, "overlap", "disjoint"},
		{"same subnet twice", [][]RangeConf{{{Subnet: "10.244.1.0/24"}, {Subnet: "10.244.1.0/24"}}}, "overlap", ""},
		{"nested subnets", [][]RangeConf{{{Subnet: "10.244.0.0/16"}, {Subnet: "10.244.1.0/24"}}}, "overlap", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sets, err := ParseRangeSets(tc.confs)
			if err == nil {
				t.Fatalf("ParseRangeSets accepted %+v: %+v", tc.confs, sets)
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v (%T) is not a *ConfigError", err, err)
			}
			if !strings.Contains(ce.Msg, tc.msg) {
				t.Errorf("message %q does not contain %q", ce.Msg, tc.msg)
			}
			if ce.Hint == "" {
				t.Errorf("error %q has no hint", ce.Msg)
			}
			if !strings.Contains(ce.Hint, tc.hint) {
				t.Errorf("hint %q does not contain %q", ce.Hint, tc.hint)
			}
		})
	}
}

func TestParseRangeSetsAcceptsDisjointRangesOfOneSubnet(t *testing.T) {
	sets := mustParse(t, [][]RangeConf{{
		{Subnet: "10.244.1.0/24", RangeStart: "10.244.1.10", RangeEnd: "10.244.1.19"},
		{Subnet: "10.244.1.0/24", RangeStart: "10.244.1.20", RangeEnd: "10.244.1.30"},
	}})
	if len(sets[0]) != 2 {
		t.Fatalf("got %+v", sets)
	}
}

func TestParseReserved(t *testing.T) {
	got, err := ParseReserved([]string{"10.244.1.5", "10.244.1.240/28", "10.244.1.7/24", "fd00::1", "fd00:1::/64"})
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{
		netip.MustParsePrefix("10.244.1.5/32"),
		netip.MustParsePrefix("10.244.1.240/28"),
		netip.MustParsePrefix("10.244.1.0/24"), // masked
		netip.MustParsePrefix("fd00::1/128"),
		netip.MustParsePrefix("fd00:1::/64"),
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d = %s, want %s", i, got[i], want[i])
		}
	}
	if got, err := ParseReserved(nil); err != nil || len(got) != 0 {
		t.Errorf("ParseReserved(nil) = %v, %v", got, err)
	}
	for _, bad := range []string{"banana", "10.244.1.0/33", "10.244.1.256", ""} {
		_, err := ParseReserved([]string{bad})
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Hint == "" {
			t.Errorf("ParseReserved(%q) = %v, want a *ConfigError with a hint", bad, err)
		}
	}
}

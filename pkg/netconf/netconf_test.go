package netconf

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

const minimal = `{"cniVersion": "1.1.0", "name": "podnet", "type": "podnet",
	"ipam": {"ranges": [[{"subnet": "10.244.1.0/24"}]]}}`

func mustParse(t *testing.T, s string) *Conf {
	t.Helper()
	c, err := Parse([]byte(s))
	if err != nil {
		t.Fatalf("Parse(%s): %v", s, err)
	}
	return c
}

// parseErr parses s and returns its *Error, failing the test when Parse
// succeeds or returns another kind of error.
func parseErr(t *testing.T, s string) *Error {
	t.Helper()
	c, err := Parse([]byte(s))
	if err == nil {
		t.Fatalf("Parse accepted %s: %+v", s, c)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("Parse(%s) error %v is %T, not *netconf.Error", s, err, err)
	}
	return e
}

func TestParseMinimalDefaults(t *testing.T) {
	c := mustParse(t, minimal)
	if c.CNIVersion != "1.1.0" || c.Name != "podnet" || c.Type != "podnet" {
		t.Errorf("header = %q %q %q", c.CNIVersion, c.Name, c.Type)
	}
	if c.Bridge != "cni0" {
		t.Errorf("Bridge = %q, want cni0", c.Bridge)
	}
	if c.MTU != 1500 {
		t.Errorf("MTU = %d, want 1500", c.MTU)
	}
	if !c.Hairpin() {
		t.Error("hairpin mode is off by default")
	}
	if !c.DefaultGateway() {
		t.Error("default gateway is off by default")
	}
	if c.IPAM.Type != "" || c.IPAM.Builtin == nil {
		t.Fatalf("IPAM = %+v, want the built-in IPAM", c.IPAM)
	}
	b := c.IPAM.Builtin
	if len(b.Sets) != 1 || len(b.Sets[0]) != 1 {
		t.Fatalf("range sets = %+v", b.Sets)
	}
	r := b.Sets[0][0]
	if r.Subnet != netip.MustParsePrefix("10.244.1.0/24") || r.Gateway != netip.MustParseAddr("10.244.1.1") {
		t.Errorf("range = %+v", r)
	}
	if len(b.Reserved) != 0 || len(b.Routes) != 0 || b.DataDir != "" {
		t.Errorf("builtin = %+v, want no reserved, routes or dataDir", b)
	}
	if c.RawPrevResult != nil || c.GCValid() != nil {
		t.Errorf("prevResult %v, GC list %v; want none", c.RawPrevResult, c.GCValid())
	}
}

func TestParseFullConfig(t *testing.T) {
	c := mustParse(t, `{
		"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "podnet",
		"bridge": "podbr-1.x_y", "mtu": 1450, "hairpinMode": false, "isDefaultGateway": false,
		"capabilities": {"portMappings": true},
		"dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]},
		"ipam": {
			"ranges": [[{"subnet": "10.244.1.0/24", "rangeStart": "10.244.1.10", "rangeEnd": "10.244.1.200", "gateway": "10.244.1.254"}],
			           [{"subnet": "fd00:10:244:1::/64"}]],
			"routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.96.0.0/12", "gw": "10.244.1.254"}],
			"dataDir": "/tmp/podnet-ipam",
			"reserved": ["10.244.1.100", "10.244.1.128/28"]
		},
		"runtimeConfig": {"portMappings": []},
		"args": {"cni": {}}
	}`)
	if c.Bridge != "podbr-1.x_y" || c.MTU != 1450 || c.Hairpin() || c.DefaultGateway() {
		t.Errorf("bridge %q mtu %d hairpin %v defaultGW %v", c.Bridge, c.MTU, c.Hairpin(), c.DefaultGateway())
	}
	if len(c.DNS.Nameservers) != 1 || c.DNS.Nameservers[0] != "10.96.0.10" {
		t.Errorf("DNS = %+v", c.DNS)
	}
	b := c.IPAM.Builtin
	if b == nil {
		t.Fatal("no built-in IPAM")
	}
	if len(b.Sets) != 2 || b.Sets[0].Family() != "IPv4" || b.Sets[1].Family() != "IPv6" {
		t.Errorf("sets = %+v", b.Sets)
	}
	if r := b.Sets[0][0]; r.Gateway != netip.MustParseAddr("10.244.1.254") || r.Contains(netip.MustParseAddr("10.244.1.201")) {
		t.Errorf("IPv4 range = %+v", r)
	}
	if len(b.Routes) != 2 || b.Routes[1].GW.String() != "10.244.1.254" {
		t.Errorf("routes = %+v", b.Routes)
	}
	if b.DataDir != "/tmp/podnet-ipam" {
		t.Errorf("dataDir = %q", b.DataDir)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.244.1.100/32"), netip.MustParsePrefix("10.244.1.128/28")}
	if len(b.Reserved) != 2 || b.Reserved[0] != want[0] || b.Reserved[1] != want[1] {
		t.Errorf("reserved = %v, want %v", b.Reserved, want)
	}
}

func TestParseAllowsTrailingWhitespace(t *testing.T) {
	mustParse(t, minimal+" \n\t\n")
}

func TestParseExplicitTrue(t *testing.T) {
	c := mustParse(t, `{"cniVersion": "1.1.0", "name": "n", "type": "podnet", "hairpinMode": true, "isDefaultGateway": true,
		"ipam": {"ranges": [[{"subnet": "10.244.1.0/24"}]]}}`)
	if !c.Hairpin() || !c.DefaultGateway() {
		t.Errorf("hairpin %v, defaultGW %v; want both on", c.Hairpin(), c.DefaultGateway())
	}
}

func TestParseLegacySubnet(t *testing.T) {
	c := mustParse(t, `{"cniVersion": "0.3.1", "name": "n", "type": "podnet",
		"ipam": {"subnet": "10.244.3.0/24", "rangeStart": "10.244.3.50", "rangeEnd": "10.244.3.60", "gateway": "10.244.3.254"}}`)
	b := c.IPAM.Builtin
	if b == nil || len(b.Sets) != 1 || len(b.Sets[0]) != 1 {
		t.Fatalf("IPAM = %+v", c.IPAM)
	}
	r := b.Sets[0][0]
	if r.Subnet != netip.MustParsePrefix("10.244.3.0/24") || r.Gateway != netip.MustParseAddr("10.244.3.254") || r.Size() != 11 {
		t.Errorf("range = %+v (size %d), want 10.244.3.50-60 via .254", r, r.Size())
	}

	e := parseErr(t, `{"cniVersion": "1.1.0", "name": "n", "type": "podnet",
		"ipam": {"subnet": "10.244.3.0/24", "ranges": [[{"subnet": "10.244.1.0/24"}]]}}`)
	if e.Code != types.ErrInvalidNetworkConfig || e.Hint == "" {
		t.Errorf("subnet and ranges together: %+v, want code 7 with a hint", e)
	}
}

func TestParseDelegatedIPAM(t *testing.T) {
	// The delegate owns its section: podnet does not check the rest.
	for _, ipam := range []string{
		`{"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]]}`,
		`{"type": "host-local", "subnet": "banana", "whatever": {"deep": [1, 2]}, "dataDir": 7}`,
		`{"type": "dhcp"}`,
	} {
		c := mustParse(t, `{"cniVersion": "1.1.0", "name": "n", "type": "podnet", "ipam": `+ipam+`}`)
		if c.IPAM.Builtin != nil {
			t.Errorf("%s: built-in IPAM configured: %+v", ipam, c.IPAM.Builtin)
		}
		if c.IPAM.Type == "" {
			t.Errorf("%s: IPAM type lost", ipam)
		}
		if !strings.Contains(string(c.RawIPAM), c.IPAM.Type) {
			t.Errorf("raw ipam section %s lost", c.RawIPAM)
		}
	}
}

func TestParseRoutes(t *testing.T) {
	c := mustParse(t, `{"cniVersion": "1.1.0", "name": "n", "type": "podnet",
		"ipam": {"ranges": [[{"subnet": "10.244.1.0/24"}]], "routes": [{"dst": "10.96.0.0/12"}]}}`)
	if r := c.IPAM.Builtin.Routes; len(r) != 1 || r[0].Dst.String() != "10.96.0.0/12" || r[0].GW != nil {
		t.Errorf("routes = %+v", r)
	}
	for _, routes := range []string{`[{"gw": "10.244.1.1"}]`, `[{}]`, `[null]`, `[{"dst": "0.0.0.0/0"}, {"gw": "10.244.1.1"}]`} {
		e := parseErr(t, `{"cniVersion": "1.1.0", "name": "n", "type": "podnet",
			"ipam": {"ranges": [[{"subnet": "10.244.1.0/24"}]], "routes": `+routes+`}}`)
		if e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, "dst") || e.Hint == "" {
			t.Errorf("routes %s: %+v, want code 7 naming dst, with a hint", routes, e)
		}
	}
}

func TestParseErrors(t *testing.T) {
	const ipamOK = `"ipam": {"ranges": [[{"subnet": "10.244.1.0/24"}]]}`
	cases := []struct {
		name   string
		conf   string
		code   uint
		inMsg  string // substring of the message
		inHint string // substring of the hint
	}{
		{"not JSON", `{"cniVersion": "1.1.0", "name": `, types.ErrDecodingFailure, "not valid JSON", "JSON"},
		{"empty input", ``, types.ErrDecodingFailure, "", ""},
		{"a JSON array", `[1, 2]`, types.ErrDecodingFailure, "", ""},
		{"garbage", `banana`, types.ErrDecodingFailure, "", ""},
		{"second object after the first", minimal + ` {"mtu": 9000}`, types.ErrDecodingFailure, "after", "one JSON object"},
		{"trailing garbage", minimal + `x`, types.ErrDecodingFailure, "", ""},
		{"mtu is a string", `{"name": "n", "mtu": "big", ` + ipamOK + `}`, types.ErrDecodingFailure, "mtu", ""},
		{"hairpinMode is a string", `{"name": "n", "hairpinMode": "yes", ` + ipamOK + `}`, types.ErrDecodingFailure, "hairpinMode", ""},
		{"ipam is a string", `{"name": "n", "ipam": "host-local"}`, types.ErrDecodingFailure, "", ""},
		{"ranges wrong shape", `{"name": "n", "ipam": {"ranges": [{"subnet": "10.244.1.0/24"}]}}`, types.ErrDecodingFailure, "ranges", ""},
		{"unknown top-level field", `{"name": "n", "mtuu": 1450, ` + ipamOK + `}`, types.ErrUnsupportedField, "mtuu", "mtu"},
		{"unknown ipam field", `{"name": "n", "ipam": {"ranges": [[{"subnet": "10.244.1.0/24"}]], "rangez": 1}}`, types.ErrUnsupportedField, "rangez", "reserved"},
		{"bridge name too long", `{"name": "n", "bridge": "a-very-long-bridge", ` + ipamOK + `}`, types.ErrInvalidNetworkConfig, "a-very-long-bridge", "15"},
		{"bridge name with slash", `{"name": "n", "bridge": "br/0", ` + ipamOK + `}`, types.ErrInvalidNetworkConfig, "br/0", ""},
		{"bridge name with space", `{"name": "n", "bridge": "br 0", ` + ipamOK + `}`, types.ErrInvalidNetworkConfig, "br 0", ""},
		{"bridge name with colon", `{"name": "n", "bridge": "br:0", ` + ipamOK + `}`, types.ErrInvalidNetworkConfig, "br:0", ""},
		{"bridge name dot", `{"name": "n", "bridge": ".", ` + ipamOK + `}`, types.ErrInvalidNetworkConfig, "", ""},
		{"bridge name dotdot", `{"name": "n", "bridge": "..", ` + ipamOK + `}`, types.ErrInvalidNetworkConfig, "", ""},
		{"mtu too small", `{"name": "n", "mtu": 67, ` + ipamOK + `}`, types.ErrInvalidNetworkConfig, "mtu 67", "68"},
		{"mtu negative", `{"name": "n", "mtu": -1, ` + ipamOK + `}`, types.ErrInvalidNetworkConfig, "mtu -1", ""},
		{"mtu too large", `{"name": "n", "mtu": 65536, ` + ipamOK + `}`, types.ErrInvalidNetworkConfig, "mtu 65536", "65535"},
		{"missing ipam", `{"name": "n"}`, types.ErrInvalidNetworkConfig, "ipam", "ranges"},
		{"null ipam", `{"name": "n", "ipam": null}`, types.ErrInvalidNetworkConfig, "ipam", "ranges"},
		{"empty ipam", `{"name": "n", "ipam": {}}`, types.ErrInvalidNetworkConfig, "no address ranges", "ranges"},
		{"bad subnet", `{"name": "n", "ipam": {"ranges": [[{"subnet": "banana"}]]}}`, types.ErrInvalidNetworkConfig, "banana", "CIDR"},
		{"subnet with host bits", `{"name": "n", "ipam": {"ranges": [[{"subnet": "10.244.1.5/24"}]]}}`, types.ErrInvalidNetworkConfig, "host bits", `did you mean "10.244.1.0/24"`},
		{"legacy subnet bad", `{"name": "n", "ipam": {"subnet": "10.244.1.0/33"}}`, types.ErrInvalidNetworkConfig, "10.244.1.0/33", ""},
		{"bad reserved", `{"name": "n", "ipam": {"ranges": [[{"subnet": "10.244.1.0/24"}]], "reserved": ["x"]}}`, types.ErrInvalidNetworkConfig, `"x"`, "CIDR"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := parseErr(t, tc.conf)
			if e.Code != tc.code {
				t.Errorf("code = %d (%s), want %d", e.Code, e.Msg, tc.code)
			}
			if !strings.Contains(e.Msg, tc.inMsg) {
				t.Errorf("message %q does not contain %q", e.Msg, tc.inMsg)
			}
			if e.Hint == "" {
				t.Errorf("error %q has no hint", e.Msg)
			}
			if !strings.Contains(e.Hint, tc.inHint) {
				t.Errorf("hint %q does not contain %q", e.Hint, tc.inHint)
			}
			if e.Error() != e.Msg {
				t.Errorf("Error() = %q, want the message %q", e.Error(), e.Msg)
			}
		})
	}
}

func TestParseUnknownFieldHintListsKnownFields(t *testing.T) {
	e := parseErr(t, `{"name": "n", "mtuu": 1450, "ipam": {"ranges": [[{"subnet": "10.244.1.0/24"}]]}}`)
	for _, f := range []string{"bridge", "mtu", "hairpinMode", "isDefaultGateway", "ipam", "prevResult", "cni.dev/valid-attachments"} {
		if !strings.Contains(e.Hint, f) {
			t.Errorf("hint %q does not list %q", e.Hint, f)
		}
	}
	e = parseErr(t, `{"name": "n", "ipam": {"ranges": [[{"subnet": "10.244.1.0/24"}]], "rangez": 1}}`)
	for _, f := range []string{"ranges", "subnet", "rangeStart", "rangeEnd", "gateway", "routes", "dataDir", "reserved"} {
		if !strings.Contains(e.Hint, f) {
			t.Errorf("ipam hint %q does not list %q", e.Hint, f)
		}
	}
}

func TestGCValid(t *testing.T) {
	base := `{"cniVersion": "1.1.0", "name": "n", "type": "podnet", "ipam": {"ranges": [[{"subnet": "10.244.1.0/24"}]]}`
	cases := []struct {
		name string
		conf string
		want []string // container IDs; nil means no list at all
	}{
		{"neither key", base + `}`, nil},
		{"valid-attachments", base + `, "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}`, []string{"a"}},
		{"legacy attachments", base + `, "cni.dev/attachments": [{"containerID": "b", "ifname": "eth0"}]}`, []string{"b"}},
		{"both: valid-attachments wins", base + `, "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}], "cni.dev/attachments": [{"containerID": "b", "ifname": "eth0"}]}`, []string{"a"}},
		{"empty valid list wins over legacy", base + `, "cni.dev/valid-attachments": [], "cni.dev/attachments": [{"containerID": "b", "ifname": "eth0"}]}`, []string{}},
		{"empty list", base + `, "cni.dev/valid-attachments": []}`, []string{}},
		{"empty legacy list", base + `, "cni.dev/attachments": []}`, []string{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := mustParse(t, tc.conf).GCValid()
			if tc.want == nil {
				if got != nil {
					t.Errorf("GCValid() = %v, want nil", got)
				}
				return
			}
			if got == nil {
				t.Fatalf("GCValid() = nil, want %v (an empty list means: release everything)", tc.want)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("GCValid() = %+v, want %v", got, tc.want)
			}
			for i, id := range tc.want {
				if got[i].ContainerID != id || got[i].IfName != "eth0" {
					t.Errorf("entry %d = %+v, want %s/eth0", i, got[i], id)
				}
			}
		})
	}
}

func TestParseArgs(t *testing.T) {
	cases := []struct {
		in      string
		want    PodArgs
		wantErr bool
	}{
		{"", PodArgs{}, false},
		{"K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=1234-5678",
			PodArgs{Namespace: "default", Name: "web-0", UID: "1234-5678"}, false},
		{"IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_NAME=coredns",
			PodArgs{Namespace: "kube-system", Name: "coredns"}, false},
		{"K8S_POD_NAME=a=b;", PodArgs{Name: "a=b"}, false},
		{";;K8S_POD_NAME=x;;", PodArgs{Name: "x"}, false},
		{"K8S_POD_NAME=", PodArgs{}, false},
		{"K8S_POD_NAMESPACE=default;garbage", PodArgs{}, true},
		{"justtext", PodArgs{}, true},
	}
	for _, tc := range cases {
		got, err := ParseArgs(tc.in)
		if tc.wantErr {
			if err == nil {
				t.Errorf("ParseArgs(%q) = %+v, want an error", tc.in, got)
			} else if !strings.Contains(err.Error(), "KEY=VALUE") {
				t.Errorf("ParseArgs(%q) error %q does not say what is expected", tc.in, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseArgs(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

package podnetd

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestOptionsFileSetsEveryKey(t *testing.T) {
	o := DefaultOptions()
	err := o.ApplyFile("config.yaml", []byte(`# every key
backend: host-gw
mtu: 1400
serviceProxy: false
network: true
networkPolicy: false
antiSpoofing: false
clusterCIDR: [10.244.0.0/16, 10.245.0.0/16]
nodePortAddresses: 192.168.56.0/24, 10.0.0.0/8
apiServer: https://192.168.56.10:6443
listen: 127.0.0.1:9966
cniConfDir: /etc/cni/other
podnetDataDir: /var/lib/cni/other
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := o.Config("node-1")
	if err != nil {
		t.Fatal(err)
	}
	want := Config{NodeName: "node-1", Backend: "host-gw", MTU: 1400, CNIConfDir: "/etc/cni/other", PodnetDataDir: "/var/lib/cni/other",
		ClusterCIDRs:      []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.245.0.0/16")},
		NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("192.168.56.0/24"), netip.MustParsePrefix("10.0.0.0/8")}}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("config:\n got %+v\nwant %+v", cfg, want)
	}
	if o.APIServer != "https://192.168.56.10:6443" || o.Listen != "127.0.0.1:9966" {
		t.Errorf("apiServer %q, listen %q", o.APIServer, o.Listen)
	}
}

func TestOptionsDefaults(t *testing.T) {
	for _, file := range []string{"", "# only a comment\n", "---\n"} {
		o := DefaultOptions()
		if err := o.ApplyFile("config.yaml", []byte(file)); err != nil {
			t.Fatalf("%q: %v", file, err)
		}
		cfg, err := o.Config("n")
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Backend != "vxlan" || cfg.MTU != 0 || !cfg.ServiceProxy || cfg.ProxyOnly || len(cfg.ClusterCIDRs) != 1 ||
			cfg.ClusterCIDRs[0].String() != "10.244.0.0/16" || cfg.NodePortAddresses != nil || cfg.CNIConfDir != "/etc/cni/net.d" {
			t.Errorf("%q: defaults changed: %+v", file, cfg)
		}
	}
}

func TestOptionsFlagWinsOverFile(t *testing.T) {
	o := DefaultOptions()
	o.Backend = "hybrid"
	o.SetFlag("backend")
	if err := o.ApplyFile("c.yaml", []byte("backend: host-gw\nmtu: 1300\n")); err != nil {
		t.Fatal(err)
	}
	if o.Backend != "hybrid" || o.MTU != 1300 {
		t.Errorf("backend %q (want the flag's hybrid), mtu %d (want the file's 1300)", o.Backend, o.MTU)
	}
	// The file's value is still checked, though the flag wins.
	o = DefaultOptions()
	o.SetFlag("mtu")
	if err := o.ApplyFile("c.yaml", []byte("mtu: lots\n")); err == nil {
		t.Error("a bad value behind a flag passed")
	}
}

// Every bad value is refused with the key (or flag), the line and what to
// give instead.
func TestOptionsErrors(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		want       []string
	}{
		{"unknown key", "backend: vxlan\nmtuu: 1400\n", []string{`line 2, key "mtuu": unknown key (did you mean "mtu"?)`, "the keys are backend, mtu"}},
		{"misspelt case", "serviceproxy: true\n", []string{`did you mean "serviceProxy"?`}},
		{"twice", "mtu: 1400\nmtu: 1300\n", []string{`line 2, key "mtu": given twice (first on line 1)`}},
		{"mtu text", "mtu: abc\n", []string{`line 1, key "mtu": want a whole number, got "abc"`}},
		{"mtu quoted", "mtu: \"1400\"\n", []string{`key "mtu": want a whole number, got "1400"`}},
		{"mtu range", "mtu: 70000\n", []string{`config c.yaml, line 1, key "mtu": 70000 is out of range`, "or 0 to derive it"}},
		{"bool", "serviceProxy: yes\n", []string{`key "serviceProxy": want true or false, got "yes"`}},
		{"backend", "backend: vxlam\n", []string{`config c.yaml, line 1, key "backend": "vxlam" is no backend: use vxlan, host-gw or hybrid`}},
		{"cidr", "clusterCIDR: 10.244.0.0/33\n", []string{`config c.yaml, line 1, key "clusterCIDR": "10.244.0.0/33": want a prefix`}},
		{"no cidr", "clusterCIDR: []\n", []string{`key "clusterCIDR"`, "give at least one pod network"}},
		{"cidr item", "clusterCIDR: [{a: b}]\n", []string{`key "clusterCIDR": item on line 1: want a prefix`}},
		{"nodeports", "nodePortAddresses: [192.168.56.1]\n", []string{`key "nodePortAddresses"`, `"192.168.56.1": want a prefix`}},
		{"nothing to run", "network: false\nserviceProxy: false\nnetworkPolicy: false\n", []string{"nothing to run"}},
		{"api server", "apiServer: 192.168.56.10\n", []string{`key "apiServer"`, "host:port"}},
		{"api server http", "apiServer: http://192.168.56.10:6443\n", []string{`key "apiServer"`, "https://host:port"}},
		{"listen", "listen: localhost\n", []string{`key "listen"`, "127.0.0.1:9965"}},
		{"relative dir", "cniConfDir: etc/cni\n", []string{`key "cniConfDir"`, "absolute directory"}},
		{"list", "- backend: vxlan\n", []string{"line 1: want a mapping of keys to values"}},
		{"not yaml", "backend: [vxlan\n", []string{"config c.yaml: not YAML"}},
		{"mapping value", "backend: {name: vxlan}\n", []string{`key "backend": want one value (a string), got a mapping`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultOptions()
			err := o.ApplyFile("c.yaml", []byte(tc.file))
			if err == nil {
				_, err = o.Config("n")
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\n lacks %q", err, w)
				}
			}
		})
	}
}

// Several bad keys are reported at once, so one edit fixes them all.
func TestOptionsAllErrorsAtOnce(t *testing.T) {
	o := DefaultOptions()
	if err := o.ApplyFile("c.yaml", []byte("backend: nope\nmtu: 10\n")); err != nil {
		t.Fatal(err)
	}
	_, err := o.Config("n")
	if err == nil || !strings.Contains(err.Error(), `"backend"`) || !strings.Contains(err.Error(), `"mtu"`) {
		t.Errorf("want both keys named, got %v", err)
	}
}

func TestOptionsFlagNamedInErrors(t *testing.T) {
	o := DefaultOptions()
	o.MTU = 12
	o.SetFlag("mtu")
	_, err := o.Config("n")
	if err == nil || !strings.HasPrefix(err.Error(), "--mtu: 12 is out of range") {
		t.Errorf("got %v", err)
	}
}

func TestOptionsProxyOnlyIgnoresBackend(t *testing.T) {
	o := DefaultOptions()
	if err := o.ApplyFile("c.yaml", []byte("network: false\nbackend: whatever\n")); err != nil {
		t.Fatal(err)
	}
	cfg, err := o.Config("n")
	if err != nil || !cfg.ProxyOnly || !cfg.ServiceProxy {
		t.Errorf("proxy only: %+v, %v", cfg, err)
	}
}

package kernel

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/podnet/podnet/internal/cnitest"
)

// TestBadInput runs the plugin as a runtime would, with one thing wrong at a
// time, and checks the CNI error (code, a message naming the problem, a
// hint) and that nothing was left behind.
func TestBadInput(t *testing.T) {
	n := cnitest.NewNode(t)
	pod := cnitest.NewPod(t, "bad")
	good := func(extra string) string {
		return fmt.Sprintf(`{"cniVersion":"1.1.0","name":"podnet",%s`, strings.TrimPrefix(n.PodnetConf(subnet, extra), "{"))
	}
	env := func(kv ...string) map[string]string {
		m := map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": pod.NS.Path,
			"CNI_IFNAME": "eth0", "CNI_PATH": strings.Join(n.Path, ":")}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(m, kv[i])
			} else {
				m[kv[i]] = kv[i+1]
			}
		}
		return m
	}
	withIPAM := func(ipam string) string {
		return fmt.Sprintf(`{"cniVersion":"1.1.0","name":"podnet","type":"podnet","ipam":%s}`, ipam)
	}
	cases := []struct {
		name  string
		env   map[string]string
		stdin string
		code  uint
		msg   string
	}{
		{"malformed JSON", env(), `{"cniVersion":"1.1.0",`, 6, ""},
		{"not an object", env(), `[1,2,3]`, 6, ""},
		{"wrong field type", env(), good(`"mtu":"big"`), 6, `"mtu"`},
		{"unknown field", env(), good(`"mtuu":1450`), 2, `unknown field "mtuu"`},
		{"unknown ipam field", env(), withIPAM(`{"ranges":[[{"subnet":"10.244.1.0/24"}]],"subent":"x"}`), 2, `unknown field "subent"`},
		{"unsupported version", env(), strings.Replace(good(""), `"1.1.0"`, `"9.9.9"`, 1), 1, "incompatible"},
		{"no network name", env(), `{"cniVersion":"1.1.0","type":"podnet","ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]]}}`, 7, "name"},
		{"missing CNI_COMMAND", env("CNI_COMMAND", ""), good(""), 4, "CNI_COMMAND"},
		{"unknown CNI_COMMAND", env("CNI_COMMAND", "PLUG"), good(""), 4, "PLUG"},
		{"missing CNI_NETNS", env("CNI_NETNS", ""), good(""), 4, "CNI_NETNS"},
		{"missing CNI_IFNAME", env("CNI_IFNAME", ""), good(""), 4, "CNI_IFNAME"},
		{"bad CNI_IFNAME", env("CNI_IFNAME", "this-name-is-far-too-long"), good(""), 4, "interface name"},
		{"bad CNI_CONTAINERID", env("CNI_CONTAINERID", "-bad/id"), good(""), 4, "container"},
		{"bad CNI_ARGS", env("CNI_ARGS", "K8S_POD_NAME"), good(""), 4, "KEY=VALUE"},
		{"netns does not exist", env("CNI_NETNS", "/var/run/netns/pntest-no-such-ns"), good(""), 3, "pntest-no-such-ns"},
		{"subnet not a subnet", env(), withIPAM(`{"ranges":[[{"subnet":"10.244.1.0/33"}]]}`), 7, "not a subnet"},
		{"subnet with host bits", env(), withIPAM(`{"ranges":[[{"subnet":"10.244.1.7/24"}]]}`), 7, "host bits"},
		{"gateway outside subnet", env(), withIPAM(`{"ranges":[[{"subnet":"10.244.1.0/24","gateway":"10.244.2.1"}]]}`), 7, "gateway"},
		{"no ipam", env(), `{"cniVersion":"1.1.0","name":"podnet","type":"podnet"}`, 7, "ipam"},
		{"bad mtu", env(), good(`"bridge":"cni0","mtu":12`), 7, "mtu"},
		{"bad bridge name", env(), good(`"bridge":"a/b"`), 7, "bridge"},
		{"ipam plugin missing", env(), withIPAM(`{"type":"no-such-ipam"}`), 0, "no-such-ipam"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, ok := n.Exec(t, c.env, c.stdin)
			if ok {
				t.Fatalf("plugin succeeded; want an error. stdout: %s", out)
			}
			var e struct {
				CNIVersion string `json:"cniVersion"`
				Code       uint   `json:"code"`
				Msg        string `json:"msg"`
				Details    string `json:"details"`
			}
			if err := json.Unmarshal([]byte(out), &e); err != nil {
				t.Fatalf("stdout is not a CNI error JSON: %v\n%s", err, out)
			}
			if (c.code != 0 && e.Code != c.code) || e.Code == 0 {
				t.Errorf("code %d, want %d (msg %q)", e.Code, c.code, e.Msg)
			}
			if !strings.Contains(e.Msg+" "+e.Details, c.msg) {
				t.Errorf("msg %q / details %q do not mention %q", e.Msg, e.Details, c.msg)
			}
			if e.Details == "" && e.Code != 1 {
				t.Errorf("no details saying how to fix it (msg %q)", e.Msg)
			}
			if v := hostVeths(t, n); len(v) != 0 {
				t.Errorf("left veths behind: %v", v)
			}
			if r := reservations(t, n, "podnet"); len(r) != 0 {
				t.Errorf("left reservations behind: %v", r)
			}
			if o := pod.NS.MustRun(t, "ip", "-o", "link"); strings.Contains(o, "eth0") {
				t.Errorf("left eth0 in the pod")
			}
		})
	}
	// And after all that, a good ADD works.
	if out, ok := n.Exec(t, env(), good("")); !ok {
		t.Fatalf("good ADD after the bad ones: %s", out)
	}
}

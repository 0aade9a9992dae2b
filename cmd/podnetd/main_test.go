package main

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet/pkg/podnetd"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func files(m map[string]string) func(string) ([]byte, error) {
	return func(name string) ([]byte, error) {
		if s, ok := m[name]; ok {
			return []byte(s), nil
		}
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
}

// The lab's command line keeps working as it did.
func TestAgentFlags(t *testing.T) {
	a, code, err := parseAgentArgs([]string{"--node", "node-1", "--kubeconfig", "/k", "--backend", "host-gw",
		"--cluster-cidr", "10.244.0.0/16", "--run-service-proxy=true", "--nodeport-addresses=192.168.56.11/32"},
		env(nil), files(nil), io.Discard)
	if err != nil || code != 0 {
		t.Fatal(code, err)
	}
	c := a.cfg
	if a.node != "node-1" || a.kubeconfig != "/k" || c.NodeName != "node-1" || c.Backend != "host-gw" || !c.ServiceProxy ||
		len(c.NodePortAddresses) != 1 || c.NodePortAddresses[0].String() != "192.168.56.11/32" || a.opts.Listen != "127.0.0.1:9965" {
		t.Errorf("%+v", a)
	}
}

func TestAgentNodeFromEnv(t *testing.T) {
	a, _, err := parseAgentArgs(nil, env(map[string]string{"NODE_NAME": "node-7"}), files(nil), io.Discard)
	if err != nil || a.cfg.NodeName != "node-7" {
		t.Errorf("node %q, %v", a.cfg.NodeName, err)
	}
}

func TestAgentConfigFile(t *testing.T) {
	fsys := files(map[string]string{"/etc/podnet/config.yaml": "backend: hybrid\nmtu: 1400\nserviceProxy: false\napiServer: 192.168.56.10:6443\n"})
	a, code, err := parseAgentArgs([]string{"--config", "/etc/podnet/config.yaml", "--mtu", "1300"}, env(nil), fsys, io.Discard)
	if err != nil || code != 0 {
		t.Fatal(code, err)
	}
	if a.cfg.Backend != "hybrid" || a.cfg.MTU != 1300 || a.cfg.ServiceProxy || a.opts.APIServer != "192.168.56.10:6443" {
		t.Errorf("want the file's backend, proxy and API server, the flag's MTU: %+v %+v", a.cfg, a.opts)
	}
}

// A bad ConfigMap stops podnetd before it touches anything, with exit code
// 2 (the pod is never Ready), the key, and where to fix it.
func TestAgentBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		want       string
	}{
		{"bad value", "mtu: big\n", `config /etc/podnet/config.yaml, line 1, key "mtu": want a whole number, got "big"`},
		{"bad backend", "backend: vxlam\n", `key "backend": "vxlam" is no backend`},
		{"unknown key", "bakend: vxlan\n", `unknown key (did you mean "backend"?)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := files(map[string]string{"/etc/podnet/config.yaml": tc.file})
			_, code, err := parseAgentArgs([]string{"--config", "/etc/podnet/config.yaml"}, env(nil), fsys, io.Discard)
			if code != 2 || err == nil {
				t.Fatalf("code %d, err %v", code, err)
			}
			for _, w := range []string{tc.want, "ConfigMap kube-system/podnet-config", "rollout restart ds/podnet"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q lacks %q", err, w)
				}
			}
		})
	}
	_, code, err := parseAgentArgs([]string{"--config", "/nope.yaml"}, env(nil), files(nil), io.Discard)
	if code != 2 || err == nil || !strings.Contains(err.Error(), "/nope.yaml") {
		t.Errorf("missing file: %d %v", code, err)
	}
}

func TestAgentBadFlags(t *testing.T) {
	for _, args := range [][]string{{"--mtu", "x"}, {"--nope"}, {"extra"}, {"--cluster-cidr", "10.0.0.0/40"},
		{"--run-network=false", "--run-service-proxy=false", "--run-network-policy=false"}} {
		var out bytes.Buffer
		_, code, err := parseAgentArgs(args, env(nil), files(nil), &out)
		if code != 2 {
			t.Errorf("%v: code %d, err %v", args, code, err)
		}
	}
	if _, code, _ := parseAgentArgs([]string{"-h"}, env(nil), files(nil), io.Discard); code != 0 {
		t.Errorf("-h: code %d", code)
	}
}

func TestInstallPlugin(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	bin := filepath.Join(dir, "opt", "cni", "bin")
	if err := os.WriteFile(src, []byte("plugin v1"), 0o644); err != nil {
		t.Fatal(err)
	}
	msg, err := installPlugin(src, bin)
	if err != nil || !strings.HasPrefix(msg, "installed "+bin+"/podnet (9 bytes") {
		t.Fatalf("%q %v", msg, err)
	}
	check := func(want string) {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(bin, "podnet"))
		st, _ := os.Stat(filepath.Join(bin, "podnet"))
		if err != nil || string(b) != want || st.Mode().Perm() != 0o755 {
			t.Errorf("installed %q (%v), want %q 0755", b, st.Mode(), want)
		}
		ents, _ := os.ReadDir(bin)
		if len(ents) != 1 {
			t.Errorf("left behind: %v", ents)
		}
	}
	check("plugin v1")
	if msg, _ := installPlugin(src, bin); !strings.Contains(msg, "up to date") {
		t.Errorf("second install: %q", msg)
	}
	// A runtime holding the old binary open keeps its inode; the name
	// points at the new one.
	old, err := os.Open(filepath.Join(bin, "podnet"))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := os.WriteFile(src, []byte("plugin v2"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := installPlugin(src, bin); err != nil {
		t.Fatal(err)
	}
	check("plugin v2")
	if b, _ := io.ReadAll(old); string(b) != "plugin v1" {
		t.Errorf("the old inode was written: %q", b)
	}
	if _, err := installPlugin(filepath.Join(dir, "missing"), bin); err == nil {
		t.Error("a missing source installed")
	}
}

func TestWaitAgentGone(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	var out bytes.Buffer
	err = waitAgentGone(context.Background(), addr, 1500*time.Millisecond, &out)
	if err == nil || !strings.Contains(err.Error(), "delete podnet's DaemonSet first") || !strings.Contains(out.String(), "waiting") {
		t.Errorf("an agent answering: %v (%s)", err, out.String())
	}
	go func() { time.Sleep(500 * time.Millisecond); ln.Close() }()
	if err := waitAgentGone(context.Background(), addr, 10*time.Second, io.Discard); err != nil {
		t.Errorf("after the agent went: %v", err)
	}
}

func TestPrintReport(t *testing.T) {
	var b bytes.Buffer
	printReport(&b, podnetd.CleanupReport{})
	if !strings.Contains(b.String(), "nothing of podnet's is left") {
		t.Errorf("%s", b.String())
	}
	b.Reset()
	printReport(&b, podnetd.CleanupReport{Removed: []string{"route x"}, Kept: []string{"bridge cni0: ports"}})
	if want := "removed route x\nkept    bridge cni0: ports\nremoved 1 objects, kept 1 (see above why)\n"; b.String() != want {
		t.Errorf("got %q", b.String())
	}
}

func TestDispatchUsage(t *testing.T) {
	for _, args := range [][]string{{"cleanup", "-h"}, {"install-cni", "-h"}} {
		if code := dispatch(args, io.Discard, io.Discard); code != 0 {
			t.Errorf("%v: %d", args, code)
		}
	}
	if code := dispatch([]string{"cleanup", "--nope"}, io.Discard, io.Discard); code != 2 {
		t.Errorf("bad cleanup flag: %d", code)
	}
}

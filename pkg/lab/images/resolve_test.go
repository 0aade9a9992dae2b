package images

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// fakeTools puts executables with the given names in a fresh directory and
// makes it the whole PATH, so lookups do not depend on the host.
func fakeTools(t *testing.T, names ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/true\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir)
	return dir
}

func TestNormalize(t *testing.T) {
	for ref, want := range map[string]string{
		"busybox":                                 "busybox",
		"busybox:1.36":                            "busybox",
		"docker.io/library/busybox:latest":        "busybox",
		"index.docker.io/library/busybox":         "busybox",
		"busybox@sha256:0123456789abcdef":         "busybox",
		"busybox:1.36@sha256:0123456789abcdef":    "busybox",
		"library/nginx:1.27-alpine":               "nginx",
		"nicolaka/netshoot":                       "nicolaka/netshoot",
		"docker.io/nicolaka/netshoot:v0.13":       "nicolaka/netshoot",
		"registry.k8s.io/e2e-test-images/agnhost": "registry.k8s.io/e2e-test-images/agnhost",
		"k8s.gcr.io/e2e-test-images/agnhost:2.39": "registry.k8s.io/e2e-test-images/agnhost",
		"localhost:5000/busybox":                  "localhost:5000/busybox",
		"localhost:5000/busybox:1":                "localhost:5000/busybox",
		"quay.io/foo/bar:v1":                      "quay.io/foo/bar",
	} {
		if got := normalize(ref); got != want {
			t.Errorf("normalize(%q) = %q, want %q", ref, got, want)
		}
	}
}

func TestResolve(t *testing.T) {
	dir := fakeTools(t, "sh", "sleep", "wget", "nslookup", "traceroute", "ping")
	host := func(tool string, args ...string) Program {
		return Program{Path: filepath.Join(dir, tool), Args: append([]string{}, args...)}
	}
	builtin := func(name string, args ...string) Program {
		return Program{Builtin: name, Args: append([]string{}, args...)}
	}
	const agnhost = "registry.k8s.io/e2e-test-images/agnhost:2.53"
	for _, tc := range []struct {
		name          string
		image         string
		command, args []string
		ports         []int32
		want          Program
	}{
		{"busybox default is sh", "busybox", nil, nil, nil, host("sh")},
		{"tagged busybox command", "busybox:1.36", []string{"sleep", "3600"}, nil, nil, host("sleep", "3600")},
		{"registry busybox /bin/sh", "docker.io/library/busybox:latest",
			[]string{"/bin/sh", "-c", "wget -qO- http://10.96.0.10"}, nil, nil, host("sh", "-c", "wget -qO- http://10.96.0.10")},
		{"args replace busybox cmd", "busybox", nil, []string{"sleep", "3600"}, nil, host("sleep", "3600")},
		{"command plus args", "busybox", []string{"sh", "-c"}, []string{"ping -c 3 10.244.2.5"}, nil,
			host("sh", "-c", "ping -c 3 10.244.2.5")},
		{"busybox applet prefix dropped", "busybox", []string{"busybox", "nslookup", "kubernetes.default"}, nil, nil,
			host("nslookup", "kubernetes.default")},
		{"busybox by digest", "busybox@sha256:0123456789abcdef", []string{"wget", "-qO-", "http://x"}, nil, nil,
			host("wget", "-qO-", "http://x")},
		{"e2e busybox", "registry.k8s.io/e2e-test-images/busybox:1.37.0-1", []string{"sleep", "10"}, nil, nil,
			host("sleep", "10")},
		{"netshoot command", "nicolaka/netshoot", []string{"traceroute", "10.244.2.5"}, nil, nil,
			host("traceroute", "10.244.2.5")},
		{"netshoot default", "nicolaka/netshoot:v0.13", nil, nil, nil, host("sh")},
		{"nginx default port", "nginx", nil, nil, nil, builtin(BuiltinNginx, "--port=80")},
		{"nginx container ports", "nginx:1.27-alpine", nil, nil, []int32{8080, 8080, 80},
			builtin(BuiltinNginx, "--port=8080", "--port=80")},
		{"nginx args after entrypoint", "nginx", nil, []string{"nginx", "-g", "daemon off;"}, []int32{80},
			builtin(BuiltinNginx, "--port=80")},
		{"nginx explicit command", "docker.io/library/nginx:latest", []string{"nginx", "-g", "daemon off;"}, nil, nil,
			builtin(BuiltinNginx, "--port=80")},
		{"nginx shell command", "nginx", []string{"sh", "-c", "sleep 1"}, nil, nil, host("sh", "-c", "sleep 1")},
		{"httpd default", "httpd", nil, nil, nil, builtin(BuiltinHTTPD, "--port=80")},
		{"registry httpd with port", "docker.io/library/httpd:2.4", nil, nil, []int32{80}, builtin(BuiltinHTTPD, "--port=80")},
		{"httpd-foreground command", "httpd", []string{"httpd-foreground"}, nil, []int32{8080},
			builtin(BuiltinHTTPD, "--port=8080")},
		{"agnhost netexec args", agnhost, nil, []string{"netexec", "--http-port=8080", "--udp-port=8081"}, nil,
			builtin(BuiltinAgnhost, "netexec", "--http-port=8080", "--udp-port=8081")},
		{"agnhost command", agnhost, []string{"/agnhost", "netexec", "--http-port=8080"}, nil, nil,
			builtin(BuiltinAgnhost, "netexec", "--http-port=8080")},
		{"agnhost command and args", agnhost, []string{"/agnhost"}, []string{"connect", "10.0.0.1:80", "--timeout=1s"}, nil,
			builtin(BuiltinAgnhost, "connect", "10.0.0.1:80", "--timeout=1s")},
		{"agnhost no args", agnhost, nil, nil, nil, builtin(BuiltinAgnhost)},
		{"old agnhost registry", "k8s.gcr.io/e2e-test-images/agnhost:2.39", nil, []string{"pause"}, nil,
			builtin(BuiltinAgnhost, "pause")},
		{"agnhost flag before subcommand", agnhost, nil, []string{"--v=2", "serve-hostname"}, nil,
			builtin(BuiltinAgnhost, "--v=2", "serve-hostname")},
		{"agnhost shell", agnhost, []string{"/bin/sh", "-c", "sleep 1"}, nil, nil, host("sh", "-c", "sleep 1")},
		{"pause image", "registry.k8s.io/pause:3.10", nil, nil, nil, builtin(BuiltinPause)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Resolve(tc.image, tc.command, tc.args, tc.ports)
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if got.Args == nil {
				got.Args = []string{}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Resolve = %#v, want %#v", got, tc.want)
			}
		})
	}
}

func TestResolveUnsupported(t *testing.T) {
	fakeTools(t, "sh")
	const agnhost = "registry.k8s.io/e2e-test-images/agnhost:2.53"
	for _, tc := range []struct {
		image         string
		command, args []string
		want          string
	}{
		{"foo/bar", nil, nil, `image "foo/bar" is not one the podnet lab can run: use busybox, nicolaka/netshoot, nginx, httpd, ` +
			`registry.k8s.io/pause, registry.k8s.io/e2e-test-images/agnhost or registry.k8s.io/coredns/coredns`},
		{"ubuntu:24.04", nil, nil, `image "ubuntu:24.04" is not one the podnet lab can run: use busybox`},
		{"localhost:5000/busybox", nil, nil, `image "localhost:5000/busybox" is not one`},
		{"", nil, nil, `image "" is not one`},
		{agnhost, nil, []string{"porter"}, `agnhost subcommand "porter" is not in the podnet lab's built-in agnhost: use netexec, connect`},
		{"registry.k8s.io/pause", []string{"sh"}, nil, `image "registry.k8s.io/pause" has only /pause`},
	} {
		_, err := Resolve(tc.image, tc.command, tc.args, nil)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("Resolve(%q, %q, %q) error = %v, want prefix %q", tc.image, tc.command, tc.args, err, tc.want)
		}
		if !errors.Is(err, ErrUnsupported) {
			t.Errorf("Resolve(%q) error %v is not ErrUnsupported", tc.image, err)
		}
	}
}

func TestResolveMissingTool(t *testing.T) {
	fakeTools(t, "sh")
	_, err := Resolve("busybox", []string{"nslookup", "kubernetes.default"}, nil, nil)
	if !errors.Is(err, ErrMissingTool) {
		t.Fatalf("error %v is not ErrMissingTool", err)
	}
	for _, want := range []string{`"nslookup"`, `"busybox"`, "bind9-dnsutils"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}

	_, err = Resolve("nicolaka/netshoot", []string{"/usr/local/bin/no-such-tool-xyz"}, nil, nil)
	if !errors.Is(err, ErrMissingTool) || !strings.Contains(err.Error(), `"no-such-tool-xyz" is not in PATH`) ||
		strings.Contains(err.Error(), "Debian package") {
		t.Errorf("unknown tool error = %v", err)
	}

	if _, err := Resolve("busybox", []string{""}, nil, nil); err == nil || !strings.Contains(err.Error(), "no command") {
		t.Errorf("empty command error = %v", err)
	}
}

func TestProgramString(t *testing.T) {
	p := Program{Path: "/usr/bin/sh", Args: []string{"-c", "echo hi; sleep 1"}}
	if got, want := p.String(), `/usr/bin/sh -c "echo hi; sleep 1"`; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	p = Program{Builtin: BuiltinAgnhost, Args: []string{"netexec", "--http-port=8080"}}
	if got, want := p.String(), "builtin agnhost netexec --http-port=8080"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
}

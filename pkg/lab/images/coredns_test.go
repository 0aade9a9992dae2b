package images

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestResolveCoreDNS(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "coredns")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(CoreDNSDirEnv, dir)
	for _, tc := range []struct {
		image         string
		command, args []string
		want          Program
	}{
		{"registry.k8s.io/coredns/coredns:v1.12.0", nil, []string{"-conf", "/etc/coredns/Corefile"},
			Program{Path: bin, Args: []string{"-conf", "/etc/coredns/Corefile"}}},
		{"coredns/coredns:1.15.0", nil, nil, Program{Path: bin, Args: []string{}}},
		{"docker.io/coredns/coredns", []string{"/coredns"}, []string{"-version"}, Program{Path: bin, Args: []string{"-version"}}},
		{"k8s.gcr.io/coredns/coredns:v1.8.0", nil, nil, Program{Path: bin, Args: []string{}}},
		{"k8s.gcr.io/coredns:1.7.0", nil, nil, Program{Path: bin, Args: []string{}}},
	} {
		got, err := Resolve(tc.image, tc.command, tc.args, nil)
		if err != nil {
			t.Errorf("Resolve(%q): %v", tc.image, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Resolve(%q) = %#v, want %#v", tc.image, got, tc.want)
		}
	}
	if _, err := Resolve("coredns/coredns", []string{"sh"}, nil, nil); !errors.Is(err, ErrUnsupported) ||
		!strings.Contains(err.Error(), "has only /coredns") {
		t.Errorf("a shell in the CoreDNS image: %v, want it refused", err)
	}
}

func TestResolveCoreDNSMissing(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(CoreDNSDirEnv, dir)
	_, err := Resolve("registry.k8s.io/coredns/coredns:v1.12.0", nil, nil, nil)
	if !errors.Is(err, ErrMissingTool) {
		t.Fatalf("error %v is not ErrMissingTool", err)
	}
	for _, want := range []string{filepath.Join(dir, "coredns"), "make coredns", CoreDNSDirEnv} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	t.Setenv(CoreDNSDirEnv, "")
	if CoreDNSDir() != DefaultCoreDNSDir() {
		t.Errorf("without %s the directory is %s, want %s", CoreDNSDirEnv, CoreDNSDir(), DefaultCoreDNSDir())
	}
}

// TestCoreDNSVersionMatchesTheBuildModule keeps this package and
// hack/coredns/go.mod on one version.
func TestCoreDNSVersionMatchesTheBuildModule(t *testing.T) {
	b, err := os.ReadFile("../../../hack/coredns/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "github.com/coredns/coredns "+CoreDNSVersion+"\n") {
		t.Fatalf("hack/coredns/go.mod does not pin github.com/coredns/coredns %s", CoreDNSVersion)
	}
}

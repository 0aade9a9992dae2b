package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestUpSaysWhatIsMissing: a machine without the Kubernetes binaries or
// the plugin gets a list of what is missing, and nothing is built.
func TestUpSaysWhatIsMissing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("preflight checks root first")
	}
	empty := t.TempDir()
	l := New(Options{Dir: filepath.Join(t.TempDir(), "state"), K8sDir: empty, PluginDir: empty, Workers: 1})
	err := l.Up(context.Background())
	if err == nil {
		t.Fatal("up succeeded without binaries")
	}
	for _, want := range []string{"kube-apiserver in " + empty, "hack/k8s.sh", "podnet in " + empty, "make build"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if _, err := os.Stat(l.Dir()); err == nil {
		t.Error("a refused up left its state directory")
	}
	if _, err := os.Stat("/var/run/netns/" + ControlPlane); err == nil {
		t.Error("a refused up built a machine")
	}
}

// TestMachinesFollowTheSeeds: the addresses of seed 003.
func TestMachinesFollowTheSeeds(t *testing.T) {
	ms := Machines(2, 0)
	want := []string{"controlplane 192.168.56.10", "node-1 192.168.56.11", "node-2 192.168.56.12"}
	if len(ms) != len(want) {
		t.Fatalf("%d machines", len(ms))
	}
	for i, m := range ms {
		if got := m.Name + " " + m.IP.String(); got != want[i] {
			t.Errorf("machine %d: %s, want %s", i, got, want[i])
		}
	}
	if !ms[0].ControlPlane || ms[1].ControlPlane {
		t.Error("only the first machine is the control plane")
	}
}

// TestFarWorkersSitOnTheSecondSegment: the last workers move to
// 192.168.57.0/24 and keep their numbers.
func TestFarWorkersSitOnTheSecondSegment(t *testing.T) {
	var got []string
	for _, m := range Machines(3, 1) {
		got = append(got, fmt.Sprintf("%s %s %s", m.Name, m.IP, m.Segment()))
	}
	want := []string{"controlplane 192.168.56.10 192.168.56.0/24", "node-1 192.168.56.11 192.168.56.0/24",
		"node-2 192.168.56.12 192.168.56.0/24", "node-3 192.168.57.13 192.168.57.0/24"}
	if strings.Join(got, "; ") != strings.Join(want, "; ") {
		t.Fatalf("machines %q, want %q", got, want)
	}
	if hasFar(Machines(3, 0)) || !hasFar(Machines(3, 1)) {
		t.Error("hasFar disagrees with the far count")
	}
}

// TestKubernetesVersionMatchesTheBuildModule keeps pkg/lab and
// hack/k8s/go.mod on one version.
func TestKubernetesVersionMatchesTheBuildModule(t *testing.T) {
	b, err := os.ReadFile("../../hack/k8s/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "k8s.io/kubernetes "+KubernetesVersion) {
		t.Fatalf("hack/k8s/go.mod does not pin k8s.io/kubernetes %s", KubernetesVersion)
	}
}

// TestNetworkPolicyAPIVersionMatchesGoMod: the lab installs the CRD of the
// network-policy-api release podnetd's client is built from.
func TestNetworkPolicyAPIVersionMatchesGoMod(t *testing.T) {
	b, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "sigs.k8s.io/network-policy-api "+NetworkPolicyAPIVersion+"\n") {
		t.Fatalf("go.mod does not pin sigs.k8s.io/network-policy-api %s", NetworkPolicyAPIVersion)
	}
}

// TestNodeSubnetsFollowTheSeeds: machine i gets 10.244.i.0/24.
func TestNodeSubnetsFollowTheSeeds(t *testing.T) {
	for i, want := range map[int]string{0: "10.244.0.0/24", 1: "10.244.1.0/24", 12: "10.244.12.0/24"} {
		if got, err := nodeSubnet(i); err != nil || got.String() != want {
			t.Errorf("nodeSubnet(%d) = %v, %v; want %s", i, got, err, want)
		}
	}
	if _, err := nodeSubnet(256); err == nil {
		t.Error("nodeSubnet(256) gave a subnet outside 10.244.0.0/16")
	}
}

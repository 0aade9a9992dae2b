package lab_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// applyYAML applies a manifest with the lab's kubectl, as a user does.
func (e *env) applyYAML(t *testing.T, name, manifest string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), name+".yaml")
	if err := os.WriteFile(f, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := e.kubectl("apply", "-f", f); err != nil {
		t.Fatalf("kubectl apply %s: %v\n%s", name, err, out)
	}
}

// labAdminTier: with allow-from-pod-a in place (pod-b takes 8080 from
// app=pod-a only), an Admin ClusterNetworkPolicy overrides it both ways:
// it accepts app=other on 8080 and denies app=pod-a, on pod-b's own
// address and through its ClusterIP, from pod-b's node and the other one.
// Removed, NetworkPolicy decides again.
func labAdminTier(t *testing.T, e *env, ip string, connect func(from, addr string) string, expect func(map[string]string)) {
	if out, err := e.kubectl("get", "crd", "clusternetworkpolicies.policy.networking.k8s.io"); err != nil {
		t.Fatalf("the lab has no ClusterNetworkPolicy CRD: %v\n%s", err, out)
	}
	e.applyYAML(t, "admin", `apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata:
  name: lab-admin
spec:
  tier: Admin
  priority: 10
  subject:
    pods:
      namespaceSelector: {}
      podSelector:
        matchLabels: {app: pod-b}
  ingress:
  - name: other-may
    action: Accept
    from:
    - pods:
        namespaceSelector: {}
        podSelector:
          matchLabels: {app: other}
    protocols:
    - tcp:
        destinationPort:
          number: 8080
  - name: no-pod-a
    action: Deny
    from:
    - namespaces: {}
`)
	waitFor(t, 5*time.Second, "pod-a refused by lab-admin", func() (bool, string) {
		got := connect("pod-a", ip+":8080")
		return got == "dropped", got
	})
	expect(map[string]string{"pod-a": "dropped", "pod-a-far": "dropped", "other": "ok", "other-far": "ok"})
	if out, err := e.kubectl("get", "clusternetworkpolicies"); err != nil || !strings.Contains(out, "lab-admin") || !strings.Contains(out, "Admin") {
		t.Errorf("kubectl get clusternetworkpolicies: %v\n%s", err, out)
	}
	log := podnetdLog(t, e, "node-1")
	if want := "admin clusternetworkpolicy lab-admin ingress rule 1 (no-pod-a)"; !strings.Contains(log, want) {
		t.Errorf("podnetd on node-1 logged no drop naming %q:\n%s", want, lastLines(log, 20))
	}
	if out, err := e.kubectl("delete", "clusternetworkpolicy", "lab-admin"); err != nil {
		t.Fatalf("kubectl delete clusternetworkpolicy lab-admin: %v\n%s", err, out)
	}
	waitFor(t, 5*time.Second, "pod-a allowed again by allow-from-pod-a", func() (bool, string) {
		got := connect("pod-a", ip+":8080")
		return got == "ok", got
	})
	expect(map[string]string{"pod-a": "ok", "pod-a-far": "ok", "other": "dropped", "other-far": "dropped"})
}

// labBaselineTier: with no NetworkPolicy, a Baseline deny from app=other
// closes pod-b to it; then a NetworkPolicy that selects pod-b takes over
// (it allows everything), and Baseline no longer applies.
func labBaselineTier(t *testing.T, e *env, ip string, connect func(from, addr string) string, expect func(map[string]string)) {
	e.applyYAML(t, "baseline", `apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata:
  name: lab-baseline
spec:
  tier: Baseline
  priority: 10
  subject:
    namespaces:
      matchLabels:
        kubernetes.io/metadata.name: default
  ingress:
  - name: no-other
    action: Deny
    from:
    - pods:
        namespaceSelector: {}
        podSelector:
          matchLabels: {app: other}
`)
	waitFor(t, 5*time.Second, "other refused by lab-baseline", func() (bool, string) {
		got := connect("other", ip+":8080")
		return got == "dropped", got
	})
	expect(map[string]string{"pod-a": "ok", "pod-a-far": "ok", "other": "dropped", "other-far": "dropped"})
	e.applyYAML(t, "allow-all", `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-all-to-pod-b
  namespace: default
spec:
  podSelector:
    matchLabels: {app: pod-b}
  ingress:
  - {}
`)
	waitFor(t, 5*time.Second, "other allowed by allow-all-to-pod-b over lab-baseline", func() (bool, string) {
		got := connect("other", ip+":8080")
		return got == "ok", got
	})
	expect(map[string]string{"pod-a": "ok", "pod-a-far": "ok", "other": "ok", "other-far": "ok"})
	for _, obj := range [][]string{{"clusternetworkpolicy", "lab-baseline"}, {"networkpolicy", "allow-all-to-pod-b"}} {
		if out, err := e.kubectl("delete", obj[0], obj[1]); err != nil {
			t.Fatalf("kubectl delete %s: %v\n%s", obj, err, out)
		}
	}
}

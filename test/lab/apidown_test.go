package lab_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podnet/podnet/pkg/lab"
	"github.com/podnet/podnet/pkg/lab/cgroup"
)

// podnetdAPIDown: with the API server frozen (its cgroup), the dataplane
// stays exactly as it is while a ping runs across nodes: podnetd on node-1
// keeps syncing from its informer's cache (a route deleted by hand comes
// back), and podnetd on node-2, killed and restarted during the outage,
// cannot sync its informer and so writes nothing — it removes nothing
// either, and says it is not healthy. Once the API server returns, node-2's
// agent syncs and repairs drift again. Not one ping is lost, and a TCP
// stream across nodes carries every line in order.
func podnetdAPIDown(t *testing.T, e *env, target string) {
	tr := startDeployTraffic(t, e, "outage", target)
	const dataplane = "ip route show proto 201; ip neigh show dev podnet.1; bridge fdb show dev podnet.1"
	before := e.onNode("node-2", dataplane)

	thaw := freezeAPIServer(t)
	outage := time.Now()
	old := podnetdPID(t, "node-2")
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 podnetd on node-2: %v", err)
	}
	// kubelet restarts the container from what it knows: no API server needed.
	waitPodnetdRestarted(t, "node-2", old)

	// node-1's agent repairs drift from its cache: its route to the
	// control plane's pods (no traffic uses it here) comes back.
	e.onNode("node-1", "ip route del 10.244.0.0/24")
	waitFor(t, 15*time.Second, "node-1's route to 10.244.0.0/24 back while the API server is down", func() (bool, string) {
		out := e.onNode("node-1", "ip route show 10.244.0.0/24 proto 201")
		return strings.Contains(out, "dev podnet.1"), out
	})
	for time.Since(outage) < 15*time.Second { // longer than client-go's timeouts and backoff steps
		time.Sleep(500 * time.Millisecond)
	}
	if during := e.onNode("node-2", dataplane); during != before {
		t.Errorf("node-2's dataplane changed while the API server was down and its podnetd restarted:\nbefore:\n%s\nduring:\n%s", before, during)
	}
	if out := e.onNode("node-2", "curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:9965/healthz"); out == "200" {
		t.Errorf("podnetd on node-2, restarted with the API server down and never synced, says it is healthy")
	}
	thaw()
	t.Logf("API server frozen for %s", time.Since(outage).Round(100*time.Millisecond))

	waitFor(t, 30*time.Second, "podnetd on node-2 healthy after the API server returns", func() (bool, string) {
		out := e.onNode("node-2", "curl -s 127.0.0.1:9965/healthz")
		return strings.HasPrefix(out, "ok"), out
	})
	e.onNode("node-2", "ip route del 10.244.0.0/24")
	waitFor(t, 15*time.Second, "node-2's route to 10.244.0.0/24 repaired after the outage", func() (bool, string) {
		out := e.onNode("node-2", "ip route show 10.244.0.0/24 proto 201")
		return strings.Contains(out, "dev podnet.1"), out
	})
	// Not one ping lost, the stream whole and in order across the outage.
	tr.stopAndCheck(t)
}

// freezeAPIServer freezes kube-apiserver until the returned function, or
// the test's end, thaws it: to clients it is a server that accepts
// connections and never answers.
func freezeAPIServer(t *testing.T) func() {
	t.Helper()
	return freeze(t, "kube-apiserver", lab.ControlPlane)
}

// freeze freezes a lab component on the given machines (their cgroups)
// until the returned function, or the test's end, thaws them.
func freeze(t *testing.T, component string, machines ...string) func() {
	t.Helper()
	m, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	thawed := false
	thaw := func() {
		if thawed {
			return
		}
		thawed = true
		for _, f := range files {
			if err := os.WriteFile(f, []byte("0"), 0o644); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(thaw)
	for _, machine := range machines {
		f := filepath.Join(m, lab.CgroupName, machine, component, "cgroup.freeze")
		if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	return thaw
}

// waitFor polls cond until it holds or d passes; what names the wait and
// cond's text is shown on failure.
func waitFor(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	start := time.Now()
	for {
		ok, out := cond()
		if ok {
			t.Logf("%s after %s", what, time.Since(start).Round(10*time.Millisecond))
			return
		}
		if time.Since(start) > d {
			t.Fatalf("not within %s: %s; last:\n%s", d, what, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

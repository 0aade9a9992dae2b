package lab_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet/pkg/lab"
)

// e2eSubset are the upstream sig-network Conformance specs that make test
// runs against the real-node lab: the pod-to-pod and node-to-pod checks
// over HTTP and UDP (the pod network itself), a Service's basic endpoint
// (the Service proxy) and the cluster's DNS. The whole suite is make e2e.
var e2eSubset = []string{
	`Networking Granular Checks: Pods should function for intra-pod communication: http`,
	`Networking Granular Checks: Pods should function for intra-pod communication: udp`,
	`Networking Granular Checks: Pods should function for node-pod communication: http`,
	`Networking Granular Checks: Pods should function for node-pod communication: udp`,
	`Services should serve a basic endpoint from pods`,
	`DNS should provide DNS for the cluster`,
}

// TestLabUpstreamE2ESubset runs those specs with the upstream e2e.test of
// the lab's Kubernetes version, unmodified, and asserts every one ran and
// passed.
func TestLabUpstreamE2ESubset(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("lab test: needs root")
	}
	bin := filepath.Join(lab.DefaultK8sDir(), "e2e.test")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s missing: run `make e2e-bin` (make test does)", bin)
	}
	e := upLab(t)
	var quoted []string
	for _, s := range e2eSubset {
		quoted = append(quoted, regexp.QuoteMeta(s))
	}
	start := time.Now()
	cmd := exec.Command(bin, "--kubeconfig", lab.New(lab.Options{Dir: e.dir}).AdminKubeconfig(), "--provider", "skeleton",
		"--ginkgo.focus", `\[sig-network\] (`+strings.Join(quoted, "|")+`) .*\[Conformance\]`,
		"--ginkgo.no-color", "--ginkgo.timeout", "15m", "--disable-log-dump", "--e2e-verify-service-account=false",
		"--report-dir", t.TempDir())
	cmd.Env = append(os.Environ(), "PATH="+lab.DefaultK8sDir()+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	t.Logf("e2e.test took %s", time.Since(start).Round(time.Second))
	ran := regexp.MustCompile(`Ran (\d+) of \d+ Specs`).FindSubmatch(out)
	passed := regexp.MustCompile(`(\d+) Passed \| (\d+) Failed`).FindSubmatch(out)
	if err != nil || ran == nil || passed == nil {
		t.Fatalf("e2e.test: %v\n%s", err, tail(out, 6000))
	}
	n, _ := strconv.Atoi(string(ran[1]))
	p, _ := strconv.Atoi(string(passed[1]))
	if n != len(e2eSubset) || p != n {
		t.Fatalf("ran %d of the %d specs, %d passed:\n%s", n, len(e2eSubset), p, tail(out, 6000))
	}
	t.Logf("upstream e2e: %d passed, 0 failed", p)
}

// tail is the end of b, for failure messages.
func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

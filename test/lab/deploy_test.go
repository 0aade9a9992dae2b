package lab_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podnet/podnet/internal/cnitest"
	"github.com/podnet/podnet/pkg/lab"
	"github.com/podnet/podnet/pkg/lab/imageset"
)

// TestLabDeploy installs podnet as users install it — deploy/podnet.yaml
// applied by the lab on the real kubelet, containerd and runc, podnetd from
// its image — and runs its life as an add-on on one lab: every node's pod
// Ready with the plugin its init container installed; a rolling restart and
// an upgrade to a new build of the image under a cross-node ping and a TCP
// stream, losing nothing; a bad option in the ConfigMap that stops the
// rollout at one node with a clear error while the dataplane everywhere
// stays as it was; and removal with the documented cleanup leaving nothing
// of podnet's on any node.
func TestLabDeploy(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("lab test: needs root")
	}
	e := upLab(t)
	img, err := lab.PodnetImage()
	if err != nil {
		t.Fatal(err)
	}
	nodes := []string{lab.ControlPlane, "node-1", "node-2"}

	t.Run("installed as users install it", func(t *testing.T) { deployInstalled(t, e, img, nodes) })

	e.deployPod(t, "target", "node-1", "exec /agnhost pause")
	target := e.waitRunningWithin(t, "target", 90*time.Second)

	t.Run("rolling restart under traffic", func(t *testing.T) {
		before := deployReady(t, e, img, nodes, 30*time.Second)
		tr := startDeployTraffic(t, e, "restart", target)
		if out, err := e.kubectl("-n", "kube-system", "rollout", "restart", "ds/podnet"); err != nil {
			t.Fatalf("kubectl rollout restart ds/podnet: %v\n%s", err, out)
		}
		e.rolloutStatus(t, "podnet", 4*time.Minute)
		after := deployReady(t, e, img, nodes, 30*time.Second)
		tr.stopAndCheck(t)
		deployReplaced(t, e, before, after)
	})

	t.Run("set image to a new build under traffic", func(t *testing.T) {
		newImg, digest := buildPodnetImage(t, filepath.Dir(e.cli))
		before := deployReady(t, e, img, nodes, 30*time.Second)
		tr := startDeployTraffic(t, e, "upgrade", target)
		if out, err := e.kubectl("-n", "kube-system", "set", "image", "ds/podnet", "podnetd="+newImg, "install-cni="+newImg); err != nil {
			t.Fatalf("kubectl set image: %v\n%s", err, out)
		}
		e.rolloutStatus(t, "podnet", 4*time.Minute)
		after := deployReady(t, e, newImg, nodes, 30*time.Second)
		tr.stopAndCheck(t)
		deployReplaced(t, e, before, after)
		for node, p := range after {
			if ic := p.Spec.InitContainers; len(ic) != 1 || ic[0].Image != newImg {
				t.Errorf("%s: %s's init container runs %v, want %s", node, p.Name, ic, newImg)
			}
			for _, cs := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
				if !strings.Contains(cs.ImageID, digest) {
					t.Errorf("%s: %s's container %s runs image %s (%s), want the new build %s", node, p.Name, cs.Name, cs.Image, cs.ImageID, digest)
				}
				if old := before[node].Status.ContainerStatuses[0].ImageID; old != "" && cs.ImageID == old {
					t.Errorf("%s: %s's container %s runs the old image %s", node, p.Name, cs.Name, cs.ImageID)
				}
			}
		}
		if t.Failed() {
			return
		}
		t.Logf("every podnet pod runs %s (%s)", newImg, digest)
		img = newImg
	})

	t.Run("a bad option stops the rollout at one node, the dataplane untouched", func(t *testing.T) {
		deployBadOption(t, e, img, nodes, target)
	})

	t.Run("removal leaves nothing", func(t *testing.T) { deployRemoval(t, e, nodes) })

	e.downLeavesNothing(t)
}

// deployAgnhost runs the traffic: its bash (EPOCHREALTIME for the stream's
// timestamps), netcat-openbsd (-N: end the connection at the input's end)
// and busybox's ping.
const deployAgnhost = "registry.k8s.io/e2e-test-images/agnhost:2.63.0"

// deployInstalled: the DaemonSet's pod podnet-xxxxx is Running and Ready on
// every node, on the node's own address (host network), in `kubectl get
// pods -o wide` as a user reads it; `kubectl logs ds/podnet` is podnetd's
// log; each node's /opt/cni/bin/podnet is the plugin of the image (the
// lab's own build, byte for byte), placed by the init container, and runs.
func deployInstalled(t *testing.T, e *env, img string, nodes []string) {
	pods := deployReady(t, e, img, nodes, 2*time.Minute)
	ctx := context.Background()
	// The DaemonSet controller counts the pods' readiness a moment after
	// the pods show it.
	waitFor(t, 30*time.Second, "DaemonSet podnet: 3 desired, ready and available", func() (bool, string) {
		ds, err := e.client.AppsV1().DaemonSets("kube-system").Get(ctx, "podnet", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		s := ds.Status
		return s.DesiredNumberScheduled == 3 && s.NumberReady == 3 && s.NumberAvailable == 3,
			fmt.Sprintf("desired %d, ready %d, available %d", s.DesiredNumberScheduled, s.NumberReady, s.NumberAvailable)
	})

	out, err := e.kubectl("get", "pods", "-n", "kube-system", "-o", "wide")
	if err != nil {
		t.Fatalf("kubectl get pods -n kube-system -o wide: %v\n%s", err, out)
	}
	nodeIPs := map[string]string{}
	ns, err := e.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns.Items {
		nodeIPs[n.Name], _ = nodeInternalIP(&n)
	}
	seen := map[string]bool{}
	coredns := false
	name := regexp.MustCompile(`^podnet-[a-z0-9]{5}$`)
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 3 {
			continue
		}
		if strings.HasPrefix(f[0], "coredns-") && f[2] == "Running" {
			coredns = true
		}
		if !name.MatchString(f[0]) || f[1] != "1/1" || f[2] != "Running" {
			continue
		}
		for _, node := range nodes {
			if fieldsHave(f, node) && fieldsHave(f, nodeIPs[node]) {
				seen[node] = true
			}
		}
	}
	for _, node := range nodes {
		if !seen[node] {
			t.Errorf("kubectl get pods -n kube-system -o wide shows no podnet-xxxxx pod 1/1 Running on %s at %s:\n%s", node, nodeIPs[node], out)
		}
	}
	if !coredns {
		t.Errorf("kubectl get pods -n kube-system shows no CoreDNS pod Running next to podnet's:\n%s", out)
	}

	if out, err := e.kubectl("logs", "-n", "kube-system", "ds/podnet"); err != nil || !strings.Contains(out, "backend ready") || !strings.Contains(out, "dataplane synced") {
		t.Errorf("kubectl logs -n kube-system ds/podnet is not podnetd's log (want \"backend ready\" and \"dataplane synced\"): %v\n%s", err, out)
	}

	plugin, err := os.ReadFile(filepath.Join(filepath.Dir(e.cli), "podnet"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(plugin)
	want := hex.EncodeToString(sum[:])
	for _, node := range nodes {
		p := pods[node]
		if st := p.Status.InitContainerStatuses; len(st) != 1 || st[0].State.Terminated == nil || st[0].State.Terminated.ExitCode != 0 {
			t.Errorf("%s: %s's init container did not complete: %+v", node, p.Name, st)
		}
		log, err := e.kubectl("logs", "-n", "kube-system", p.Name, "-c", "install-cni")
		if err != nil || !strings.Contains(log, "/opt/cni/bin/podnet") || !strings.Contains(log, "sha256 "+want[:16]) {
			t.Errorf("%s: install-cni's log does not name /opt/cni/bin/podnet with sha256 %s: %v\n%s", node, want[:16], err, log)
		}
		got := strings.Fields(e.onNode(node, "sha256sum /opt/cni/bin/podnet"))
		if len(got) == 0 || got[0] != want {
			t.Errorf("%s: /opt/cni/bin/podnet has sha256 %v, the image's plugin (the lab's build) %s", node, got, want)
		}
		if v := e.onNode(node, "CNI_COMMAND=VERSION /opt/cni/bin/podnet </dev/null"); !strings.Contains(v, `"supportedVersions"`) || !strings.Contains(v, `"1.1.0"`) {
			t.Errorf("%s: CNI_COMMAND=VERSION /opt/cni/bin/podnet said:\n%s", node, v)
		}
	}
	t.Logf("podnet pods %s, plugin sha256 %s on every node", podNames(pods), want[:16])
}

func fieldsHave(f []string, s string) bool {
	for _, x := range f {
		if x == s {
			return true
		}
	}
	return false
}

// deployBadOption: `mtu: big` in the ConfigMap, then a rolling restart. The
// first new pod's podnetd exits with an error naming the key, never becomes
// Ready, and the rollout stops there (maxUnavailable 1): the other nodes
// keep their old pods. Every node — the one without podnetd too — keeps the
// dataplane it had (routes, tables, device), and a cross-node ping and TCP
// stream lose nothing. With the ConfigMap fixed and another restart, every
// node is Ready again.
func deployBadOption(t *testing.T, e *env, img string, nodes []string, target string) {
	ctx := context.Background()
	cms := e.client.CoreV1().ConfigMaps("kube-system")
	cm, err := cms.Get(ctx, "podnet-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	good := cm.Data["config.yaml"]
	bad := regexp.MustCompile(`(?m)^mtu:.*$`).ReplaceAllString(good, "mtu: big")
	if bad == good {
		bad = strings.TrimRight(good, "\n") + "\nmtu: big\n"
	}
	before := deployReady(t, e, img, nodes, 30*time.Second)
	dataplane := map[string]string{}
	for _, node := range nodes {
		dataplane[node] = nodeDataplane(t, e, node)
	}
	dsBefore, err := e.client.AppsV1().DaemonSets("kube-system").Get(ctx, "podnet", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tr := startDeployTraffic(t, e, "badopt", target)

	cm.Data["config.yaml"] = bad
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	restarted := false
	defer func() {
		// Whatever happened, leave the cluster with the good options.
		if cur, err := cms.Get(ctx, "podnet-config", metav1.GetOptions{}); err == nil && cur.Data["config.yaml"] != good {
			cur.Data["config.yaml"] = good
			if _, err := cms.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
				t.Error(err)
			}
			if !restarted {
				_, _ = e.kubectl("-n", "kube-system", "rollout", "restart", "ds/podnet")
			}
		}
	}()
	if out, err := e.kubectl("-n", "kube-system", "rollout", "restart", "ds/podnet"); err != nil {
		t.Fatalf("kubectl rollout restart ds/podnet: %v\n%s", err, out)
	}

	// One node's pod replaced by one that fails (exit 2, again and again),
	// the two others untouched.
	var badNode string
	var badPod corev1.Pod
	waitFor(t, 90*time.Second, "the rollout stuck at one node with podnetd exiting 2", func() (bool, string) {
		ds, err := e.client.AppsV1().DaemonSets("kube-system").Get(ctx, "podnet", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		s := ds.Status
		state := fmt.Sprintf("DaemonSet: generation %d (observed %d), desired %d, updated %d, ready %d, unavailable %d",
			ds.Generation, s.ObservedGeneration, s.DesiredNumberScheduled, s.UpdatedNumberScheduled, s.NumberReady, s.NumberUnavailable)
		if ds.Generation == dsBefore.Generation || s.ObservedGeneration != ds.Generation || s.UpdatedNumberScheduled != 1 || s.NumberReady != 2 || s.NumberUnavailable != 1 {
			return false, state
		}
		pods, desc := podnetPods(t, e)
		var fresh []string
		badNode = ""
		for node, p := range pods {
			if p.UID == before[node].UID {
				continue
			}
			fresh = append(fresh, node)
			for _, cs := range p.Status.ContainerStatuses {
				if cs.Name != "podnetd" || cs.Ready {
					continue
				}
				for _, term := range []*corev1.ContainerStateTerminated{cs.State.Terminated, cs.LastTerminationState.Terminated} {
					if term != nil && term.ExitCode == 2 {
						badNode, badPod = node, p
					}
				}
			}
		}
		return len(fresh) == 1 && badNode != "", state + "\n" + desc
	})
	t.Logf("the restart with mtu: big reached %s (pod %s) and stopped there", badNode, badPod.Name)

	// The container is crash-looping: the kubelet may be between two
	// containers (the current one not started, the previous one's log being
	// rotated away), so ask again for a while, the current and the previous.
	var log string
	waitFor(t, 30*time.Second, "podnetd's log of the failing start", func() (bool, string) {
		for _, prev := range []bool{false, true} {
			args := []string{"logs", "-n", "kube-system", badPod.Name, "-c", "podnetd"}
			if prev {
				args = append(args, "--previous")
			}
			if log, err = e.kubectl(args...); err == nil && strings.Contains(log, `key "mtu"`) {
				return true, ""
			}
		}
		return false, log
	})
	named := true
	for _, want := range []string{`key "mtu"`, `want a whole number, got "big"`, "ConfigMap kube-system/podnet-config"} {
		if !strings.Contains(log, want) {
			t.Errorf("kubectl logs %s -c podnetd lacks %q:\n%s", badPod.Name, want, log)
			named = false
		}
	}
	if named {
		t.Logf("%s's log: %s", badPod.Name, strings.SplitN(strings.TrimSpace(log), "\n", 2)[0])
	}

	// And it stays stopped: a few readiness periods later, still one node.
	if out, err := e.kubectl("-n", "kube-system", "rollout", "status", "ds/podnet", "--timeout=20s"); err == nil {
		t.Errorf("kubectl rollout status ds/podnet succeeded with a bad option in the ConfigMap:\n%s", out)
	}
	pods, desc := podnetPods(t, e)
	for _, node := range nodes {
		p, ok := pods[node]
		switch {
		case !ok:
			t.Errorf("%s has no podnet pod:\n%s", node, desc)
		case node == badNode:
			if podReady(&p) {
				t.Errorf("%s's pod %s with the bad option is Ready", node, p.Name)
			}
		case p.UID != before[node].UID || !podReady(&p):
			t.Errorf("%s's pod was replaced or is not Ready (was %s) while the rollout should be stopped at %s:\n%s", node, before[node].Name, badNode, desc)
		}
	}
	ds, err := e.client.AppsV1().DaemonSets("kube-system").Get(ctx, "podnet", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s := ds.Status; s.UpdatedNumberScheduled != 1 || s.NumberReady != 2 || s.NumberAvailable != 2 {
		t.Errorf("DaemonSet podnet: updated %d, ready %d, available %d; want 1, 2, 2", s.UpdatedNumberScheduled, s.NumberReady, s.NumberAvailable)
	}
	for _, node := range nodes {
		if now := nodeDataplane(t, e, node); now != dataplane[node] {
			t.Errorf("%s's dataplane changed with podnet's rollout stuck at %s:\nbefore:\n%s\nnow:\n%s", node, badNode, dataplane[node], now)
		}
	}

	// Fixed: every node Ready again, with new pods.
	cm, err = cms.Get(ctx, "podnet-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data["config.yaml"] = good
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	restarted = true
	if out, err := e.kubectl("-n", "kube-system", "rollout", "restart", "ds/podnet"); err != nil {
		t.Fatalf("kubectl rollout restart ds/podnet: %v\n%s", err, out)
	}
	e.rolloutStatus(t, "podnet", 4*time.Minute)
	after := deployReady(t, e, img, nodes, 30*time.Second)
	tr.stopAndCheck(t)
	deployReplaced(t, e, before, after)
	ds, err = e.client.AppsV1().DaemonSets("kube-system").Get(ctx, "podnet", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s := ds.Status; s.UpdatedNumberScheduled != 3 || s.NumberReady != 3 || s.NumberUnavailable != 0 {
		t.Errorf("after the fix: DaemonSet podnet updated %d, ready %d, unavailable %d; want 3, 3, 0", s.UpdatedNumberScheduled, s.NumberReady, s.NumberUnavailable)
	}
	for _, node := range nodes {
		if now := nodeDataplane(t, e, node); now != dataplane[node] {
			t.Errorf("%s's dataplane differs after the fix:\nbefore:\n%s\nnow:\n%s", node, dataplane[node], now)
		}
	}
}

// nodeDataplane is what podnet programmed on a node, as text to compare:
// its routes (to every other node's pod subnet), whether its nft tables and
// VXLAN device are there, and the CNI config. It fails the test when the
// routes to the other nodes or a table or the device are missing.
func nodeDataplane(t *testing.T, e *env, node string) string {
	t.Helper()
	// (ip route show proto 201 lists podnet's routes without their proto.)
	out := e.onNode(node, `ip route show proto 201; `+
		`for tb in "inet podnet-masq" "ip podnet-proxy"; do nft list table $tb >/dev/null && echo "table $tb"; done; `+
		`ip -o link show podnet.1 >/dev/null && echo "device podnet.1"; `+
		`cat /etc/cni/net.d/10-podnet.conflist`)
	for _, want := range []string{"table inet podnet-masq", "table ip podnet-proxy", "device podnet.1", `"type": "podnet"`} {
		if !strings.Contains(out, want) {
			t.Errorf("%s lacks %q:\n%s", node, want, out)
		}
	}
	subnets := map[string]string{lab.ControlPlane: "10.244.0.0/24", "node-1": "10.244.1.0/24", "node-2": "10.244.2.0/24"}
	for other, cidr := range subnets {
		if other != node && !regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(cidr)+` via \S+ dev podnet\.1 `).MatchString(out) {
			t.Errorf("%s has no podnet route to %s's pods (%s):\n%s", node, other, cidr, out)
		}
	}
	return out
}

// deployRemoval: drained (no pod left on podnet anywhere), podnet deleted
// with `kubectl delete -f deploy/podnet.yaml`, then deploy/podnet-cleanup.yaml
// applied and its pods done: no node holds any of podnet's tables, routes,
// devices, CNI config, bridge, store or plugin — which every node held
// before — and no podnet pod is left.
func deployRemoval(t *testing.T, e *env, nodes []string) {
	ctx := context.Background()
	root, err := cnitest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	// Drain: no pod on podnet's network anywhere (CoreDNS included), each
	// released by its CNI DEL while podnet is still there.
	if out, err := e.kubectl("-n", "kube-system", "scale", "deployment/coredns", "--replicas=0"); err != nil {
		t.Fatalf("kubectl scale coredns: %v\n%s", err, out)
	}
	if out, err := e.kubectl("delete", "pods", "--all", "-n", "default", "--wait=false"); err != nil {
		t.Fatalf("kubectl delete pods --all: %v\n%s", err, out)
	}
	waitFor(t, 90*time.Second, "no pod on podnet's network and no port on any cni0", func() (bool, string) {
		pods, err := e.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		var left []string
		for _, p := range pods.Items {
			if !p.Spec.HostNetwork {
				left = append(left, p.Namespace+"/"+p.Name)
			}
		}
		for _, node := range nodes {
			if ports := strings.TrimSpace(e.onNode(node, "ls /sys/class/net/cni0/brif 2>/dev/null; true")); ports != "" {
				left = append(left, node+": cni0 ports "+strings.Join(strings.Fields(ports), " "))
			}
		}
		return len(left) == 0, strings.Join(left, "\n")
	})

	// Before: every node holds podnet's objects, so that their absence
	// after means the cleanup removed them.
	for _, node := range nodes {
		have := podnetObjects(t, e, node)
		for _, what := range []string{"table", "route", "device", "conflist", "plugin"} {
			if len(have[what]) == 0 {
				t.Errorf("before the removal, %s has no podnet %s: %v", node, what, have)
			}
		}
	}
	if t.Failed() {
		return
	}

	start := time.Now()
	if out, err := e.kubectl("delete", "-f", filepath.Join(root, "deploy/podnet.yaml")); err != nil {
		t.Fatalf("kubectl delete -f deploy/podnet.yaml: %v\n%s", err, out)
	}
	waitFor(t, 60*time.Second, "podnet's pods gone", func() (bool, string) {
		pods, desc := podnetPods(t, e)
		return len(pods) == 0 && desc == "", desc
	})
	if out, err := e.kubectl("apply", "-f", filepath.Join(root, "deploy/podnet-cleanup.yaml")); err != nil {
		t.Fatalf("kubectl apply -f deploy/podnet-cleanup.yaml: %v\n%s", err, out)
	}
	e.rolloutStatus(t, "podnet-cleanup", 3*time.Minute)
	t.Logf("podnet deleted and every node cleaned up %s after kubectl delete", time.Since(start).Round(100*time.Millisecond))

	cleanups, err := e.client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=podnet-cleanup"})
	if err != nil {
		t.Fatal(err)
	}
	byNode := map[string]string{}
	for _, p := range cleanups.Items {
		byNode[p.Spec.NodeName] = p.Name
	}
	for _, node := range nodes {
		pod, ok := byNode[node]
		if !ok {
			t.Errorf("no podnet-cleanup pod on %s", node)
			continue
		}
		log, err := e.kubectl("logs", "-n", "kube-system", pod, "-c", "cleanup")
		for _, want := range []string{"removed CNI config /etc/cni/net.d/10-podnet.conflist", "removed nftables table inet podnet-masq",
			"removed nftables table ip podnet-proxy", "removed VXLAN device podnet.1", "nothing of podnet's is left on this node"} {
			if err != nil || !strings.Contains(log, want) {
				t.Errorf("%s: the cleanup's log (%s) lacks %q: %v\n%s", node, pod, want, err, log)
			}
		}
		if strings.Contains(log, "kept") {
			t.Errorf("%s: the cleanup kept something on a drained node:\n%s", node, log)
		}
	}
	for _, node := range nodes {
		for what, objs := range podnetObjects(t, e, node) {
			if len(objs) > 0 {
				t.Errorf("after the cleanup, %s still has podnet's %s: %s", node, what, strings.Join(objs, "; "))
			}
		}
	}

	if out, err := e.kubectl("delete", "-f", filepath.Join(root, "deploy/podnet-cleanup.yaml")); err != nil {
		t.Fatalf("kubectl delete -f deploy/podnet-cleanup.yaml: %v\n%s", err, out)
	}
	waitFor(t, 60*time.Second, "no podnet pod in kubectl get pods -n kube-system", func() (bool, string) {
		out, err := e.kubectl("get", "pods", "-n", "kube-system")
		return err == nil && !strings.Contains(out, "podnet"), out
	})
}

// podnetObjects lists what of podnet's a node holds, by kind.
func podnetObjects(t *testing.T, e *env, node string) map[string][]string {
	t.Helper()
	out := e.onNode(node, `echo @@table; nft list tables | grep podnet; `+
		`echo @@route; ip -4 route show table all proto 201; ip -6 route show table all proto 201 2>/dev/null; `+
		`echo @@device; ip -o link show podnet.1 2>/dev/null; `+
		`echo @@bridge; ip -o link show cni0 2>/dev/null; `+
		`echo @@conflist; ls /etc/cni/net.d | grep -i podnet; grep -l '"podnet"' /etc/cni/net.d/* 2>/dev/null; `+
		`echo @@plugin; ls -d /opt/cni/bin/podnet* 2>/dev/null; `+
		`echo @@store; ls -d /var/lib/cni/podnet 2>/dev/null; true`)
	have := map[string][]string{}
	what := ""
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "@@") {
			what = l[2:]
			have[what] = nil
		} else if l != "" {
			have[what] = append(have[what], l)
		}
	}
	return have
}

// deployTraffic is a pod on node-2 pinging a pod on node-1 five times a
// second, and another on node-2 sending a line every 100 ms over one TCP
// connection to a server on node-1, until stopped.
type deployTraffic struct {
	e                      *env
	target                 string
	pinger, client, server string
	serverIP               string
	start                  time.Time
}

func startDeployTraffic(t *testing.T, e *env, name, target string) *deployTraffic {
	t.Helper()
	tr := &deployTraffic{e: e, target: target, pinger: "ping-" + name, client: "stream-client-" + name, server: "stream-server-" + name}
	e.deployPod(t, tr.server, "node-1", `nc -d -l 9000 | while IFS= read -r l; do echo "$EPOCHREALTIME $l"; done`)
	server := e.waitRunningWithin(t, tr.server, 60*time.Second)
	tr.serverIP = server
	waitListening(t, e, tr.server, 9000)
	e.deployPod(t, tr.pinger, "node-2", `ping -i 0.2 `+target+` & p=$!; while [ ! -e /tmp/stop ]; do sleep 0.1; done; kill -INT $p; wait $p; echo "ping-exit=$?"`)
	// The client waits with bash's read -t on a pipe nobody writes, not a
	// sleep process per line: a fork and exec per line on the two cores the
	// rollout keeps busy stretched the gaps between lines (875 ms once,
	// with no segment retransmitted), close to checkStream's 1 s bound.
	e.deployPod(t, tr.client, "node-2", `exec 3< <(exec sleep 100000); `+
		`{ i=0; while [ ! -e /tmp/stop ]; do echo "line $i"; i=$((i+1)); read -t 0.1 -u 3; done; echo "sent=$i" >&2; } | nc -N `+server+` 9000; echo "nc-exit=$?"`)
	e.waitRunningWithin(t, tr.pinger, 60*time.Second)
	e.waitRunningWithin(t, tr.client, 60*time.Second)
	// Both flowing before anything happens to podnet.
	waitFor(t, 20*time.Second, "ping replies and stream lines flowing", func() (bool, string) {
		ping, _ := e.kubectl("logs", tr.pinger)
		lines, _ := e.kubectl("logs", tr.server)
		return strings.Count(ping, "bytes from") >= 5 && strings.Count(lines, " line ") >= 10, ping + lines
	})
	tr.start = time.Now()
	return tr
}

var (
	pingStats = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)
	pingSeq   = regexp.MustCompile(`bytes from .*seq=(\d+)`)
)

// stopAndCheck stops the traffic a few seconds after what it watched and
// checks that not one ping was lost and the stream arrived whole and in
// order without a stall.
func (tr *deployTraffic) stopAndCheck(t *testing.T) {
	t.Helper()
	e := tr.e
	time.Sleep(3 * time.Second)
	took := time.Since(tr.start)
	// Not one segment of the stream retransmitted: the kernel's own count
	// (ss prints retrans: only when there was one).
	ss, err := e.exec(tr.client, "ss", "-Htin", "dst", tr.serverIP)
	if err != nil || !strings.Contains(ss, tr.serverIP+":9000") {
		t.Errorf("ss in %s does not show the stream's connection to %s:9000: %v\n%s", tr.client, tr.serverIP, err, ss)
	} else if strings.Contains(ss, "retrans:") {
		t.Errorf("the TCP stream retransmitted (a segment was lost):\n%s", ss)
	}
	for _, p := range []string{tr.pinger, tr.client} {
		if out, err := e.exec(p, "touch", "/tmp/stop"); err != nil {
			t.Fatalf("stop %s: %v\n%s", p, err, out)
		}
	}
	for _, p := range []string{tr.pinger, tr.client, tr.server} {
		waitDoneWithin(t, e, p, 30*time.Second)
	}
	ping := podLogs(t, e, tr.pinger)
	m := pingStats.FindStringSubmatch(ping)
	if m == nil {
		t.Fatalf("ping from node-2 to %s on node-1 printed no statistics:\n%s", tr.target, ping)
	}
	sent, _ := strconv.Atoi(m[1])
	got, _ := strconv.Atoi(m[2])
	seqs := map[int]bool{}
	for _, s := range pingSeq.FindAllStringSubmatch(ping, -1) {
		n, _ := strconv.Atoi(s[1])
		seqs[n] = true
	}
	var missing []int
	for i := 0; i < sent; i++ {
		if !seqs[i] {
			missing = append(missing, i)
		}
	}
	// The one sent just before the stop may still be on its way.
	if len(missing) == 1 && missing[0] == sent-1 {
		missing = nil
	}
	if len(missing) > 0 || got < sent-1 {
		t.Errorf("ping from node-2 to %s on node-1 lost %d of %d (seq %v):\n%s", tr.target, sent-got, sent, missing, pingSummary(ping))
	}
	if least := int(took.Seconds() * 5 * 0.8); sent < least {
		t.Errorf("ping sent %d in %s, want at least %d (five a second)", sent, took.Round(time.Second), least)
	}
	t.Logf("ping: %d sent, %d received over %s", sent, got, took.Round(100*time.Millisecond))

	client := podLogs(t, e, tr.client)
	if !strings.Contains(client, "nc-exit=0") {
		t.Errorf("the TCP stream's connection broke:\n%s", client)
	}
	n := regexp.MustCompile(`sent=(\d+)`).FindStringSubmatch(client)
	if n == nil {
		t.Fatalf("the stream client did not say how many lines it sent:\n%s", client)
	}
	lines, _ := strconv.Atoi(n[1])
	checkStream(t, podLogs(t, e, tr.server), lines)
}

// deployPod runs script with bash in an agnhost pod on node.
func (e *env) deployPod(t *testing.T, name, node, script string) {
	t.Helper()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{NodeName: node, RestartPolicy: corev1.RestartPolicyNever, TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{Name: name, Image: deployAgnhost, Command: []string{"/bin/bash", "-c", script}}}}}
	if _, err := e.client.CoreV1().Pods("default").Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (e *env) kubectl(args ...string) (string, error) {
	return e.podnetctl(append([]string{"lab", "kubectl", "--"}, args...)...)
}

// rolloutStatus waits with `kubectl rollout status` for a DaemonSet in
// kube-system.
func (e *env) rolloutStatus(t *testing.T, ds string, d time.Duration) {
	t.Helper()
	start := time.Now()
	out, err := e.kubectl("-n", "kube-system", "rollout", "status", "ds/"+ds, "--timeout="+d.String())
	if err != nil {
		_, desc := podnetPods(t, e)
		t.Fatalf("kubectl rollout status ds/%s: %v\n%s\npodnet's pods:\n%s", ds, err, out, desc)
	}
	t.Logf("rollout of ds/%s complete after %s", ds, time.Since(start).Round(100*time.Millisecond))
}

// podnetPods returns the DaemonSet podnet's pods by node (those not being
// deleted), and a description of them all for failure messages.
func podnetPods(t *testing.T, e *env) (map[string]corev1.Pod, string) {
	t.Helper()
	list, err := e.client.CoreV1().Pods("kube-system").List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=podnet"})
	if err != nil {
		return nil, err.Error()
	}
	out := map[string]corev1.Pod{}
	var desc []string
	for _, p := range list.Items {
		state := string(p.Status.Phase)
		if podReady(&p) {
			state += " Ready"
		}
		if p.DeletionTimestamp != nil {
			state += " deleting"
		} else {
			out[p.Spec.NodeName] = p
		}
		desc = append(desc, fmt.Sprintf("%s on %s: %s %s %s", p.Name, p.Spec.NodeName, state, podWaiting(&p), p.Spec.Containers[0].Image))
	}
	sort.Strings(desc)
	return out, strings.Join(desc, "\n")
}

// deployReady waits until every node has one podnet pod, Running and Ready
// with img, and returns them by node.
func deployReady(t *testing.T, e *env, img string, nodes []string, d time.Duration) map[string]corev1.Pod {
	t.Helper()
	var pods map[string]corev1.Pod
	waitFor(t, d, "a podnet pod Ready on every node", func() (bool, string) {
		var desc string
		pods, desc = podnetPods(t, e)
		if len(pods) != len(nodes) || strings.Count(desc, "\n")+1 != len(nodes) {
			return false, desc
		}
		for _, node := range nodes {
			p, ok := pods[node]
			if !ok || !podReady(&p) || p.Spec.Containers[0].Image != img {
				return false, desc
			}
		}
		return true, desc
	})
	return pods
}

// deployReplaced: every node's podnet pod is a new one, and its podnetd
// adopted the dataplane it found: it changed nothing and failed nothing.
func deployReplaced(t *testing.T, e *env, before, after map[string]corev1.Pod) {
	t.Helper()
	for node, p := range after {
		if p.UID == before[node].UID {
			t.Errorf("%s: podnet pod %s was not replaced", node, p.Name)
			continue
		}
		log, err := e.kubectl("logs", "-n", "kube-system", p.Name, "-c", "podnetd")
		if err != nil || !strings.Contains(log, "backend ready") {
			t.Errorf("%s: %s's log does not show podnetd started: %v\n%s", node, p.Name, err, log)
		}
		for _, l := range strings.Split(log, "\n") {
			if strings.Contains(l, "dataplane synced") || strings.Contains(l, "wrote CNI config") || strings.Contains(l, "level=ERROR") {
				t.Errorf("%s: the new podnetd (%s) changed the dataplane or failed instead of adopting it: %s", node, p.Name, l)
			}
		}
	}
	t.Logf("new podnet pods %s (were %s), each adopting its node's dataplane", podNames(after), podNames(before))
}

func podNames(pods map[string]corev1.Pod) string {
	var names []string
	for node, p := range pods {
		names = append(names, node+"="+p.Name)
	}
	sort.Strings(names)
	return strings.Join(names, " ")
}

// buildPodnetImage builds podnet's image from the lab's binaries under
// another tag — a new build, as a release would be — and pushes it into the
// lab registry. It returns the image's name and its manifest's digest.
func buildPodnetImage(t *testing.T, bin string) (string, string) {
	t.Helper()
	tag, err := lab.PodnetImageTag()
	if err != nil {
		t.Fatal(err)
	}
	tag += "-upgrade-test"
	ctx := context.Background()
	start := time.Now()
	imgs, err := imageset.Build(ctx, imageset.Options{Only: []string{"podnet"}, PodnetBin: bin, PodnetVersion: tag})
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1 {
		t.Fatalf("imageset.Build of podnet gave %d images", len(imgs))
	}
	if _, err := lab.LoadImages(ctx, imgs[0].Archive); err != nil {
		t.Fatal(err)
	}
	name := "docker.io/podnet/podnet:" + tag
	found := false
	for _, n := range imgs[0].Names {
		found = found || n == name
	}
	if !found {
		t.Fatalf("the new build is named %v, not %s", imgs[0].Names, name)
	}
	t.Logf("built %s (%s, cached %v) and pushed it to the lab registry in %s", name, imgs[0].Manifest.Digest, imgs[0].Cached, time.Since(start).Round(100*time.Millisecond))
	return name, string(imgs[0].Manifest.Digest)
}

package lab_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/podnet/podnet/pkg/backend"
	"github.com/podnet/podnet/pkg/ipam"
	"github.com/podnet/podnet/pkg/lab"
	"github.com/podnet/podnet/pkg/wire"
)

// The lab's CNI network (its conflist's name) and where the plugin keeps
// its reservations on every node.
const (
	faultNetwork  = "podnet"
	faultStoreDir = ipam.DefaultDataDir + "/" + faultNetwork
)

// TestLabFaults breaks the real node software under running pods and
// checks what must survive and what must not be left behind: containerd
// killed (pods, their addresses and traffic untouched, new pods still
// created), kubelet killed with a pod deleted and another created while it
// is away (no reservation, veth or netns leaked), 50 pods created and
// deleted in a burst, twice — the second time deleted while still being
// created (unique addresses, nothing leaked), what a crash leaves cleaned
// (containerd killed with CNI ADDs in flight; a reservation whose pod is
// long gone reclaimed by the plugin), and a node's machine torn down and
// rebuilt (a new Node with a new pod subnet, podnet from the DaemonSet,
// routes to the old subnet replaced on every other node).
func TestLabFaults(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("lab test: needs root")
	}
	e := upLab(t)
	e.runServer(t, "web", "node-1", nil)
	webIP := waitReady(t, e, "web", 90*time.Second)
	e.runPod(t, "peer", "node-2", corev1.RestartPolicyAlways, "busybox", []string{"sleep", "3600"})
	peerIP := e.waitRunningWithin(t, "peer", 60*time.Second)

	t.Run("containerd killed: pods keep running, their addresses and traffic; new pods are created", func(t *testing.T) {
		faultContainerdKilled(t, e, webIP, peerIP)
	})
	t.Run("kubelet killed while a pod is deleted and another created: no leaked address, veth or netns", func(t *testing.T) {
		faultKubeletKilled(t, e, webIP)
	})
	t.Run("50 pods created and deleted in a burst: unique addresses, nothing leaked", func(t *testing.T) {
		faultBurst(t, e)
	})
	t.Run("what a crash leaves is cleaned", func(t *testing.T) {
		faultCrashLeftovers(t, e)
	})
	t.Run("a node's machine torn down and rebuilt", func(t *testing.T) {
		faultRebuild(t, e, peerIP)
	})
	e.downLeavesNothing(t)
}

// faultContainerdKilled: containerd on node-1 is killed (SIGKILL) while a
// pod there pings a pod on node-2, a pod on node-2 pings the server on
// node-1 and fetches from it over HTTP five times a second; the lab's
// restart loop brings containerd back. The shims survive, not one ping or
// request fails, kubelet reports the pods exactly as before (same
// container, same address, no restart), and node-1 still starts new pods.
func faultContainerdKilled(t *testing.T, e *env, webIP, peerIP string) {
	before := faultPod(t, e, "web")
	e.runPod(t, "ping-out", "node-1", corev1.RestartPolicyNever, "busybox", []string{"ping", "-c", "100", "-i", "0.2", peerIP})
	e.runPod(t, "ping-in", "node-2", corev1.RestartPolicyNever, "busybox", []string{"ping", "-c", "100", "-i", "0.2", webIP})
	e.runPod(t, "http-in", "node-2", corev1.RestartPolicyNever, "busybox", []string{"sh", "-c", faultHTTPLoop(webIP, 100)})
	for _, p := range []string{"ping-out", "ping-in", "http-in"} {
		e.waitRunningWithin(t, p, 30*time.Second)
	}
	pingOut := faultPod(t, e, "ping-out")
	shims := componentPIDs(t, "node-1", "containerd", "containerd-shim")
	if len(shims) == 0 {
		t.Fatal("no containerd-shim in node-1's containerd cgroup")
	}
	time.Sleep(2 * time.Second)
	old := faultMainPID(t, "node-1", "containerd", "containerd")
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 containerd (pid %d) on node-1: %v", old, err)
	}
	killed := time.Now()
	pid := faultWaitRestarted(t, "node-1", "containerd", "containerd", old, 10*time.Second)
	t.Logf("containerd on node-1 killed (pid %d), running again as pid %d after %s", old, pid, time.Since(killed).Round(10*time.Millisecond))
	for _, s := range shims {
		if !faultAlive(s, "containerd-shim") {
			t.Errorf("containerd-shim pid %d did not survive containerd's death", s)
		}
	}

	for _, p := range []string{"ping-out", "ping-in", "http-in"} {
		waitDoneWithin(t, e, p, 60*time.Second)
	}
	faultPingsAllAnswered(t, e, "ping-out", 100)
	faultPingsAllAnswered(t, e, "ping-in", 100)
	if out := podLogs(t, e, "http-in"); !strings.Contains(out, "http ok=100 fail=0") {
		t.Errorf("HTTP from node-2 to web on node-1 across containerd's restart:\n%s", out)
	} else {
		t.Logf("HTTP: %s", strings.TrimSpace(out))
	}

	// kubelet sees the pods through the new containerd as they were.
	waitFor(t, 30*time.Second, "kubelet reporting web as before, Ready", func() (bool, string) {
		now := faultPod(t, e, "web")
		return now == before && now.ready, fmt.Sprintf("before %+v, now %+v", before, now)
	})
	after := faultPod(t, e, "ping-out")
	if after.uid != pingOut.uid || after.ip != pingOut.ip || after.containerID != pingOut.containerID || after.restarts != 0 {
		t.Errorf("ping-out on node-1 changed across containerd's restart: before %+v, after %+v", pingOut, after)
	}
	e.runPod(t, "after-containerd", "node-1", corev1.RestartPolicyAlways, "busybox", []string{"sleep", "3600"})
	ip := e.waitRunningWithin(t, "after-containerd", 60*time.Second)
	t.Logf("a new pod on node-1 after containerd's restart: %s", ip)
	faultUniqueIPs(t, e)
	faultWaitNodeNet(t, e, "node-1", 30*time.Second)
}

// faultKubeletKilled: kubelet on node-1 is frozen and killed; while it is
// away a pod of node-1 is deleted (at once: grace 0, so only the returning
// kubelet can tear its sandbox down) and a new one is bound to node-1; a
// pod on node-2 pings the server on node-1 throughout. When kubelet is
// back, the server has its address and container, no ping was lost, the
// new pod runs, and node-1 holds exactly the running pods' reservations,
// veths and netns: the deleted pod's are gone.
func faultKubeletKilled(t *testing.T, e *env, webIP string) {
	ctx := context.Background()
	e.runPod(t, "doomed", "node-1", corev1.RestartPolicyAlways, "busybox", []string{"sleep", "3600"})
	doomedIP := e.waitRunningWithin(t, "doomed", 30*time.Second)
	before := faultPod(t, e, "web")
	e.runPod(t, "ping-kubelet", "node-2", corev1.RestartPolicyNever, "busybox", []string{"ping", "-c", "100", "-i", "0.2", webIP})
	e.waitRunningWithin(t, "ping-kubelet", 30*time.Second)
	faultWaitNodeNet(t, e, "node-1", 30*time.Second)

	old := faultMainPID(t, "node-1", "kubelet", "kubelet")
	thaw := freeze(t, "kubelet", "node-1") // the restart loop too: kubelet stays away
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 kubelet (pid %d) on node-1: %v", old, err)
	}
	away := time.Now()
	if err := e.client.CoreV1().Pods("default").Delete(ctx, "doomed", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.CoreV1().Pods("default").Get(ctx, "doomed", metav1.GetOptions{}); err == nil {
		t.Fatal("doomed is still in the API after its deletion with grace 0")
	}
	e.runPod(t, "born", "node-1", corev1.RestartPolicyAlways, "busybox", []string{"sleep", "3600"})
	time.Sleep(5 * time.Second)
	if _, ok := faultReadNodeNet(t, e, "node-1").reservations[doomedIP]; !ok {
		t.Fatalf("doomed's reservation %s went while kubelet was away: the test cannot tell whether kubelet cleans up", doomedIP)
	}
	thaw()
	pid := faultWaitRestarted(t, "node-1", "kubelet", "kubelet", old, 10*time.Second)
	t.Logf("kubelet on node-1 away for %s, running again as pid %d", time.Since(away).Round(100*time.Millisecond), pid)

	bornIP := e.waitRunningWithin(t, "born", 60*time.Second)
	t.Logf("born, bound to node-1 while kubelet was away, runs with %s", bornIP)
	faultWaitNodeNet(t, e, "node-1", 60*time.Second)
	if now := faultPod(t, e, "web"); now != before {
		t.Errorf("web changed across kubelet's restart: before %+v, after %+v", before, now)
	}
	waitDoneWithin(t, e, "ping-kubelet", 60*time.Second)
	faultPingsAllAnswered(t, e, "ping-kubelet", 100)
	faultUniqueIPs(t, e)
}

// faultBurst scales a Deployment of 50 pods on the workers from 0 to 50
// and back, and then again, scaling it down while its pods are still being
// created.
func faultBurst(t *testing.T, e *env) {
	const n = 50
	faultDeployment(t, e, "burst", nil)
	start := time.Now()
	faultScale(t, e, "burst", n)
	waitFor(t, 180*time.Second, fmt.Sprintf("%d burst pods Running", n), func() (bool, string) {
		running, why := faultRunning(t, e, "app=burst")
		return running == n, fmt.Sprintf("%d Running; %s", running, why)
	})
	t.Logf("%d pods Running %s after the scale-up", n, time.Since(start).Round(100*time.Millisecond))
	pods := faultList(t, e, "app=burst")
	perNode := map[string]int{}
	for _, p := range pods {
		perNode[p.Spec.NodeName]++
		cidr := podCIDR(t, e, p.Spec.NodeName)
		if ip, err := netip.ParseAddr(p.Status.PodIP); err != nil || !cidr.Contains(ip) {
			t.Errorf("pod %s on %s has address %q, outside its node's subnet %s", p.Name, p.Spec.NodeName, p.Status.PodIP, cidr)
		}
	}
	t.Logf("burst pods per node: %v", perNode)
	faultUniqueIPs(t, e)
	for _, node := range []string{"node-1", "node-2"} {
		faultWaitNodeNet(t, e, node, 30*time.Second)
	}

	start = time.Now()
	faultScale(t, e, "burst", 0)
	faultWaitGone(t, e, "app=burst", 60*time.Second)
	for _, node := range []string{"node-1", "node-2"} {
		faultWaitNodeNet(t, e, node, 90*time.Second)
	}
	t.Logf("%d pods deleted; their addresses, veths and netns gone %s after the scale-down", n, time.Since(start).Round(100*time.Millisecond))

	// Again, deleted while the sandboxes are still being set up.
	faultScale(t, e, "burst", n)
	waitFor(t, 120*time.Second, "some burst pods Running, others still being created", func() (bool, string) {
		running, why := faultRunning(t, e, "app=burst")
		return running >= 10, fmt.Sprintf("%d Running; %s", running, why)
	})
	running, _ := faultRunning(t, e, "app=burst")
	faultUniqueIPs(t, e)
	faultScale(t, e, "burst", 0)
	t.Logf("scaled down with %d of %d pods Running", running, n)
	faultWaitGone(t, e, "app=burst", 60*time.Second)
	for _, node := range []string{"node-1", "node-2"} {
		faultWaitNodeNet(t, e, node, 120*time.Second)
	}
	if err := e.client.AppsV1().Deployments("default").Delete(context.Background(), "burst", metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
}

// faultCrashLeftovers: what a crash leaves behind on a node goes, and
// nothing live with it.
//
// Neither kubelet nor containerd v2.4 sends CNI GC (containerd's go-cni
// v1.1.14 never calls libcni's GCNetworkList), so the plugin's GC verb is
// not what cleans up in this cluster. Two things do. containerd records a
// sandbox with its netns before the CNI ADD, so when containerd dies with
// ADDs in flight it finds those sandboxes again on restart and kubelet has
// them stopped, each with a CNI DEL. And the plugin itself, on every ADD,
// reclaims reservations older than ipam.StaleAfter whose pod interface is
// gone: the leak a lost sandbox (a runtime's state lost, a node reset
// without a DEL) leaves in the store, since the netns and the veth in it
// vanish with the node's /run but the store on /var/lib does not.
func faultCrashLeftovers(t *testing.T, e *env) {
	t.Run("containerd killed with CNI ADDs in flight", func(t *testing.T) {
		const n = 20
		faultDeployment(t, e, "crash", map[string]string{"kubernetes.io/hostname": "node-1"})
		faultScale(t, e, "crash", n)
		// An ADD lasts milliseconds: look often.
		var inFlight []int
		for deadline := time.Now().Add(60 * time.Second); len(inFlight) == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("no podnet plugin process ran in node-1's containerd cgroup within 60s of the scale-up")
			}
			inFlight = componentPIDs(t, "node-1", "containerd", "podnet")
		}
		old := faultMainPID(t, "node-1", "containerd", "containerd")
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			t.Fatalf("kill -9 containerd (pid %d) on node-1: %v", old, err)
		}
		running, _ := faultRunning(t, e, "app=crash")
		t.Logf("containerd on node-1 killed with %d podnet plugin processes running (%d of %d pods Running)", len(inFlight), running, n)
		faultWaitRestarted(t, "node-1", "containerd", "containerd", old, 10*time.Second)
		waitFor(t, 180*time.Second, fmt.Sprintf("%d crash pods Running on node-1", n), func() (bool, string) {
			running, why := faultRunning(t, e, "app=crash")
			return running == n, fmt.Sprintf("%d Running; %s", running, why)
		})
		faultUniqueIPs(t, e)
		faultWaitNodeNet(t, e, "node-1", 60*time.Second)
		faultScale(t, e, "crash", 0)
		faultWaitGone(t, e, "app=crash", 60*time.Second)
		faultWaitNodeNet(t, e, "node-1", 90*time.Second)
		if err := e.client.AppsV1().Deployments("default").Delete(context.Background(), "crash", metav1.DeleteOptions{}); err != nil {
			t.Error(err)
		}
	})

	t.Run("a reservation whose pod is long gone is reclaimed by the next ADD", func(t *testing.T) {
		cidr := podCIDR(t, e, "node-1")
		stale, young := faultFreeAddr(t, e, "node-1", cidr, 0), faultFreeAddr(t, e, "node-1", cidr, 1)
		long := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
		faultWriteReservation(t, e, "node-1", ipam.Reservation{IP: stale, ContainerID: strings.Repeat("dead", 16), IfName: "eth0",
			PodNamespace: "default", PodName: "lost-in-a-crash", Created: long})
		// An ADD may still be running for a reservation this young.
		faultWriteReservation(t, e, "node-1", ipam.Reservation{IP: young, ContainerID: strings.Repeat("beef", 16), IfName: "eth0",
			PodNamespace: "default", PodName: "being-added", Created: time.Now().UTC().Truncate(time.Second)})
		// A pod running for an hour: its reservation is as old, and its veth
		// is there.
		webRes := faultReservation(t, e, "node-1", faultPod(t, e, "web").ip)
		webRes.Created = long
		faultWriteReservation(t, e, "node-1", webRes)

		// A restart, as after a crash: containerd and kubelet come back.
		for _, c := range []string{"containerd", "kubelet"} {
			old := faultMainPID(t, "node-1", c, c)
			if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			faultWaitRestarted(t, "node-1", c, c, old, 10*time.Second)
		}
		e.runPod(t, "after-crash", "node-1", corev1.RestartPolicyAlways, "busybox", []string{"sleep", "3600"})
		ip := e.waitRunningWithin(t, "after-crash", 60*time.Second)
		held := faultReadNodeNet(t, e, "node-1").reservations
		if r, ok := held[stale.String()]; ok {
			t.Errorf("the stale reservation %s (pod gone, reserved an hour ago) survived the ADD of after-crash (%s): %+v", stale, ip, r)
		}
		if _, ok := held[young.String()]; !ok {
			t.Errorf("the reservation %s, made just now (its ADD may still run), was released", young)
		}
		if r, ok := held[webRes.IP.String()]; !ok || r.ContainerID != webRes.ContainerID {
			t.Errorf("web's hour-old reservation %s, whose veth is there, was released or changed: %+v", webRes.IP, r)
		}
		faultOnNode(t, e, "node-1", fmt.Sprintf("flock %s/lock rm %s/%s", faultStoreDir, faultStoreDir, young))
		faultWaitNodeNet(t, e, "node-1", 30*time.Second)
	})
}

// faultRebuild tears node-1's machine down and builds it again with
// `podnetctl lab node-rebuild`. A Node that came and went first (as nodes
// do) moves node IPAM on, so the new node-1 gets a subnet of its own rather
// than its old one back. The new Node registers and becomes Ready, gets a
// podnet pod from the DaemonSet, the other nodes route its new subnet to it
// and no longer the old one, and pods on it reach pods on the other nodes
// both ways.
func faultRebuild(t *testing.T, e *env, peerIP string) {
	ctx := context.Background()
	oldNode, err := e.client.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	oldCIDR := oldNode.Spec.PodCIDR
	faultNodeComesAndGoes(t, e, "ghost")

	start := time.Now()
	out, err := e.podnetctl("lab", "node-rebuild", "node-1")
	if err != nil {
		t.Fatalf("lab node-rebuild node-1: %v\n%s", err, out)
	}
	t.Logf("lab node-rebuild node-1 took %s:\n%s", time.Since(start).Round(100*time.Millisecond), strings.TrimSpace(out))
	n, err := e.client.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n.UID == oldNode.UID {
		t.Fatalf("node-1's Node is the old object (uid %s): it was not deleted and registered anew", n.UID)
	}
	newCIDR := n.Spec.PodCIDR
	if newCIDR == "" || newCIDR == oldCIDR {
		t.Fatalf("the rebuilt node-1 has pod subnet %q (old %s), want a new one", newCIDR, oldCIDR)
	}
	t.Logf("node-1 registered anew with pod subnet %s (was %s)", newCIDR, oldCIDR)

	waitFor(t, 90*time.Second, "a Ready podnet pod of the DaemonSet on the rebuilt node-1", func() (bool, string) {
		pods, err := e.client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{
			LabelSelector: "app.kubernetes.io/name=podnet", FieldSelector: "spec.nodeName=node-1"})
		if err != nil {
			return false, err.Error()
		}
		for _, p := range pods.Items {
			if podReady(&p) {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d podnet pods on node-1, none Ready", len(pods.Items))
	})
	waitFor(t, 30*time.Second, "node-1's conflist giving its new subnet", func() (bool, string) {
		conf := faultOnNode(t, e, "node-1", "cat /etc/cni/net.d/10-podnet.conflist 2>&1 || true")
		return strings.Contains(conf, `"subnet": "`+newCIDR+`"`), conf
	})
	n, err = e.client.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mac := n.Annotations[backend.AnnotationVTEPMAC]
	vtep := strings.TrimSuffix(newCIDR, "/24")
	oldNet := strings.TrimSuffix(oldCIDR, "/24")
	for _, other := range []string{lab.ControlPlane, "node-2"} {
		waitFor(t, 30*time.Second, other+" routing node-1's new subnet "+newCIDR+" and not the old "+oldCIDR, func() (bool, string) {
			v := faultOverlay(t, e, other, vtep, mac)
			old := faultOnNode(t, e, other, "ip route show "+oldCIDR+"; ip neigh show to "+oldNet+" dev podnet.1")
			return v.complete("192.168.56.11") && strings.TrimSpace(old) == "", v.raw + "old subnet: " + old
		})
	}

	e.runPod(t, "rebuilt", "node-1", corev1.RestartPolicyAlways, "busybox", []string{"sleep", "3600"})
	ip := e.waitRunningWithin(t, "rebuilt", 90*time.Second)
	if a, err := netip.ParseAddr(ip); err != nil || !netip.MustParsePrefix(newCIDR).Contains(a) {
		t.Errorf("a pod on the rebuilt node-1 got %q, outside its new subnet %s", ip, newCIDR)
	}
	if out, err := e.exec("rebuilt", "ping", "-c", "3", "-W", "2", peerIP); err != nil {
		t.Errorf("from the rebuilt node-1 (%s) to peer on node-2 (%s): %v\n%s", ip, peerIP, err, out)
	}
	if out, err := e.exec("peer", "ping", "-c", "3", "-W", "2", ip); err != nil {
		t.Errorf("from peer on node-2 to the rebuilt node-1's pod %s: %v\n%s", ip, err, out)
	}
	// The server bound to node-1 before runs again there, in the new subnet
	// (until the new kubelet reports it, its status is the old one's).
	var webIP string
	waitFor(t, 90*time.Second, "web Ready again on the rebuilt node-1, in its new subnet", func() (bool, string) {
		p, err := e.client.CoreV1().Pods("default").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		webIP = p.Status.PodIP
		a, _ := netip.ParseAddr(webIP)
		return podReady(p) && netip.MustParsePrefix(newCIDR).Contains(a), fmt.Sprintf("%s %q ready=%v %s", p.Status.Phase, webIP, podReady(p), podWaiting(p))
	})
	if out, err := e.exec("peer", "wget", "-qO-", "-T", "5", "http://"+webIP+":8080/hostname"); err != nil || strings.TrimSpace(out) != "web" {
		t.Errorf("from peer on node-2 to web on the rebuilt node-1 (%s): %v: %q", webIP, err, out)
	}
	faultUniqueIPs(t, e)
	faultWaitNodeNet(t, e, "node-1", 60*time.Second)
}

// faultNodeComesAndGoes registers a Node without a machine, waits until
// node IPAM gives it a pod subnet and deletes it.
func faultNodeComesAndGoes(t *testing.T, e *env, name string) {
	t.Helper()
	ctx := context.Background()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := e.client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "node "+name+" given a pod subnet", func() (bool, string) {
		n, err := e.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return n.Spec.PodCIDR != "", "no podCIDR"
	})
	if err := e.client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// faultPodState is what kubelet reports of a pod that must not change
// across a fault.
type faultPodState struct {
	uid         types.UID
	ip          string
	containerID string
	restarts    int32
	ready       bool
}

func faultPod(t *testing.T, e *env, name string) faultPodState {
	t.Helper()
	p, err := e.client.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s := faultPodState{uid: p.UID, ip: p.Status.PodIP, ready: podReady(p)}
	if len(p.Status.ContainerStatuses) == 1 {
		s.containerID, s.restarts = p.Status.ContainerStatuses[0].ContainerID, p.Status.ContainerStatuses[0].RestartCount
	}
	return s
}

// faultHTTPLoop is a shell loop fetching /hostname from a netexec server n
// times, five a second, that ends by printing the counts.
func faultHTTPLoop(ip string, n int) string {
	return fmt.Sprintf(`ok=0; fail=0; i=0; while [ $i -lt %d ]; do `+
		`if [ "$(wget -qO- -T 2 http://%s:8080/hostname)" = web ]; then ok=$((ok+1)); else fail=$((fail+1)); fi; `+
		`i=$((i+1)); sleep 0.2; done; echo "http ok=$ok fail=$fail"`, n, ip)
}

// faultPingsAllAnswered checks a finished ping pod's summary: n sent, n
// received.
func faultPingsAllAnswered(t *testing.T, e *env, pod string, n int) {
	t.Helper()
	out := podLogs(t, e, pod)
	m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) (packets )?received`).FindStringSubmatch(out)
	if m == nil || m[1] != strconv.Itoa(n) || m[2] != strconv.Itoa(n) {
		t.Errorf("%s lost pings (want %d of %d):\n%s", pod, n, n, pingSummary(out))
		return
	}
	t.Logf("%s: %s", pod, strings.TrimSpace(pingSummary(out)))
}

// faultMainPIDs are the processes named comm in the lab component's
// cgroup whose parent is not named comm too: the component itself, not a
// child it has forked and not yet exec'd (containerd forks shims and CNI
// plugins all the time).
func faultMainPIDs(t *testing.T, node, component, comm string) []int {
	t.Helper()
	var out []int
	for _, pid := range componentPIDs(t, node, component, comm) {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:]))
		if len(f) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(f[1]); err == nil && !faultAlive(ppid, comm) {
			out = append(out, pid)
		}
	}
	return out
}

// faultMainPID is the pid of the component itself.
func faultMainPID(t *testing.T, node, component, comm string) int {
	t.Helper()
	pids := faultMainPIDs(t, node, component, comm)
	if len(pids) != 1 {
		t.Fatalf("%d %s processes (not forked by another) in %s's %s, want 1: %v", len(pids), comm, node, component, pids)
	}
	return pids[0]
}

// faultWaitRestarted waits until the lab's restart loop has started the
// component again, and returns its new pid.
func faultWaitRestarted(t *testing.T, node, component, comm string, old int, d time.Duration) int {
	t.Helper()
	var pid int
	waitFor(t, d, component+" on "+node+" running again", func() (bool, string) {
		pids := faultMainPIDs(t, node, component, comm)
		if len(pids) == 1 && pids[0] != old {
			pid = pids[0]
			return true, ""
		}
		return false, fmt.Sprintf("%s processes: %v (killed: %d)", comm, pids, old)
	})
	return pid
}

// faultAlive reports whether pid is a live process named comm.
func faultAlive(pid int, comm string) bool {
	c, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.TrimSpace(string(c)) == comm
}

// faultOnNode runs a shell script on a lab machine and fails t (the
// caller's, subtest or not) when it fails.
func faultOnNode(t *testing.T, e *env, node, script string) string {
	t.Helper()
	out, err := e.podnetctl("lab", "node", node, "--", "/bin/sh", "-c", script)
	if err != nil {
		t.Fatalf("on %s: %s: %v\n%s", node, script, err, out)
	}
	return out
}

// faultDeployment creates a Deployment of busybox pods (no replicas yet)
// labelled app=name, deleted at once (grace 0).
func faultDeployment(t *testing.T, e *env, name string, nodeSelector map[string]string) {
	t.Helper()
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: appsv1.DeploymentSpec{Replicas: new(int32), Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{NodeSelector: nodeSelector, TerminationGracePeriodSeconds: new(int64),
					Containers: []corev1.Container{{Name: "c", Image: "busybox", Args: []string{"sleep", "3600"}}}}}}}
	if _, err := e.client.AppsV1().Deployments("default").Create(context.Background(), d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func faultScale(t *testing.T, e *env, name string, n int) {
	t.Helper()
	patch := []byte(fmt.Sprintf(`{"spec":{"replicas":%d}}`, n))
	if _, err := e.client.AppsV1().Deployments("default").Patch(context.Background(), name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("scale %s to %d: %v", name, n, err)
	}
}

func faultList(t *testing.T, e *env, selector string) []corev1.Pod {
	t.Helper()
	pods, err := e.client.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	return pods.Items
}

// faultRunning counts the selected pods Running with an address, and says
// what the others wait for.
func faultRunning(t *testing.T, e *env, selector string) (int, string) {
	t.Helper()
	running := 0
	waiting := map[string]int{}
	for _, p := range faultList(t, e, selector) {
		if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
			running++
			continue
		}
		why := string(p.Status.Phase)
		if w := podWaiting(&p); w != "" {
			why += " (" + w + ")"
		}
		waiting[why]++
	}
	return running, fmt.Sprint(waiting)
}

func faultWaitGone(t *testing.T, e *env, selector string, d time.Duration) {
	t.Helper()
	waitFor(t, d, "pods "+selector+" gone", func() (bool, string) {
		n := len(faultList(t, e, selector))
		return n == 0, fmt.Sprintf("%d left", n)
	})
}

// faultUniqueIPs checks that no two pods of the cluster with their own
// network share an address.
func faultUniqueIPs(t *testing.T, e *env) {
	t.Helper()
	pods, err := e.client.CoreV1().Pods("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	owner := map[string]string{}
	for _, p := range pods.Items {
		if p.Spec.HostNetwork || p.Status.PodIP == "" || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		name := p.Namespace + "/" + p.Name
		if o, dup := owner[p.Status.PodIP]; dup {
			t.Errorf("pods %s and %s both have address %s", o, name, p.Status.PodIP)
		}
		owner[p.Status.PodIP] = name
	}
}

// faultNodeNet is what a node holds of the pod network: the plugin's
// reservations, podnet's host veths (by name: the attachment in their
// alias, the netns of their peer) and the pods' network namespaces.
type faultNodeNet struct {
	reservations map[string]ipam.Reservation
	veths        map[string]faultVeth
	netns        map[string]bool
	raw          string
}

type faultVeth struct {
	alias, master, peerNetNS string
}

// faultReadNodeNet reads a node's pod network state in one go.
func faultReadNodeNet(t *testing.T, e *env, node string) faultNodeNet {
	t.Helper()
	n, err := faultTryReadNodeNet(e, node)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// faultTryReadNodeNet reads a node's pod network state in one go; pods
// coming and going while it reads may make that fail (a reservation file
// gone between listing and reading, a veth whose peer netns just went).
func faultTryReadNodeNet(e *env, node string) (faultNodeNet, error) {
	script := `d=` + faultStoreDir + `; printf '['; sep=; for f in "$d"/*; do case "${f##*/}" in [0-9]*) ;; *) continue ;; esac; ` +
		`r=$(cat "$f" 2>/dev/null) || continue; printf '%s%s' "$sep" "$r"; sep=,; done; printf ']\n@@\n'; ` +
		`ip -j link show type veth 2>/dev/null; echo @@; ip -j netns list 2>/dev/null; echo`
	out, err := e.podnetctl("lab", "node", node, "--", "/bin/sh", "-c", script)
	if err != nil {
		return faultNodeNet{}, fmt.Errorf("read the pod network of %s: %v\n%s", node, err, out)
	}
	parts := strings.Split(out, "@@\n")
	if len(parts) != 3 {
		return faultNodeNet{}, fmt.Errorf("unexpected output on %s:\n%s", node, out)
	}
	var errs []string
	decode := func(s string, v any) {
		if s = strings.TrimSpace(s); s == "" {
			s = "[]"
		}
		if err := json.Unmarshal([]byte(s), v); err != nil {
			errs = append(errs, fmt.Sprintf("decode %s's state: %v\n%s", node, err, s))
		}
	}
	var rs []ipam.Reservation
	var links []struct {
		Name    string `json:"ifname"`
		Group   string `json:"group"`
		Master  string `json:"master"`
		Alias   string `json:"ifalias"`
		NetNSID *int   `json:"link_netnsid"`
	}
	var nss []struct {
		Name string `json:"name"`
		ID   *int   `json:"id"`
	}
	decode(parts[0], &rs)
	decode(parts[1], &links)
	decode(parts[2], &nss)
	if len(errs) > 0 {
		return faultNodeNet{}, fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	n := faultNodeNet{reservations: map[string]ipam.Reservation{}, veths: map[string]faultVeth{}, netns: map[string]bool{}, raw: out}
	for _, r := range rs {
		n.reservations[r.IP.String()] = r
	}
	byID := map[int]string{}
	for _, ns := range nss {
		if strings.HasPrefix(ns.Name, "cni-") {
			n.netns[ns.Name] = true
		}
		if ns.ID != nil {
			byID[*ns.ID] = ns.Name
		}
	}
	group := strconv.FormatUint(uint64(wire.Group(faultNetwork)), 10)
	for _, l := range links {
		if l.Group != group && l.Master != "cni0" {
			continue // the machine's eth1, anyone else's
		}
		v := faultVeth{alias: l.Alias, master: l.Master}
		if l.NetNSID != nil {
			v.peerNetNS = byID[*l.NetNSID]
		}
		n.veths[l.Name] = v
	}
	return n, nil
}

// problems compares a node's pod network with the pods bound to it that
// have a network of their own and are not finished: exactly their
// addresses are reserved, each for its pod; exactly their veths exist, on
// cni0, each with its peer in a pod netns; exactly those netns exist.
func (n faultNodeNet) problems(pods []corev1.Pod) []string {
	var out []string
	byIP := map[string]string{}
	for _, p := range pods {
		if p.Status.PodIP == "" {
			out = append(out, fmt.Sprintf("pod %s/%s has no address yet", p.Namespace, p.Name))
			continue
		}
		byIP[p.Status.PodIP] = p.Namespace + "/" + p.Name
	}
	for ip, pod := range byIP {
		r, ok := n.reservations[ip]
		if !ok {
			out = append(out, fmt.Sprintf("pod %s's address %s is not reserved", pod, ip))
		} else if r.PodNamespace+"/"+r.PodName != pod {
			out = append(out, fmt.Sprintf("address %s of pod %s is reserved for %s/%s", ip, pod, r.PodNamespace, r.PodName))
		}
	}
	wantVeths := map[string]bool{}
	for ip, r := range n.reservations {
		if _, ok := byIP[ip]; !ok {
			out = append(out, fmt.Sprintf("leaked reservation %s (%s/%s, container %.12s, %s)", ip, r.PodNamespace, r.PodName, r.ContainerID, r.Created.Format(time.RFC3339)))
		}
		wantVeths[wire.HostName(r.ContainerID, r.IfName)] = true
	}
	usedNetNS := map[string]bool{}
	for name, v := range n.veths {
		switch {
		case !wantVeths[name]:
			out = append(out, fmt.Sprintf("leaked veth %s (%s, peer in %q)", name, v.alias, v.peerNetNS))
		case v.master != "cni0":
			out = append(out, fmt.Sprintf("veth %s (%s) is not on cni0", name, v.alias))
		case !n.netns[v.peerNetNS]:
			out = append(out, fmt.Sprintf("veth %s (%s) has its peer in %q, not a pod netns", name, v.alias, v.peerNetNS))
		}
		usedNetNS[v.peerNetNS] = true
	}
	for name := range wantVeths {
		if _, ok := n.veths[name]; !ok {
			out = append(out, "no veth "+name+" for a reservation")
		}
	}
	for ns := range n.netns {
		if !usedNetNS[ns] {
			out = append(out, "leaked network namespace "+ns)
		}
	}
	sort.Strings(out)
	return out
}

// faultNodePods are the pods bound to node that hold a network of their
// own: not host-network, not finished.
func faultNodePods(t *testing.T, e *env, node string) []corev1.Pod {
	t.Helper()
	pods, err := e.client.CoreV1().Pods("").List(context.Background(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		t.Fatal(err)
	}
	var out []corev1.Pod
	for _, p := range pods.Items {
		if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		out = append(out, p)
	}
	return out
}

// faultWaitNodeNet waits until the node holds exactly what its pods need.
func faultWaitNodeNet(t *testing.T, e *env, node string, d time.Duration) {
	t.Helper()
	waitFor(t, d, node+" holding exactly its pods' reservations, veths and netns", func() (bool, string) {
		pods := faultNodePods(t, e, node)
		n, err := faultTryReadNodeNet(e, node)
		if err != nil {
			return false, err.Error()
		}
		p := n.problems(pods)
		if len(p) == 0 {
			t.Logf("%s: %d pods, %d reservations, %d veths, %d netns", node, len(pods), len(n.reservations), len(n.veths), len(n.netns))
		}
		return len(p) == 0, strings.Join(p, "\n")
	})
}

// faultFreeAddr is the k-th address from the top of node's subnet that no
// reservation holds (the plugin hands addresses out from the bottom).
func faultFreeAddr(t *testing.T, e *env, node string, cidr netip.Prefix, k int) netip.Addr {
	t.Helper()
	held := faultReadNodeNet(t, e, node).reservations
	b := cidr.Addr().As4()
	for last := 250; last > 200; last-- {
		b[3] = byte(last)
		a := netip.AddrFrom4(b)
		if _, ok := held[a.String()]; ok {
			continue
		}
		if k == 0 {
			return a
		}
		k--
	}
	t.Fatalf("no free address near the top of %s on %s", cidr, node)
	return netip.Addr{}
}

// faultWriteReservation writes a reservation into node's store as the
// plugin does, under the store's lock.
func faultWriteReservation(t *testing.T, e *env, node string, r ipam.Reservation) {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	path := faultStoreDir + "/" + r.IP.String()
	faultOnNode(t, e, node, fmt.Sprintf(`flock %[1]s/lock sh -c 'printf "%%s" "$1" > %[1]s/.tmp-faults && mv %[1]s/.tmp-faults "$2"' - '%[2]s' %[3]s`,
		faultStoreDir, b, path))
}

// faultReservation reads the reservation of ip in node's store.
func faultReservation(t *testing.T, e *env, node, ip string) ipam.Reservation {
	t.Helper()
	r, ok := faultReadNodeNet(t, e, node).reservations[ip]
	if !ok {
		t.Fatalf("no reservation of %s on %s", ip, node)
	}
	return r
}

// faultOverlay is overlayOf, failing the caller's t.
func faultOverlay(t *testing.T, e *env, node, vtepIP, mac string) overlayView {
	t.Helper()
	out := faultOnNode(t, e, node, "ip route show "+vtepIP+"/24; echo @@; ip neigh show to "+vtepIP+" dev podnet.1; echo @@; bridge fdb show dev podnet.1 | grep -i '^"+mac+" ' || true")
	parts := strings.SplitN(out, "@@\n", 3)
	if len(parts) != 3 {
		t.Fatalf("unexpected output on %s:\n%s", node, out)
	}
	return overlayView{route: strings.TrimSpace(parts[0]), neigh: strings.TrimSpace(parts[1]), fdb: strings.TrimSpace(parts[2]),
		raw: "route: " + parts[0] + "neigh: " + parts[1] + "fdb:   " + parts[2]}
}

package nodeagent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/podnet/podnet/pkg/lab/cgroup"
	"github.com/podnet/podnet/pkg/lab/images"
)

// podState is what the agent runs for one pod.
type podState struct {
	uid        types.UID
	namespace  string
	name       string
	hostname   string
	sb         *sandbox
	resolv     string
	hosts      string
	volumes    map[string]string // volume name → its directory
	containers map[string]*ctr
	lastStatus string // the status last sent, to skip identical updates
	// volumesSynced is when the volumes were last projected (pod loop
	// only).
	volumesSynced time.Time
}

// ctr is one container: a process tree in its own cgroup.
type ctr struct {
	spec     corev1.Container
	prog     images.Program
	imageErr error
	// configErr is why the container could not be set up (its mounts or
	// environment: kubelet's CreateContainerConfigError); retried.
	configErr error
	running   bool
	pid       int // of the container's main process, while running
	started   time.Time
	restarts  int32
	last      *corev1.ContainerStateTerminated
	nextTry   time.Time
	backoff   time.Duration
}

// runPods runs the pods bound to this node until ctx ends: an informer marks
// the state dirty and one loop reconciles every pod (level-triggered).
func (a *Agent) runPods(ctx context.Context) {
	dirty := make(chan struct{}, 1)
	poke := func() {
		select {
		case dirty <- struct{}{}:
		default:
		}
	}
	f := informers.NewSharedInformerFactoryWithOptions(a.client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", a.cfg.NodeName).String()
	}))
	inf := f.Core().V1().Pods().Informer()
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { poke() }, UpdateFunc: func(any, any) { poke() }, DeleteFunc: func(any) { poke() }})
	f.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return
	}
	a.exited = poke
	a.probes = newProbeManager(nsenterExec, poke, a.log)
	defer a.probes.Close()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	cniTick := time.NewTicker(cniInterval)
	defer cniTick.Stop()
	for {
		a.syncPods(ctx, inf.GetStore())
		select {
		case <-ctx.Done():
			return // pods keep running: the agent may be restarted
		case <-dirty:
		case <-tick.C:
		case <-cniTick.C:
			a.checkAndGC(ctx)
		}
	}
}

func (a *Agent) syncPods(ctx context.Context, store cache.Store) {
	pods := a.pods
	seen := map[types.UID]bool{}
	for _, obj := range store.List() {
		pod := obj.(*corev1.Pod)
		seen[pod.UID] = true
		ps := pods[pod.UID]
		switch {
		case pod.DeletionTimestamp != nil:
			if ps != nil {
				a.stopPod(ctx, ps, gracePeriod(pod))
				a.forget(pod.UID)
			} else {
				a.abandon(pod.UID)
			}
			err := a.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name,
				metav1.DeleteOptions{GracePeriodSeconds: new(int64), Preconditions: &metav1.Preconditions{UID: &pod.UID}})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				a.log.Warn("delete pod", "pod", pod.Namespace+"/"+pod.Name, "err", err)
			}
		case ps == nil:
			if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed || !a.mayStart(pod.UID) {
				continue
			}
			ps, err := a.startPod(ctx, pod)
			if err != nil {
				a.log.Warn("start pod", "pod", pod.Namespace+"/"+pod.Name, "err", err)
				a.reportSandboxError(ctx, pod, err)
				a.startFailed(pod.UID)
				continue
			}
			delete(a.retries, pod.UID)
			a.mu.Lock()
			a.pods[pod.UID] = ps
			a.mu.Unlock()
			a.reconcile(ctx, pod, ps)
		default:
			a.refreshVolumes(ctx, pod, ps)
			a.reconcile(ctx, pod, ps)
		}
	}
	for uid := range a.retries {
		if !seen[uid] {
			a.abandon(uid)
		}
	}
	a.mu.Lock()
	var gone []*podState
	for uid, ps := range pods {
		if !seen[uid] { // deleted without grace
			gone = append(gone, ps)
		}
	}
	a.mu.Unlock()
	for _, ps := range gone {
		a.stopPod(ctx, ps, 0)
		a.forget(ps.uid)
	}
}

func (a *Agent) forget(uid types.UID) {
	a.mu.Lock()
	delete(a.pods, uid)
	a.mu.Unlock()
}

func gracePeriod(pod *corev1.Pod) time.Duration {
	if pod.DeletionGracePeriodSeconds != nil {
		return time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	}
	return 30 * time.Second
}

// startPod makes the pod's volumes, then its sandbox (so that a volume
// that cannot be made costs no network attachment), and resolves every
// container's image.
func (a *Agent) startPod(ctx context.Context, pod *corev1.Pod) (*podState, error) {
	info := podInfo{hostIP: a.cfg.NodeIP.String()}
	if _, err := a.setupVolumes(ctx, pod, info); err != nil {
		return nil, err
	}
	sb, err := a.createSandbox(ctx, pod)
	if err != nil {
		return nil, err
	}
	// Again with the pod's IP, for the downward API's status.podIP.
	info.podIP = sb.ips[0].String()
	vols, err := a.setupVolumes(ctx, pod, info)
	if err != nil {
		_ = a.deleteSandbox(ctx, sb)
		return nil, err
	}
	resolv, hosts, err := a.writePodFiles(pod, sb.ips[0])
	if err != nil {
		_ = a.deleteSandbox(ctx, sb)
		return nil, err
	}
	ps := &podState{uid: pod.UID, namespace: pod.Namespace, name: pod.Name, hostname: podHostname(pod), sb: sb,
		resolv: resolv, hosts: hosts, volumes: vols, containers: map[string]*ctr{}, volumesSynced: time.Now()}
	for _, c := range pod.Spec.Containers {
		var ports []int32
		for _, p := range c.Ports {
			ports = append(ports, p.ContainerPort)
		}
		prog, err := images.Resolve(c.Image, c.Command, c.Args, ports)
		ps.containers[c.Name] = &ctr{spec: c, prog: prog, imageErr: err}
	}
	a.log.Info("pod sandbox ready", "pod", pod.Namespace+"/"+pod.Name, "netns", sb.netns, "ip", sb.ips[0])
	return ps, nil
}

// podGroup is the cgroup of a pod's container (name), of a whole pod (name
// ""), or of every pod of the node (uid and name "").
func (a *Agent) podGroup(uid types.UID, name string) (cgroup.Group, error) {
	root, err := cgroup.Root(filepath.Join("podnet-lab", a.cfg.NodeName, "pods", string(uid)))
	if err != nil {
		return cgroup.Group{}, err
	}
	if name == "" {
		return root, nil
	}
	return root.Child(name)
}

// reconcile starts containers that should run, restarts them per the
// restart policy with kubelet's back-off, and reports status.
func (a *Agent) reconcile(ctx context.Context, pod *corev1.Pod, ps *podState) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	for _, c := range ps.containers {
		if c.running {
			if failed, msg := a.probes.TakeLivenessFailure(probeKey(ps, c)); failed {
				a.log.Info("restarting container", "pod", pod.Namespace+"/"+pod.Name, "container", c.spec.Name, "reason", msg)
				a.killContainer(ps, c, pod)
			}
			continue
		}
		if c.imageErr != nil || now.Before(c.nextTry) {
			continue
		}
		if c.last != nil && !shouldRestart(pod.Spec.RestartPolicy, c.last.ExitCode) {
			continue
		}
		if err := a.startContainer(ctx, pod, ps, c); err != nil {
			a.log.Warn("start container", "pod", pod.Namespace+"/"+pod.Name, "container", c.spec.Name, "err", err)
			c.configErr, c.nextTry = err, now.Add(10*time.Second)
		}
	}
	a.reportStatus(ctx, pod, ps)
}

func shouldRestart(p corev1.RestartPolicy, code int32) bool {
	switch p {
	case corev1.RestartPolicyNever:
		return false
	case corev1.RestartPolicyOnFailure:
		return code != 0
	}
	return true
}

// startContainer runs the container's program in the pod's network
// namespace, in a mount and UTS namespace of its own where the volumes are
// mounted, /etc/resolv.conf and /etc/hosts are the pod's and the hostname
// is the pod's.
func (a *Agent) startContainer(ctx context.Context, pod *corev1.Pod, ps *podState, c *ctr) error {
	cmd, err := a.containerCmd(ctx, pod, ps, c)
	if err != nil {
		return err
	}
	// One log file per container instance, as kubelet keeps them
	// (logs/<container>/<restart count>.log): `kubectl logs` shows the
	// current instance, `--previous` the one before.
	n := c.restarts
	if c.last != nil {
		n++
	}
	logPath := a.logPath(ps, c.spec.Name, n)
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", c.prog, err)
	}
	logf.Close()
	if c.last != nil {
		c.restarts++
	}
	c.configErr = nil
	c.running, c.started, c.pid = true, time.Now(), cmd.Process.Pid
	a.probes.Start(probeKey(ps, c), c.spec, probeTarget{PodIP: ps.sb.ips[0], PID: c.pid, StartedAt: c.started})
	go a.waitContainer(cmd, ps, c)
	return nil
}

// containerCmd is the command that runs a container: into its cgroup, the
// pod's network namespace, new mount and UTS namespaces, the setup script
// (containerSetup), then the program with the container's environment.
func (a *Agent) containerCmd(ctx context.Context, pod *corev1.Pod, ps *podState, c *ctr) (*exec.Cmd, error) {
	g, err := a.podGroup(ps.uid, c.spec.Name)
	if err != nil {
		return nil, err
	}
	plan, scratch, err := a.containerMounts(ps, c.spec)
	if err != nil {
		return nil, err
	}
	info := podInfo{podIP: ps.sb.ips[0].String(), hostIP: a.cfg.NodeIP.String()}
	env, err := specEnv(ctx, a.sources, pod, info, c.spec)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", c.spec.Name, err)
	}
	argv := []string{c.prog.Path}
	if c.prog.Builtin != "" {
		self, _ := os.Executable()
		argv = []string{self, "lab", "run-builtin", c.prog.Builtin}
	}
	argv = append(argv, c.prog.Args...)
	script := containerSetup(plan, scratch, ps.resolv, ps.hosts, ps.hostname, c.spec.WorkingDir)
	full := append([]string{"nsenter", "--net=" + ps.sb.path(), "--", "unshare", "--mount", "--uts", "--propagation", "private", "--",
		"/bin/sh", "-c", script, "-"}, argv...)
	full = g.Wrap(full...)
	cmd := exec.Command(full[0], full[1:]...)
	cmd.Dir = "/"
	cmd.Env = mergeEnv([]string{"PATH=" + images.ContainerPATH, "HOSTNAME=" + ps.hostname,
		"KUBERNETES_SERVICE_HOST=10.96.0.1", "KUBERNETES_SERVICE_PORT=443"}, env)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	return cmd, nil
}

// mergeEnv is base with env's variables added, a name in env replacing
// the same name in base (the pod spec's env wins, as in kubelet).
func mergeEnv(base, env []string) []string {
	out := slices.Clone(base)
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		out = slices.DeleteFunc(out, func(s string) bool { return strings.HasPrefix(s, name+"=") })
		out = append(out, kv)
	}
	return out
}

// waitContainer records the container's exit.
func (a *Agent) waitContainer(cmd *exec.Cmd, ps *podState, c *ctr) {
	err := cmd.Wait()
	code := int32(0)
	if ee, ok := err.(*exec.ExitError); ok {
		code = int32(ee.ExitCode())
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int32(ws.Signal())
		}
	} else if err != nil {
		code = 128
	}
	a.probes.Stop(probeKey(ps, c))
	a.containerExited(c, code)
}

func probeKey(ps *podState, c *ctr) string { return string(ps.uid) + "/" + c.spec.Name }

// killContainer stops one container (SIGTERM, the pod's grace period,
// SIGKILL); its exit then takes the restart path of the restart policy.
func (a *Agent) killContainer(ps *podState, c *ctr, pod *corev1.Pod) {
	g, err := a.podGroup(ps.uid, c.spec.Name)
	if err != nil {
		return
	}
	grace := 30 * time.Second
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
	}
	go func() {
		if err := g.Stop(grace); err != nil {
			a.log.Warn("kill container", "container", c.spec.Name, "err", err)
		}
	}()
}

// nsenterExec runs cmd inside a container's network, mount and UTS
// namespaces (for exec probes).
func nsenterExec(ctx context.Context, pid int, cmd []string) (int, string, error) {
	args := append([]string{"-t", strconv.Itoa(pid), "-n", "-m", "-u", "--"}, cmd...)
	out, err := exec.CommandContext(ctx, "nsenter", args...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out), nil
	}
	if err != nil {
		return 0, string(out), err
	}
	return 0, string(out), nil
}

func (a *Agent) logPath(ps *podState, container string, instance int32) string {
	return filepath.Join(a.cfg.PodDir, string(ps.uid), "logs", container, strconv.Itoa(int(instance))+".log")
}

func (a *Agent) containerExited(c *ctr, code int32) {
	a.mu.Lock()
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	c.running, c.pid = false, 0
	c.last = &corev1.ContainerStateTerminated{ExitCode: code, Reason: reason,
		StartedAt: metav1.NewTime(c.started), FinishedAt: metav1.Now(), ContainerID: "podnet-lab://" + strconv.FormatInt(c.started.UnixNano(), 16)}
	// kubelet's back-off: 10 s doubling to 5 min, reset after 10 min of running.
	if time.Since(c.started) > 10*time.Minute || c.backoff == 0 {
		c.backoff = 10 * time.Second
	} else if c.backoff < 5*time.Minute {
		c.backoff *= 2
	}
	c.nextTry = time.Now().Add(c.backoff)
	a.mu.Unlock()
	if a.exited != nil {
		a.exited()
	}
}

// stopPod stops every container (SIGTERM, grace, SIGKILL), then CNI DEL.
func (a *Agent) stopPod(ctx context.Context, ps *podState, grace time.Duration) {
	for _, c := range ps.containers {
		a.probes.Stop(probeKey(ps, c))
	}
	if g, err := a.podGroup(ps.uid, ""); err == nil {
		if err := g.Remove(grace); err != nil {
			a.log.Warn("stop pod", "pod", ps.namespace+"/"+ps.name, "err", err)
		}
	}
	if err := a.deleteSandbox(ctx, ps.sb); err != nil {
		a.log.Warn("delete sandbox", "pod", ps.namespace+"/"+ps.name, "err", err)
	}
	_ = os.RemoveAll(filepath.Join(a.cfg.PodDir, string(ps.uid)))
	a.sources.tokens.forget(ps.uid)
	a.log.Info("pod stopped", "pod", ps.namespace+"/"+ps.name)
}

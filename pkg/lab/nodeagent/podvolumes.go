package nodeagent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// volumeResync is how often the agent projects a running pod's volumes
// again (kubelet's pod sync period): changed ConfigMaps and Secrets reach
// the containers, tokens are refreshed when due.
const volumeResync = time.Minute

// mountError is a pod that cannot start because a volume cannot be made
// (kubelet's FailedMount): a missing ConfigMap, a denied token request.
type mountError struct{ err error }

func (e *mountError) Error() string { return e.err.Error() }
func (e *mountError) Unwrap() error { return e.err }

func (a *Agent) podVolumeDir(uid types.UID, name string) string {
	return filepath.Join(a.cfg.PodDir, string(uid), "volumes", name)
}

// setupVolumes makes the pod's volumes under its directory, before its
// sandbox exists (as kubelet mounts volumes first): emptyDirs empty, the
// others with their files. It returns each volume's directory.
func (a *Agent) setupVolumes(ctx context.Context, pod *corev1.Pod, info podInfo) (map[string]string, error) {
	dirs := map[string]string{}
	for _, v := range pod.Spec.Volumes {
		dir := a.podVolumeDir(pod.UID, v.Name)
		if v.EmptyDir != nil {
			// World-writable, as kubelet makes it; Medium: Memory is a
			// directory too (the lab has no per-pod tmpfs to account).
			if err := os.MkdirAll(dir, 0o777); err != nil {
				return nil, &mountError{fmt.Errorf("volume %q: %w", v.Name, err)}
			}
			if err := os.Chmod(dir, 0o777); err != nil {
				return nil, &mountError{fmt.Errorf("volume %q: %w", v.Name, err)}
			}
			dirs[v.Name] = dir
			continue
		}
		p, err := projectVolume(ctx, a.sources, pod, info, v)
		if err != nil {
			return nil, &mountError{err}
		}
		if _, err := writeAtomic(dir, p); err != nil {
			return nil, &mountError{fmt.Errorf("volume %q: %w", v.Name, err)}
		}
		dirs[v.Name] = dir
	}
	return dirs, nil
}

// refreshVolumes projects a running pod's volumes again once volumeResync
// has passed. A source that fails keeps the files it had, as in kubelet.
func (a *Agent) refreshVolumes(ctx context.Context, pod *corev1.Pod, ps *podState) {
	if time.Since(ps.volumesSynced) < volumeResync {
		return
	}
	ps.volumesSynced = time.Now()
	info := podInfo{podIP: ps.sb.ips[0].String(), hostIP: a.cfg.NodeIP.String()}
	for _, v := range pod.Spec.Volumes {
		if !isPayloadVolume(v) {
			continue
		}
		p, err := projectVolume(ctx, a.sources, pod, info, v)
		if err == nil {
			var changed bool
			if changed, err = writeAtomic(a.podVolumeDir(pod.UID, v.Name), p); changed && err == nil {
				a.log.Info("volume updated", "pod", pod.Namespace+"/"+pod.Name, "volume", v.Name)
			}
		}
		if err != nil {
			a.log.Warn("refresh volume", "pod", pod.Namespace+"/"+pod.Name, "volume", v.Name, "err", err)
		}
	}
}

// containerMounts plans a container's mount namespace: its volume mounts,
// and the scratch directory for its private overlays.
func (a *Agent) containerMounts(ps *podState, c corev1.Container) (mountPlan, string, error) {
	plan, err := planMounts(c, ps.volumes, osFS{}, a.cfg.NodeDirs, filepath.Join(a.cfg.PodDir, string(ps.uid)))
	if err != nil {
		return mountPlan{}, "", err
	}
	scratch := filepath.Join(a.cfg.PodDir, string(ps.uid), "scratch", c.Name)
	if len(plan.overlays) > 0 {
		if err := os.MkdirAll(scratch, 0o700); err != nil {
			return mountPlan{}, "", fmt.Errorf("create %s: %w", scratch, err)
		}
	}
	return plan, scratch, nil
}

// osFS is the node's filesystem, as the agent sees it.
type osFS struct{}

func (osFS) stat(p string) (bool, bool) {
	fi, err := os.Stat(p)
	return err == nil, err == nil && fi.IsDir()
}

func (osFS) realPath(p string) (string, error) { return filepath.EvalSymlinks(p) }

func (osFS) mounts() (mountTable, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return mountTable{}, fmt.Errorf("read the mount table: %w", err)
	}
	return parseMountInfo(string(b)), nil
}

// startRetry is the back-off of a pod whose start failed: 1 s doubling
// to 30 s, so a missing ConfigMap is asked for again without flooding.
type startRetry struct {
	next  time.Time
	delay time.Duration
}

func (a *Agent) mayStart(uid types.UID) bool {
	r, ok := a.retries[uid]
	return !ok || !time.Now().Before(r.next)
}

func (a *Agent) startFailed(uid types.UID) {
	r := a.retries[uid]
	r.delay = min(max(2*r.delay, time.Second), 30*time.Second)
	r.next = time.Now().Add(r.delay)
	a.retries[uid] = r
}

// abandon forgets a pod that never started: its files and tokens.
func (a *Agent) abandon(uid types.UID) {
	delete(a.retries, uid)
	a.sources.tokens.forget(uid)
	_ = os.RemoveAll(filepath.Join(a.cfg.PodDir, string(uid)))
}

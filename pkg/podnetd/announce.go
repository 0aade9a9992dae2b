package podnetd

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/podnet/podnet/pkg/announce"
)

// The first packet (package policy/announce): the plugin announces a new
// pod's addresses before its containers start; podnetd adds them to what
// the Pod informer says (which learns the IP only from kubelet's status
// update, later), syncs, and answers once the pod's chains are in.

// pendingPod is an announced pod whose IP the API does not show yet.
type pendingPod struct {
	ips []string
	at  time.Time
}

// pendingTTL is how long an announcement stands in for the API's IP: by
// then kubelet has reported it, or the sandbox failed.
const pendingTTL = 2 * time.Minute

// syncCounter counts policy passes started and done, so that an
// announcement can wait for a pass that began after it.
type syncCounter struct {
	mu      sync.Mutex
	started uint64
	done    uint64        // the last pass that succeeded
	ch      chan struct{} // closed when done changes
}

func (c *syncCounter) start() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.started++
	return c.started
}

func (c *syncCounter) finish(gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen > c.done {
		c.done = gen
	}
	if c.ch != nil {
		close(c.ch)
		c.ch = nil
	}
}

// next is the number of the next pass to start.
func (c *syncCounter) next() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.started + 1
}

func (c *syncCounter) doneGen() (uint64, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ch == nil {
		c.ch = make(chan struct{})
	}
	return c.done, c.ch
}

// programPod handles one announcement: it waits for an anti-spoofing pass
// that includes the pod's veth; then, for a Kubernetes pod under
// NetworkPolicy, until the policy informers have synced and know the pod,
// records its addresses, and, if a policy selects it, waits for a pass
// that includes them.
func (a *Agent) programPod(ctx context.Context, p announce.Pod) (bool, error) {
	if a.guard != nil {
		if err := a.waitSpoof(ctx, p.String()); err != nil {
			return false, err
		}
	}
	if p.Name == "" || !a.cfg.NetworkPolicy {
		return false, nil
	}
	key := types.NamespacedName{Namespace: p.Namespace, Name: p.Name}
	var pod *corev1.Pod
	for {
		synced := a.polw != nil
		if synced {
			for _, s := range a.polw.synced {
				synced = synced && s()
			}
		}
		if synced {
			var err error
			if pod, err = a.polw.pods.Pods(p.Namespace).Get(p.Name); err == nil {
				break
			}
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("pod %s is not known to podnetd yet (its informers: synced %v): %w", key, synced, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if pod.Spec.NodeName != a.cfg.NodeName {
		return false, fmt.Errorf("pod %s is bound to node %q, not this node %q", key, pod.Spec.NodeName, a.cfg.NodeName)
	}
	a.pendingMu.Lock()
	if a.pending == nil {
		a.pending = map[types.NamespacedName]pendingPod{}
	}
	a.pending[key] = pendingPod{ips: p.IPs, at: time.Now()}
	a.pendingMu.Unlock()
	need := a.polSync.next()
	a.pokePolicy()
	if !a.selected(pod) && !a.hasClusterPolicies() {
		return false, nil // open: nothing to wait for (peers follow in that pass)
	}
	for {
		done, ch := a.polSync.doneGen()
		if done >= need {
			return true, nil
		}
		select {
		case <-ctx.Done():
			return true, fmt.Errorf("NetworkPolicy for pod %s not programmed in time: %w", key, ctx.Err())
		case <-ch:
		}
	}
}

// selected says whether a NetworkPolicy of its namespace selects pod.
func (a *Agent) selected(pod *corev1.Pod) bool {
	nps, err := a.polw.policies.NetworkPolicies(pod.Namespace).List(labels.Everything())
	if err != nil {
		return true // cannot tell: wait for the pass
	}
	for _, np := range nps {
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil || sel.Matches(labels.Set(pod.Labels)) {
			return true
		}
	}
	return false
}

// withPending returns pods with the announced addresses filled in where the
// API shows none yet; announcements the API has caught up with, or that
// are too old, are forgotten.
func (a *Agent) withPending(pods []*corev1.Pod) []*corev1.Pod {
	a.pendingMu.Lock()
	defer a.pendingMu.Unlock()
	if len(a.pending) == 0 {
		return pods
	}
	out := make([]*corev1.Pod, 0, len(pods))
	seen := map[types.NamespacedName]bool{}
	for _, p := range pods {
		k := types.NamespacedName{Namespace: p.Namespace, Name: p.Name}
		pp, ok := a.pending[k]
		if !ok {
			out = append(out, p)
			continue
		}
		seen[k] = true
		if p.Status.PodIP != "" || time.Since(pp.at) > pendingTTL {
			delete(a.pending, k)
			out = append(out, p)
			continue
		}
		c := p.DeepCopy()
		c.Status.PodIP = pp.ips[0]
		for _, ip := range pp.ips {
			c.Status.PodIPs = append(c.Status.PodIPs, corev1.PodIP{IP: ip})
		}
		out = append(out, c)
	}
	for k, pp := range a.pending {
		if !seen[k] && time.Since(pp.at) > pendingTTL {
			delete(a.pending, k)
		}
	}
	return out
}

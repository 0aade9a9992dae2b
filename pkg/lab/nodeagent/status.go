package nodeagent

import (
	"context"
	"encoding/json"
	"errors"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// podStatus computes the pod's status as kubelet reports it. Called with
// a.mu held.
func (a *Agent) podStatus(pod *corev1.Pod, ps *podState) corev1.PodStatus {
	st := *pod.Status.DeepCopy()
	st.HostIP, st.HostIPs = a.cfg.NodeIP.String(), []corev1.HostIP{{IP: a.cfg.NodeIP.String()}}
	st.PodIP = ps.sb.ips[0].String()
	st.PodIPs = nil
	for _, ip := range ps.sb.ips {
		st.PodIPs = append(st.PodIPs, corev1.PodIP{IP: ip.String()})
	}
	if st.StartTime == nil {
		now := metav1.Now()
		st.StartTime = &now
	}
	running, terminated, failed, allReady := 0, 0, 0, true
	st.ContainerStatuses = nil
	for _, spec := range pod.Spec.Containers {
		c := ps.containers[spec.Name]
		cs := corev1.ContainerStatus{Name: spec.Name, Image: spec.Image, ImageID: "podnet-lab/" + spec.Image, RestartCount: c.restarts}
		switch {
		case c.imageErr != nil:
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ErrImagePull", Message: c.imageErr.Error()}
		case c.configErr != nil && !c.running:
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "CreateContainerConfigError", Message: c.configErr.Error()}
		case c.running:
			cs.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(c.started)}
			started := a.probes.Started(probeKey(ps, c))
			cs.Ready, cs.Started = a.probes.Ready(probeKey(ps, c)), &started
			cs.ContainerID = "podnet-lab://" + ps.sb.netns + "/" + spec.Name
			running++
		case c.last != nil && shouldRestart(pod.Spec.RestartPolicy, c.last.ExitCode):
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff",
				Message: "back-off restarting failed container " + spec.Name}
			cs.LastTerminationState.Terminated = c.last
		case c.last != nil:
			cs.State.Terminated = c.last
			terminated++
			if c.last.ExitCode != 0 {
				failed++
			}
		default:
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
		}
		if c.last != nil && cs.State.Terminated == nil {
			cs.LastTerminationState.Terminated = c.last
		}
		allReady = allReady && cs.Ready
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
	}
	n := len(pod.Spec.Containers)
	switch {
	case terminated == n && failed == 0:
		st.Phase = corev1.PodSucceeded
	case terminated == n:
		st.Phase = corev1.PodFailed
	case running > 0 || terminated > 0 || st.Phase == corev1.PodRunning:
		st.Phase = corev1.PodRunning
	default:
		st.Phase = corev1.PodPending
	}
	ready := allReady && st.Phase == corev1.PodRunning
	st.Conditions = setConditions(st.Conditions, map[corev1.PodConditionType]bool{
		"PodReadyToStartContainers": true, corev1.PodInitialized: true,
		corev1.ContainersReady: ready, corev1.PodReady: ready, corev1.PodScheduled: true})
	return st
}

func setConditions(old []corev1.PodCondition, want map[corev1.PodConditionType]bool) []corev1.PodCondition {
	var out []corev1.PodCondition
	for _, t := range []corev1.PodConditionType{"PodReadyToStartContainers", corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady, corev1.PodScheduled} {
		status := corev1.ConditionFalse
		if want[t] {
			status = corev1.ConditionTrue
		}
		c := corev1.PodCondition{Type: t, Status: status, LastTransitionTime: metav1.Now()}
		for _, o := range old {
			if o.Type == t && o.Status == status {
				c.LastTransitionTime = o.LastTransitionTime
			}
		}
		out = append(out, c)
	}
	return out
}

// reportStatus sends the pod's status when it changed. Called with a.mu held.
func (a *Agent) reportStatus(ctx context.Context, pod *corev1.Pod, ps *podState) {
	st := a.podStatus(pod, ps)
	b, _ := json.Marshal(st)
	if string(b) == ps.lastStatus {
		return
	}
	p := pod.DeepCopy()
	p.Status = st
	if _, err := a.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		a.log.Warn("update pod status", "pod", pod.Namespace+"/"+pod.Name, "err", err)
		return
	}
	ps.lastStatus = string(b)
}

// reportSandboxError tells the user why the pod could not start: its
// volumes (FailedMount) or its sandbox (FailedCreatePodSandBox).
func (a *Agent) reportSandboxError(ctx context.Context, pod *corev1.Pod, err error) {
	p := pod.DeepCopy()
	p.Status.Phase = corev1.PodPending
	p.Status.Conditions = setConditions(p.Status.Conditions, map[corev1.PodConditionType]bool{corev1.PodScheduled: true})
	p.Status.Conditions[0].Reason = "FailedCreatePodSandBox"
	var me *mountError
	if errors.As(err, &me) {
		p.Status.Conditions[0].Reason = "FailedMount"
	}
	p.Status.Conditions[0].Message = err.Error()
	p.Status.HostIP = a.cfg.NodeIP.String()
	if _, uerr := a.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); uerr != nil {
		a.log.Warn("update pod status", "pod", pod.Namespace+"/"+pod.Name, "err", uerr)
	}
}

package lab

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podnet/podnet/pkg/lab/cgroup"
	"github.com/podnet/podnet/pkg/lab/machine"
	"github.com/podnet/podnet/pkg/lab/pki"
)

// RebuildMachine tears a worker machine down and builds it again, as a
// node that is wiped and reinstalled: every process of the machine is
// stopped (its cgroups, pods included), the machine destroyed (its network
// namespace and every pod sandbox with it, its /etc, /opt, /var/lib and
// /run, containerd's images), its Node object deleted — so the cluster
// forgets its pod subnet, as when an administrator runs `kubectl delete
// node` — and then the machine is made afresh, plugged into its switch at
// its address and its node software started. The node registers as a new
// Node and gets whatever pod subnet node IPAM allocates; it returns once
// that Node is Ready (with podnet installed by the DaemonSet on the real
// node software). The control plane cannot be rebuilt: it holds the
// cluster.
func (l *Lab) RebuildMachine(ctx context.Context, name string) error {
	st, ok, err := LoadState(l.dir)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("no lab is up: run `podnetctl lab up` first")
	}
	var ms MachineSpec
	for _, m := range st.Machines {
		if m.Name == name {
			ms = m
		}
	}
	switch {
	case ms.Name == "":
		return fmt.Errorf("the lab has no machine %q (see `podnetctl lab status`)", name)
	case ms.ControlPlane:
		return fmt.Errorf("machine %s runs the control plane and cannot be rebuilt: `podnetctl lab down` and `lab up` instead", name)
	}
	start := time.Now()
	if err := l.stopMachine(name); err != nil {
		return err
	}
	if err := machine.New(l.dir, name).Destroy(); err != nil {
		return fmt.Errorf("destroy machine %s: %w", name, err)
	}
	// Only once its kubelet is gone: a running kubelet would keep posting
	// the status of a Node it believes it registered.
	if err := l.deleteNode(ctx, name); err != nil {
		return err
	}
	l.say("machine %s: torn down after %s; Node %s deleted", name, time.Since(start).Round(100*time.Millisecond), name)
	if err := machine.New(l.dir, name).Create(); err != nil {
		return err
	}
	if err := plug(ms, hasFar(st.Machines)); err != nil {
		return err
	}
	spec := pki.DefaultSpec()
	spec.Server = APIServer()
	bundle, err := pki.Create(l.PKIDir(), spec) // the lab's CA and credentials, kept
	if err != nil {
		return err
	}
	if err := l.startNode(bundle, ms); err != nil {
		return err
	}
	if err := l.waitNodesReady(ctx, []MachineSpec{ms}, 90*time.Second); err != nil {
		return err
	}
	l.say("machine %s: rebuilt, Node Ready after %s", name, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// stopMachine stops every process of a machine: its components and what
// they started (containerd's shims and the pods, in the machine's cgroups,
// v2 and v1 alike), and removes those cgroups.
func (l *Lab) stopMachine(name string) error {
	m, err := cgroup.Mount()
	if err != nil {
		return err
	}
	if err := (cgroup.Group{Path: filepath.Join(m, CgroupName, name)}).Remove(5 * time.Second); err != nil {
		return fmt.Errorf("stop machine %s: %w", name, err)
	}
	if err := (cgroup.V1Root{Rel: machineCgroup(name)}).Remove(5 * time.Second); err != nil {
		return fmt.Errorf("stop machine %s: %w", name, err)
	}
	return nil
}

// deleteNode deletes a Node object and waits until it is gone; a Node
// already gone is no error.
func (l *Lab) deleteNode(ctx context.Context, name string) error {
	c, err := l.Client()
	if err != nil {
		return err
	}
	if err := c.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete node %s: %w", name, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s still there 30s after its deletion (last: %v)", name, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

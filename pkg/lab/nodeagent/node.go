// Package nodeagent is the lab node agent: it stands in for kubelet and the
// container runtime on a lab machine, and for nothing else. It registers the
// Node, renews its Lease, reports Ready only once a CNI configuration exists
// (kubelet's "network plugin not ready"), and runs the pods bound to the node
// as processes in sandbox network namespaces wired by the CNI plugin through
// libcni, as containerd does.
package nodeagent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/podnet/podnet/pkg/netconf"
)

// Config configures one node agent.
type Config struct {
	NodeName     string
	NodeIP       netip.Addr
	ControlPlane bool // registers with the control-plane NoSchedule taint
	// KubeletVersion is reported in the Node's nodeInfo.
	KubeletVersion string
	CNIConfDir     string // /etc/cni/net.d
	CNIBinDirs     []string
	CNICacheDir    string // /var/lib/cni
	// PodDir holds per-pod files (resolv.conf, hosts, logs).
	PodDir string
	// WriteCNIConfig makes the agent write the node's conflist from its
	// podCIDR; podnetd takes this job over once it exists.
	WriteCNIConfig bool
	// PodnetDataDir is the podnet plugin's reservation store.
	PodnetDataDir string
	// NodeDirs are the node's own directory trees (the machine's
	// overlays), where mount points for volumes may be made.
	NodeDirs []string
	Log      *slog.Logger
}

// Agent is a running node agent.
type Agent struct {
	cfg    Config
	client kubernetes.Interface
	log    *slog.Logger
	// mu guards the containers' state between the pod loop and the
	// goroutines waiting for container processes.
	mu sync.Mutex
	// exited pokes the pod loop when a container exits.
	exited func()
	// pods are the pods this agent runs, by UID (guarded by mu).
	pods map[types.UID]*podState
	// probes run the containers' readiness, liveness and startup probes.
	probes *probeManager
	// sources read what volumes and environments reference.
	sources apiSources
	// retries hold back pods whose start failed (pod loop only).
	retries map[types.UID]startRetry
}

// New returns an agent using client.
func New(cfg Config, client kubernetes.Interface) *Agent {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Agent{cfg: cfg, client: client, log: cfg.Log.With("node", cfg.NodeName), pods: map[types.UID]*podState{},
		sources: apiSources{client: client, tokens: newTokenCache()}, retries: map[types.UID]startRetry{}}
}

const (
	leaseDuration = 40 * time.Second
	heartbeat     = 10 * time.Second
	// ControlPlaneTaint keeps ordinary pods off the control plane.
	ControlPlaneTaint = "node-role.kubernetes.io/control-plane"
)

// NodeObject is the Node a lab node agent registers: its name, the
// well-known labels and, on the control plane, its NoSchedule taint. The
// lab creates it ahead of the agent when it assigns pod subnets itself.
func NodeObject(name string, controlPlane bool) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
	}}}
	if controlPlane {
		n.Spec.Taints = []corev1.Taint{{Key: ControlPlaneTaint, Effect: corev1.TaintEffectNoSchedule}}
	}
	return n
}

// register creates the Node, or takes over an existing one of that name.
func (a *Agent) register(ctx context.Context) error {
	n := NodeObject(a.cfg.NodeName, a.cfg.ControlPlane)
	_, err := a.client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("register node %s: %w", a.cfg.NodeName, err)
	}
	return a.updateStatus(ctx)
}

// cniReady says whether a CNI configuration exists, and why not.
func (a *Agent) cniReady() (bool, string) {
	ents, err := os.ReadDir(a.cfg.CNIConfDir)
	if err == nil {
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".conflist") || strings.HasSuffix(e.Name(), ".conf") {
				return true, ""
			}
		}
	}
	return false, "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized (no network config in " + a.cfg.CNIConfDir + ")"
}

// updateStatus reports addresses, capacity, node info and conditions.
func (a *Agent) updateStatus(ctx context.Context) error {
	n, err := a.client.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get node %s: %w", a.cfg.NodeName, err)
	}
	now := metav1.Now()
	ready, why := a.cniReady()
	readyCond := corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		Message: "lab node agent is posting ready status", LastHeartbeatTime: now}
	if !ready {
		readyCond.Status, readyCond.Reason, readyCond.Message = corev1.ConditionFalse, "KubeletNotReady", why
	}
	conds := []corev1.NodeCondition{readyCond}
	for _, t := range []corev1.NodeConditionType{corev1.NodeMemoryPressure, corev1.NodeDiskPressure, corev1.NodePIDPressure} {
		conds = append(conds, corev1.NodeCondition{Type: t, Status: corev1.ConditionFalse, Reason: "KubeletHas" + strings.TrimPrefix(string(t), "Node"), LastHeartbeatTime: now})
	}
	for i := range conds {
		conds[i].LastTransitionTime = now
		for _, old := range n.Status.Conditions {
			if old.Type == conds[i].Type && old.Status == conds[i].Status {
				conds[i].LastTransitionTime = old.LastTransitionTime
			}
		}
	}
	// Conditions owned by others (podnetd's NetworkUnavailable) stay.
	for _, old := range n.Status.Conditions {
		switch old.Type {
		case corev1.NodeReady, corev1.NodeMemoryPressure, corev1.NodeDiskPressure, corev1.NodePIDPressure:
		default:
			conds = append(conds, old)
		}
	}
	n.Status.Conditions = conds
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: a.cfg.NodeIP.String()}, {Type: corev1.NodeHostName, Address: a.cfg.NodeName}}
	capacity := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("4Gi"),
		corev1.ResourcePods: resource.MustParse("110"), corev1.ResourceEphemeralStorage: resource.MustParse("20Gi")}
	n.Status.Capacity, n.Status.Allocatable = capacity, capacity
	n.Status.DaemonEndpoints.KubeletEndpoint.Port = 10250
	n.Status.NodeInfo = corev1.NodeSystemInfo{KubeletVersion: a.cfg.KubeletVersion, OperatingSystem: "linux",
		Architecture: "amd64", ContainerRuntimeVersion: "podnet-lab://1", OSImage: "podnet lab machine", KernelVersion: kernelVersion()}
	if _, err := a.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update status of node %s: %w", a.cfg.NodeName, err)
	}
	return nil
}

func kernelVersion() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

// renewLease creates or renews the node's Lease in kube-node-lease.
func (a *Agent) renewLease(ctx context.Context) error {
	leases := a.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	l, err := leases.Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: a.cfg.NodeName, Namespace: corev1.NamespaceNodeLease},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(a.cfg.NodeName), LeaseDurationSeconds: ptr.To(int32(leaseDuration.Seconds())), RenewTime: &now}}
		if n, err := a.client.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{}); err == nil {
			l.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: n.Name, UID: n.UID}}
		}
		_, err = leases.Create(ctx, l, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	l.Spec.RenewTime = &now
	l.Spec.HolderIdentity = ptr.To(a.cfg.NodeName)
	_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
	return err
}

// writeCNIConfig writes the node's conflist from its podCIDR, atomically,
// once kube-controller-manager has allocated one.
func (a *Agent) writeCNIConfig(ctx context.Context) error {
	n, err := a.client.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if n.Spec.PodCIDR == "" {
		return nil // not allocated yet; the node stays NotReady
	}
	wrote, err := netconf.WriteConflist(a.cfg.CNIConfDir, netconf.Conflist(n.Spec.PodCIDR, 1500, a.cfg.PodnetDataDir))
	if err != nil || !wrote {
		return err
	}
	path := filepath.Join(a.cfg.CNIConfDir, netconf.ConflistName)
	a.log.Info("wrote CNI config", "path", path, "cidr", n.Spec.PodCIDR)
	return nil
}

// Run registers the node and keeps its Lease and status fresh until ctx
// ends. It keeps retrying while the API server is away.
func (a *Agent) Run(ctx context.Context) error {
	for {
		err := a.register(ctx)
		if err == nil {
			break
		}
		a.log.Warn("register", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
	a.log.Info("registered")
	a.cleanStart(ctx)
	go a.runPods(ctx)
	t := time.NewTicker(heartbeat)
	defer t.Stop()
	fast := time.NewTicker(time.Second) // until Ready, look for the CNI config often
	defer fast.Stop()
	for {
		if a.cfg.WriteCNIConfig {
			if err := a.writeCNIConfig(ctx); err != nil {
				a.log.Warn("write CNI config", "err", err)
			}
		}
		if err := a.renewLease(ctx); err != nil {
			a.log.Warn("renew lease", "err", err)
		}
		if err := a.updateStatus(ctx); err != nil {
			a.log.Warn("update status", "err", err)
		}
		ready, _ := a.cniReady()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-fast.C:
			if ready {
				fast.Stop()
			}
		}
	}
}

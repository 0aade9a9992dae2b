// Package cniplugin implements the podnet CNI plugin's verbs (ADD, DEL,
// CHECK, STATUS, GC) on top of two small interfaces it owns: Kernel (the
// node's and the pod's network namespaces) and Delegate (an external IPAM
// plugin). It turns every failure into a CNI error with the spec's code, a
// message naming the object and details saying how to fix it.
package cniplugin

import (
	"context"
	"log/slog"
	"net"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/pkg/announce"
	"github.com/podnet/podnet/pkg/ipam"
	"github.com/podnet/podnet/pkg/wire"
)

// Kernel is what the plugin needs of the kernel; wire.Netlink is the real
// one and FakeKernel the one for unit tests.
type Kernel interface {
	// EnsureBridge makes the bridge exist, up, with its gateway addresses,
	// and returns its index and MAC.
	EnsureBridge(b wire.Bridge) (wire.BridgeLink, error)
	// BridgeStatus reports whether the bridge is up; a missing bridge counts
	// as up (ADD creates it); a non-bridge under that name is an error.
	BridgeStatus(name string) (up bool, err error)
	Attach(p wire.Pod) (wire.Attached, error)
	Verify(p wire.Pod, podMAC net.HardwareAddr) error
	Detach(containerID, ifName string) error
	HostLinks(network string) ([]wire.HostLink, error)
	DeleteHostLink(name string) error
}

// Delegate runs an external IPAM plugin (ipam.type), with the same stdin
// and CNI_* environment the plugin was given.
type Delegate interface {
	Add(ctx context.Context, plugin string, stdin []byte) (types.Result, error)
	Check(ctx context.Context, plugin string, stdin []byte) error
	Del(ctx context.Context, plugin string, stdin []byte) error
	Status(ctx context.Context, plugin string, stdin []byte) error
	GC(ctx context.Context, plugin string, stdin []byte) error
}

// Plugin is the podnet CNI plugin.
type Plugin struct {
	Kernel   Kernel
	Delegate Delegate
	// OpenStore opens the built-in IPAM's store of one network.
	OpenStore func(dataDir, network string) (ipam.Store, error)
	// Announce tells podnetd a new pod's addresses and waits until its
	// NetworkPolicy is in the kernel (announce.Send; a fake in tests).
	Announce func(ctx context.Context, socket string, p announce.Pod) (announce.Reply, error)
	Log      *slog.Logger
}

// New returns the plugin wired to the real kernel, the on-disk store and
// exec'd delegates.
func New(log *slog.Logger) *Plugin {
	return &Plugin{
		Kernel:   wire.Netlink{},
		Delegate: ExecDelegate{},
		OpenStore: func(dataDir, network string) (ipam.Store, error) {
			return ipam.NewDiskStore(dataDir, network)
		},
		Announce: announce.Send,
		Log:      log,
	}
}

package cniplugin

import (
	"context"
	"fmt"
	"net"
	"sort"
	"sync"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/pkg/wire"
)

// FakeKernel is an in-memory Kernel for unit tests. It keeps bridges and
// attachments the way the real kernel would report them, and can be told to
// fail, to have namespaces, or to lose an attachment (drift).
type FakeKernel struct {
	mu sync.Mutex
	// Bridges maps bridge name to its gateways; NotBridge names interfaces
	// that exist and are no bridge; Down names bridges that are down.
	Bridges   map[string][]wire.Bridge
	NotBridge map[string]bool
	Down      map[string]bool
	// NetNS lists the namespace paths that exist.
	NetNS map[string]bool
	// Pods maps host veth name to its attachment.
	Pods map[string]FakeAttachment
	// FailAttach, when set, makes Attach fail after creating the veth, as a
	// real failure half-way would.
	FailAttach error
}

// FakeAttachment is one wired pod interface.
type FakeAttachment struct {
	Pod      wire.Pod
	Attached wire.Attached
}

// NewFakeKernel returns a kernel where the given namespaces exist.
func NewFakeKernel(netns ...string) *FakeKernel {
	k := &FakeKernel{Bridges: map[string][]wire.Bridge{}, NotBridge: map[string]bool{},
		Down: map[string]bool{}, NetNS: map[string]bool{}, Pods: map[string]FakeAttachment{}}
	for _, n := range netns {
		k.NetNS[n] = true
	}
	return k
}

func (k *FakeKernel) EnsureBridge(b wire.Bridge) (wire.BridgeLink, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.NotBridge[b.Name] {
		return wire.BridgeLink{}, fmt.Errorf("%s %w", b.Name, wire.ErrNotBridge)
	}
	k.Bridges[b.Name] = append(k.Bridges[b.Name], b)
	delete(k.Down, b.Name)
	return wire.BridgeLink{Index: 2, MAC: wire.GatewayMAC(b.Gateways)}, nil
}

func (k *FakeKernel) BridgeStatus(name string) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.NotBridge[name] {
		return false, fmt.Errorf("%s %w", name, wire.ErrNotBridge)
	}
	return !k.Down[name], nil
}

func (k *FakeKernel) Attach(p wire.Pod) (wire.Attached, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	at := wire.Attached{HostName: wire.HostName(p.ContainerID, p.IfName), PodMAC: wire.PodMAC(p.Addrs),
		HostMAC: net.HardwareAddr{0x0a, 0x59, 0, 0, 0, 1}}
	if !k.NetNS[p.NetNS] {
		return at, fmt.Errorf("open %s: %w", p.NetNS, wire.ErrNetNSNotFound)
	}
	for _, a := range k.Pods {
		if a.Pod.NetNS == p.NetNS && a.Pod.IfName == p.IfName && a.Attached.HostName != at.HostName {
			return at, fmt.Errorf("%s in %s: %w", p.IfName, p.NetNS, wire.ErrIfaceExists)
		}
	}
	k.Pods[at.HostName] = FakeAttachment{Pod: p, Attached: at}
	if k.FailAttach != nil {
		return at, k.FailAttach
	}
	return at, nil
}

func (k *FakeKernel) Verify(p wire.Pod, podMAC net.HardwareAddr) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.NetNS[p.NetNS] {
		return fmt.Errorf("open %s: %w", p.NetNS, wire.ErrNetNSNotFound)
	}
	a, ok := k.Pods[wire.HostName(p.ContainerID, p.IfName)]
	if !ok {
		return fmt.Errorf("interface %s is missing from %s: %w", p.IfName, p.NetNS, wire.ErrDrift)
	}
	if a.Attached.PodMAC.String() != podMAC.String() {
		return fmt.Errorf("%s has MAC %s, expected %s: %w", p.IfName, a.Attached.PodMAC, podMAC, wire.ErrDrift)
	}
	if a.Pod.MTU != p.MTU {
		return fmt.Errorf("%s has MTU %d, expected %d: %w", p.IfName, a.Pod.MTU, p.MTU, wire.ErrDrift)
	}
	if fmt.Sprint(a.Pod.Addrs) != fmt.Sprint(p.Addrs) || fmt.Sprint(a.Pod.Routes) != fmt.Sprint(p.Routes) {
		return fmt.Errorf("%s addresses/routes differ: %w", p.IfName, wire.ErrDrift)
	}
	return nil
}

func (k *FakeKernel) Detach(containerID, ifName string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.Pods, wire.HostName(containerID, ifName))
	return nil
}

func (k *FakeKernel) HostLinks(network string) ([]wire.HostLink, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []wire.HostLink
	for name, a := range k.Pods {
		if a.Pod.Network == network {
			out = append(out, wire.HostLink{Name: name, Network: network, ContainerID: a.Pod.ContainerID, IfName: a.Pod.IfName})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (k *FakeKernel) DeleteHostLink(name string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.Pods, name)
	return nil
}

// FakeDelegate is an external IPAM plugin for unit tests: it records calls
// and answers with Result or Err.
type FakeDelegate struct {
	mu     sync.Mutex
	Calls  []string // "ADD host-local", ...
	Result types.Result
	Err    error
}

func (d *FakeDelegate) record(verb, p string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.Calls = append(d.Calls, verb+" "+p)
	return d.Err
}

func (d *FakeDelegate) Add(_ context.Context, p string, _ []byte) (types.Result, error) {
	if err := d.record("ADD", p); err != nil {
		return nil, err
	}
	return d.Result, nil
}
func (d *FakeDelegate) Check(_ context.Context, p string, _ []byte) error {
	return d.record("CHECK", p)
}
func (d *FakeDelegate) Del(_ context.Context, p string, _ []byte) error { return d.record("DEL", p) }
func (d *FakeDelegate) Status(_ context.Context, p string, _ []byte) error {
	return d.record("STATUS", p)
}
func (d *FakeDelegate) GC(_ context.Context, p string, _ []byte) error { return d.record("GC", p) }

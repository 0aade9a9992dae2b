// Package backend programs cross-node pod connectivity on one node: for
// every other node, the kernel state that sends packets for its pod subnet
// to it — a route through a VXLAN overlay (vxlan), a plain route via the
// other node's address (host-gw), or each by reachability (hybrid). A
// Backend is level-triggered: Sync gets the whole set of remote nodes and
// makes the kernel hold exactly that, adding what is missing first and
// deleting podnet's stale objects last. It only ever touches what it owns:
// routes with RouteProtocol, its own VXLAN device (which host-gw deletes
// when a node switches to it from an overlay backend), and neighbours and
// FDB entries on that device. A route podnet did not make to exactly a
// remote's pod subnet is never overwritten: that remote is refused.
//
// Each Sync computes the whole desired state with pure functions
// (desired.go: desiredVXLAN, desiredHostGW, desiredHybrid) and hands it to
// apply (kernel.go), which diffs it against what the kernel holds now.
package backend

import (
	"fmt"
	"net"
	"net/netip"
)

// RouteProtocol marks every route podnet installs (`ip route` shows
// "proto 201"); Sync deletes only routes carrying it.
const RouteProtocol = 201

// Local is this node.
type Local struct {
	Node    string
	PodCIDR netip.Prefix
	NodeIP  netip.Addr
	// Link is the underlay interface holding NodeIP (eth1 in the lab).
	Link string
}

// Remote is another node, as published on its Node object.
type Remote struct {
	Node    string
	PodCIDR netip.Prefix
	NodeIP  netip.Addr
	// VTEPMAC is the MAC of its VXLAN device (vxlan and hybrid).
	VTEPMAC net.HardwareAddr
}

// Facts are what a backend publishes about this node and what pods need.
type Facts struct {
	// Annotations to set on this node's Node object.
	Annotations map[string]string
	// MTU of pod interfaces.
	MTU int
}

// Annotation keys on Node objects.
const (
	AnnotationBackend  = "podnet.io/backend"
	AnnotationPublicIP = "podnet.io/public-ip"
	AnnotationVTEPMAC  = "podnet.io/vtep-mac"
)

// Backend programs one node.
type Backend interface {
	// Setup prepares node-local state (the VXLAN device) idempotently and
	// returns the facts to publish.
	Setup(local Local) (Facts, error)
	// Sync makes the kernel hold exactly the state for these remotes.
	Sync(remotes []Remote) (Result, error)
}

// Result says what a Sync changed and what it refused.
type Result struct {
	Added, Removed int
	// Refused lists remotes the backend cannot reach, with the reason
	// (host-gw to a node on another segment; a route podnet did not make
	// already goes to the node's pod subnet): never a black hole, and
	// never anyone else's route overwritten.
	Refused map[string]string
}

// New returns the backend of the given name.
func New(name string) (Backend, error) {
	switch name {
	case "vxlan":
		return &VXLAN{}, nil
	case "host-gw":
		return &HostGW{}, nil
	case "hybrid":
		return &Hybrid{}, nil
	}
	return nil, fmt.Errorf("backend %q: use vxlan, host-gw or hybrid", name)
}

package policy

import (
	"context"
	"net/netip"

	"github.com/podnet/podnet/pkg/nflog"
)

// Deny logs. Each pod chain logs what it drops to NFLOG group LogGroup,
// rate-limited per chain, with the chain's name as the prefix; ReadDrops
// reads them, and the Enforcer maps a chain back to its pod and policies
// (Enforcer.Chain), so a drop is told as "default deny of ns/pod by
// policies …", never as "some rule".

// LogGroup is the NFLOG group of the deny log.
const LogGroup = 7

// logRate is each pod chain's deny-log budget (the drops themselves are
// all counted).
const logRate = "limit rate 10/second burst 20 packets"

// Drop is one logged drop.
type Drop struct {
	Chain    string // the pod chain that dropped it
	Src, Dst netip.Addr
	Proto    uint8
	Port     uint16 // destination port (0 for ICMP)
}

// ReadDrops binds NFLOG group in the calling thread's network namespace
// and calls fn with each drop of a pod chain until ctx ends. It returns at
// once with an error if the group cannot be bound (another listener holds
// it).
func ReadDrops(ctx context.Context, group uint16, fn func(Drop)) error {
	return nflog.Read(ctx, group, func(p nflog.Packet) {
		if h, ok := p.IPv4(); ok {
			fn(Drop{Chain: p.Prefix, Src: h.Src, Dst: h.Dst, Proto: h.Proto, Port: h.Port})
		}
	})
}

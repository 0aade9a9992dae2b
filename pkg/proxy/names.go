package proxy

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"strings"
	"time"
)

// maxNameLen caps the names of per-Service chains and sets. The kernel
// allows 255 characters (NFT_NAME_MAXLEN is 256 with the NUL, since Linux
// 4.15; it was 32 before); names are kept far shorter so that `nft list`
// stays readable. The hash in every name keeps truncated names unique.
const maxNameLen = 96

// Prefixes of the per-Service objects; the static objects have no dash-
// separated hash, so the two kinds never collide.
const (
	svcChainPrefix = "svc-" // Cluster policy: every usable endpoint
	locChainPrefix = "loc-" // Local policy: this node's endpoints
	extChainPrefix = "ext-" // external destinations: masquerade or Local policy
	epChainPrefix  = "ep-"  // one endpoint of an affinity port: record the client, DNAT
	affSetPrefix   = "aff-" // one endpoint's sessionAffinity clients
)

// portNames are the names of one Service port's chains. They depend only
// on the port's identity, so they stay stable while its endpoints come and
// go and a partial sync can address them.
type portNames struct {
	svc, loc, ext string
	base          string // namespace/name/protocol/port, for endpoint names
}

func namesFor(n ServicePortName) portNames {
	base := fmt.Sprintf("%s/%s/%s/%s", n.Namespace, n.Name, n.Protocol, n.Port)
	h := hash(base)
	return portNames{
		svc:  objName(svcChainPrefix, h, base),
		loc:  objName(locChainPrefix, h, base),
		ext:  objName(extChainPrefix, h, base),
		base: base,
	}
}

// endpointChain names the chain of endpoint e of the port.
func (pn portNames) endpointChain(e Endpoint) string {
	id := pn.base + "__" + endpointID(e)
	return objName(epChainPrefix, hash(id), id)
}

// affinitySet names the set of clients stuck to endpoint e. The timeout is
// part of the identity: a set's timeout cannot be changed in place, so a
// new timeout is a new set (and the old one is deleted as stale).
func (pn portNames) affinitySet(e Endpoint, timeout time.Duration) string {
	id := pn.base + "__" + endpointID(e)
	return objName(affSetPrefix, hash(fmt.Sprintf("%s/%d", id, int64(timeout.Seconds()))), id)
}

// endpointID is ip/port, with an IPv6 address's colons (not allowed in an
// nft name) written as dots.
func endpointID(e Endpoint) string {
	return strings.ReplaceAll(e.IP.String(), ":", ".") + "/" + fmt.Sprint(e.Port)
}

// hash is 8 base32 characters (40 bits) of the SHA-256 of s.
func hash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:8]
}

func objName(prefix, h, readable string) string {
	name := prefix + h + "-" + readable
	if len(name) > maxNameLen {
		name = name[:maxNameLen]
	}
	return name
}

// Package netconf parses and validates the network configuration of the
// podnet CNI plugin (the JSON a runtime passes on stdin), and the pod
// identity runtimes pass in CNI_ARGS.
package netconf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/pkg/ipam"
)

// DefaultBridge is the node bridge of the seeds.
const DefaultBridge = "cni0"

// DefaultMTU is used when the configuration sets none.
const DefaultMTU = 1500

// Conf is the podnet plugin's configuration.
type Conf struct {
	CNIVersion   string          `json:"cniVersion"`
	Name         string          `json:"name"`
	Type         string          `json:"type"`
	Capabilities map[string]bool `json:"capabilities,omitempty"`
	DNS          types.DNS       `json:"dns"`

	// Bridge is the node bridge pods attach to (default cni0).
	Bridge string `json:"bridge,omitempty"`
	// MTU of both ends of the pod's veth pair (default 1500).
	MTU int `json:"mtu,omitempty"`
	// HairpinMode lets a pod reach itself through a Service (default true).
	HairpinMode *bool `json:"hairpinMode,omitempty"`
	// IsDefaultGateway adds a default route via the bridge (default true).
	IsDefaultGateway *bool `json:"isDefaultGateway,omitempty"`
	// AgentSocket is podnetd's unix socket: ADD announces the pod there
	// and returns only once its NetworkPolicy is in the kernel (package
	// policy/announce); empty: no NetworkPolicy, nothing to wait for.
	AgentSocket string `json:"agentSocket,omitempty"`

	RawIPAM json.RawMessage `json:"ipam,omitempty"`
	// IPAM is the parsed ipam section (Builtin is nil when ipam.type is set).
	IPAM IPAM `json:"-"`

	RawPrevResult map[string]any  `json:"prevResult,omitempty"`
	RuntimeConfig json.RawMessage `json:"runtimeConfig,omitempty"`
	Args          json.RawMessage `json:"args,omitempty"`

	// GC: the attachments the runtime still holds. Newer runtimes send
	// cni.dev/valid-attachments; cni.dev/attachments is the name of CNI 1.1.0's
	// first text, still sent by libcni.
	ValidAttachments  []types.GCAttachment `json:"cni.dev/valid-attachments,omitempty"`
	LegacyAttachments []types.GCAttachment `json:"cni.dev/attachments,omitempty"`
}

// IPAM is the ipam section.
type IPAM struct {
	// Type names an external IPAM plugin; empty means podnet's built-in IPAM.
	Type    string
	Builtin *Builtin
}

// Builtin is the parsed configuration of the built-in IPAM.
type Builtin struct {
	Sets     []ipam.RangeSet
	Reserved []netip.Prefix
	Routes   []*types.Route
	DataDir  string
}

// builtinJSON is the built-in IPAM's section, host-local's format plus
// "reserved"; the single-range fields are host-local's older form.
type builtinJSON struct {
	Type       string             `json:"type"`
	Ranges     [][]ipam.RangeConf `json:"ranges"`
	Subnet     string             `json:"subnet"`
	RangeStart string             `json:"rangeStart"`
	RangeEnd   string             `json:"rangeEnd"`
	Gateway    string             `json:"gateway"`
	Routes     []*types.Route     `json:"routes"`
	DataDir    string             `json:"dataDir"`
	Reserved   []string           `json:"reserved"`
}

// Error is a configuration error with the CNI code it maps to and a hint.
type Error struct {
	Code uint // types.ErrDecodingFailure, ErrUnsupportedField or ErrInvalidNetworkConfig
	Msg  string
	Hint string
}

func (e *Error) Error() string { return e.Msg }

func invalid(hint, format string, a ...any) *Error {
	return &Error{Code: types.ErrInvalidNetworkConfig, Msg: fmt.Sprintf(format, a...), Hint: hint}
}

// validIfName reports whether s is 1–15 of [A-Za-z0-9_.-] and not "." or
// ".." (checked by hand: a regexp compiled at start-up costs every ADD).
func validIfName(s string) bool {
	if len(s) == 0 || len(s) > 15 || s == "." || s == ".." {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// Parse decodes and validates a configuration. Unknown fields are refused
// (the CNI spec allows it) so that a misspelt "mtu" does not silently give a
// pod the wrong MTU.
func Parse(stdin []byte) (*Conf, error) {
	c := &Conf{}
	dec := json.NewDecoder(bytes.NewReader(stdin))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return nil, decodeError("network configuration", err, knownTop)
	}
	// Anything after the object (a second object, say) would be ignored.
	if _, err := dec.Token(); err != io.EOF {
		return nil, &Error{Code: types.ErrDecodingFailure, Msg: "network configuration has data after its JSON object",
			Hint: "pass one JSON object on stdin, as the CNI spec describes"}
	}
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if !validIfName(c.Bridge) {
		return nil, invalid("use at most 15 letters, digits, '_', '.' or '-', e.g. \"cni0\"",
			"bridge name %q is not a valid interface name", c.Bridge)
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.MTU < 68 || c.MTU > 65535 {
		return nil, invalid("set mtu between 68 and 65535 (1450 under VXLAN, 1500 on plain Ethernet)",
			"mtu %d is out of range", c.MTU)
	}
	if err := c.parseIPAM(); err != nil {
		return nil, err
	}
	return c, nil
}

var knownTop = []string{"cniVersion", "name", "type", "capabilities", "dns", "bridge", "mtu",
	"hairpinMode", "isDefaultGateway", "ipam", "prevResult", "runtimeConfig", "args",
	"cni.dev/valid-attachments", "cni.dev/attachments"}

var knownIPAM = []string{"type", "ranges", "subnet", "rangeStart", "rangeEnd", "gateway",
	"routes", "dataDir", "reserved"}

// decodeError turns a JSON error into a CNI error: an unknown field is code 2,
// anything else code 6.
func decodeError(what string, err error, known []string) *Error {
	msg := err.Error()
	if f, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		sorted := append([]string(nil), known...)
		sort.Strings(sorted)
		return &Error{Code: types.ErrUnsupportedField,
			Msg:  fmt.Sprintf("%s: unknown field %s", what, f),
			Hint: "check its spelling or remove it; podnet understands: " + strings.Join(sorted, ", ")}
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return &Error{Code: types.ErrDecodingFailure,
			Msg:  fmt.Sprintf("%s: field %q must be a %s, not a JSON %s", what, te.Field, te.Type, te.Value),
			Hint: "fix the field's type"}
	}
	return &Error{Code: types.ErrDecodingFailure, Msg: fmt.Sprintf("%s is not valid JSON: %v", what, err),
		Hint: "pass one JSON object on stdin, as the CNI spec describes"}
}

func (c *Conf) parseIPAM() error {
	if len(c.RawIPAM) == 0 || string(c.RawIPAM) == "null" {
		return invalid(`add "ipam": {"ranges": [[{"subnet": "10.244.1.0/24"}]]}`, "the configuration has no ipam section")
	}
	var probe struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(c.RawIPAM, &probe); err != nil {
		return decodeError("ipam section", err, knownIPAM)
	}
	if probe.Type != "" {
		c.IPAM = IPAM{Type: probe.Type} // the delegate owns (and checks) the rest
		return nil
	}
	var bj builtinJSON
	dec := json.NewDecoder(bytes.NewReader(c.RawIPAM))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&bj); err != nil {
		return decodeError("ipam section", err, knownIPAM)
	}
	ranges := bj.Ranges
	if bj.Subnet != "" {
		if len(ranges) > 0 {
			return invalid(`use either "ranges" or "subnet", not both`, "ipam has both ranges and subnet")
		}
		ranges = [][]ipam.RangeConf{{{Subnet: bj.Subnet, RangeStart: bj.RangeStart, RangeEnd: bj.RangeEnd, Gateway: bj.Gateway}}}
	}
	sets, err := ipam.ParseRangeSets(ranges)
	if err != nil {
		return wrapIPAM(err)
	}
	reserved, err := ipam.ParseReserved(bj.Reserved)
	if err != nil {
		return wrapIPAM(err)
	}
	for _, r := range bj.Routes {
		if r == nil || r.Dst.IP == nil {
			return invalid(`write each route as {"dst": "0.0.0.0/0"} with an optional "gw"`, "ipam: a route has no dst")
		}
	}
	c.IPAM = IPAM{Builtin: &Builtin{Sets: sets, Reserved: reserved, Routes: bj.Routes, DataDir: bj.DataDir}}
	return nil
}

func wrapIPAM(err error) error {
	var ce *ipam.ConfigError
	if errors.As(err, &ce) {
		return invalid(ce.Hint, "%s", ce.Msg)
	}
	return invalid("", "%v", err)
}

// Hairpin reports whether hairpin mode is on (the default).
func (c *Conf) Hairpin() bool { return c.HairpinMode == nil || *c.HairpinMode }

// DefaultGateway reports whether to add default routes via the bridge.
func (c *Conf) DefaultGateway() bool { return c.IsDefaultGateway == nil || *c.IsDefaultGateway }

// GCValid returns the attachments a GC must keep, from either key.
func (c *Conf) GCValid() []types.GCAttachment {
	if c.ValidAttachments != nil {
		return c.ValidAttachments
	}
	return c.LegacyAttachments
}

// PodArgs is the pod identity a Kubernetes runtime passes in CNI_ARGS.
type PodArgs struct {
	Namespace, Name, UID string
}

// ParseArgs reads K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID from
// CNI_ARGS ("K=V;K=V"); other keys are ignored, as runtimes send many.
func ParseArgs(s string) (PodArgs, error) {
	var p PodArgs
	if s == "" {
		return p, nil
	}
	for _, kv := range strings.Split(s, ";") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return p, fmt.Errorf("CNI_ARGS entry %q is not KEY=VALUE", kv)
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			p.Namespace = v
		case "K8S_POD_NAME":
			p.Name = v
		case "K8S_POD_UID":
			p.UID = v
		}
	}
	return p, nil
}

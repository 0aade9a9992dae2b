package cniplugin

import (
	"errors"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/pkg/ipam"
	"github.com/podnet/podnet/pkg/netconf"
	"github.com/podnet/podnet/pkg/wire"
)

// ErrCodeDrift is podnet's own code (the spec leaves 100 and up to plugins)
// for a CHECK that found the attachment differs from what ADD made.
const ErrCodeDrift uint = 100

// cniError wraps err as a *types.Error with the spec's code for its kind.
// It returns error, not *types.Error, so that a nil err stays an untyped
// nil (a typed nil pointer in an error interface is not == nil).
func cniError(err error) error {
	if err == nil {
		return nil
	}
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	var ce *netconf.Error
	if errors.As(err, &ce) {
		return types.NewError(ce.Code, ce.Msg, ce.Hint)
	}
	msg := err.Error()
	switch {
	case errors.Is(err, wire.ErrNetNSNotFound):
		return types.NewError(types.ErrUnknownContainer, msg,
			"the pod's network namespace (CNI_NETNS) does not exist: the runtime must create the sandbox before ADD")
	case errors.Is(err, ipam.ErrExhausted):
		return types.NewError(types.ErrTryAgainLater, msg,
			"every address of the range is reserved: delete pods, run a CNI GC to release leaked reservations, or give the node a larger range")
	case errors.Is(err, wire.ErrNotBridge):
		return types.NewError(types.ErrInvalidNetworkConfig, msg,
			`set "bridge" to a name no other interface uses, or delete that interface`)
	case errors.Is(err, wire.ErrIfaceExists):
		return types.NewError(types.ErrInvalidEnvironmentVariables, msg,
			"choose another CNI_IFNAME, or DEL the attachment that owns it first")
	case errors.Is(err, wire.ErrDrift):
		return types.NewError(ErrCodeDrift, msg,
			"the pod's network was changed after ADD: recreate the pod (DEL then ADD)")
	case isIO(err):
		return types.NewError(types.ErrIOFailure, msg,
			"check that the IPAM data directory exists, is writable by the plugin and its disk is not full")
	}
	return types.NewError(types.ErrInternal, msg, "")
}

// storeError marks a failure of the built-in IPAM's store, so that only
// those (and not, say, a sysctl write) are reported as I/O failures.
type storeError struct{ err error }

func (e storeError) Error() string { return e.err.Error() }
func (e storeError) Unwrap() error { return e.err }

func asStoreError(err error) error {
	if err == nil || errors.Is(err, ipam.ErrExhausted) {
		return err
	}
	return storeError{err}
}

func isIO(err error) bool {
	var se storeError
	return errors.As(err, &se)
}

// delegateError explains a failure of the external IPAM plugin.
func delegateError(plugin string, err error) error {
	if err == nil {
		return nil
	}
	var te *types.Error
	if errors.As(err, &te) {
		if te.Details == "" {
			te.Details = "reported by the IPAM plugin " + plugin + "; see its documentation"
		}
		return te
	}
	if strings.Contains(err.Error(), "failed to find plugin") {
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(),
			"install the IPAM plugin "+plugin+" in a CNI_PATH directory, or fix ipam.type (omit it for podnet's built-in IPAM)")
	}
	return types.NewError(types.ErrInternal, "IPAM plugin "+plugin+": "+err.Error(), "see the IPAM plugin's logs")
}

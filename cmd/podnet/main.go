// Command podnet is the podnet CNI plugin: a runtime execs it with a CNI_*
// environment and the network configuration on stdin (CNI spec 1.1.0 and
// every version from 0.3.0).
package main

import (
	"log/slog"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podnet/podnet/pkg/cniplugin"
)

// Version is set at build time.
var Version = "dev"

func main() {
	// Logs go nowhere unless asked for: the runtime reads only stdout, and
	// formatting records nobody reads costs every ADD.
	var h slog.Handler = slog.DiscardHandler
	if path := os.Getenv("PODNET_CNI_LOG"); path != "" {
		if f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
			h = slog.NewTextHandler(f, nil)
		}
	}
	p := cniplugin.New(slog.New(h))
	funcs := skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, Status: p.Status, GC: p.GC}
	vi := version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
	about := "podnet CNI plugin " + Version
	var e *types.Error
	if os.Getenv("CNI_COMMAND") == "" {
		// skel would print the about text and exit 0; a runtime that forgot
		// CNI_COMMAND must get an error, and a person gets both.
		os.Stderr.WriteString(about + "\n")
		e = types.NewError(types.ErrInvalidEnvironmentVariables, "required env variables [CNI_COMMAND] missing", "")
	} else {
		e = skel.PluginMainFuncsWithError(funcs, vi, about)
	}
	if e != nil {
		explain(e)
		if err := e.Print(); err != nil {
			os.Stderr.WriteString("podnet: " + err.Error() + "\n")
		}
		os.Exit(1)
	}
}

// explain adds the "how to fix it" to errors raised by the CNI library
// before podnet's own code runs.
func explain(e *types.Error) {
	if e.Details != "" {
		return
	}
	switch {
	case strings.Contains(e.Msg, "unknown CNI_COMMAND"):
		e.Details = "CNI_COMMAND must be one of ADD, DEL, CHECK, STATUS, GC, VERSION"
	case e.Code == types.ErrInvalidEnvironmentVariables:
		e.Details = "set the CNI_* variables the spec requires for this command: CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS (ADD, CHECK), CNI_IFNAME, CNI_PATH"
	case e.Code == types.ErrDecodingFailure:
		e.Details = `pass the network configuration on stdin as one JSON object with "cniVersion", "name" and "type"`
	case e.Code == types.ErrInvalidNetworkConfig && strings.Contains(e.Msg, "name"):
		e.Details = `give the network a "name" of letters, digits, '_', '.' or '-'`
	case e.Code == types.ErrIncompatibleCNIVersion:
		e.Details = "podnet speaks CNI 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0; set cniVersion to one of them"
	case e.Code == types.ErrInvalidNetNS:
		e.Details = "CNI_NETNS must be the pod's network namespace, not the one the plugin runs in"
	}
}

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/podnet/podnet/pkg/podnetd"
)

// cleanupMain is `podnetd cleanup`: it removes what podnet put on this
// node (see podnetd.Cleanup), once no podnetd runs here any more, and
// prints what it removed and what it kept and why.
func cleanupMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("podnetd cleanup", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: podnetd cleanup [flags]

Removes what podnet put on this node, after podnet's DaemonSet is deleted:
its CNI config, the nftables tables inet podnet-masq and ip/ip6 podnet-proxy,
every route of protocol 201, the VXLAN device podnet.1, and, where no pod is
left, the bridge cni0, the plugin's reservation store and (--remove-cni-bin)
the plugin. Pods still attached keep their bridge and addresses; it says
which. Running it again removes nothing and succeeds.

Flags:
`)
		fs.PrintDefaults()
	}
	var cfg podnetd.CleanupConfig
	fs.StringVar(&cfg.CNIConfDir, "cni-conf-dir", "/etc/cni/net.d", "where podnetd wrote the CNI conflist")
	fs.StringVar(&cfg.CNIBinDir, "cni-bin-dir", "/opt/cni/bin", "where the plugin was installed")
	fs.BoolVar(&cfg.RemoveCNIBin, "remove-cni-bin", false, "remove the plugin binary too (kept while pods are attached: their CNI DEL needs it)")
	fs.StringVar(&cfg.DataDir, "podnet-data-dir", "/var/lib/cni/podnet", "the plugin's reservation store, if podnet's CNI config (which names it) is gone already")
	agent := fs.String("agent", "127.0.0.1:9965", "podnetd's listen address: the cleanup waits until nothing answers there, since a running agent puts back what it removes (empty: do not check)")
	wait := fs.Duration("wait", 2*time.Minute, "how long to wait for a running podnetd to go")
	if ok, code := parseFlags(fs, args, stderr); !ok {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *agent != "" {
		if err := waitAgentGone(ctx, *agent, *wait, stderr); err != nil {
			fmt.Fprintln(stderr, "podnetd cleanup:", err)
			return 1
		}
	}
	rep, err := podnetd.Cleanup(ctx, cfg)
	printReport(stdout, rep)
	if err != nil {
		fmt.Fprintln(stderr, "podnetd cleanup:", err)
		return 1
	}
	return 0
}

// printReport prints one line per object removed or kept.
func printReport(w io.Writer, rep podnetd.CleanupReport) {
	for _, r := range rep.Removed {
		fmt.Fprintln(w, "removed", r)
	}
	for _, k := range rep.Kept {
		fmt.Fprintln(w, "kept   ", k)
	}
	switch {
	case len(rep.Removed) == 0 && len(rep.Kept) == 0:
		fmt.Fprintln(w, "nothing of podnet's is left on this node")
	case len(rep.Kept) == 0:
		fmt.Fprintf(w, "removed %d objects; nothing of podnet's is left on this node\n", len(rep.Removed))
	default:
		fmt.Fprintf(w, "removed %d objects, kept %d (see above why)\n", len(rep.Removed), len(rep.Kept))
	}
}

// waitAgentGone waits until nothing accepts connections at addr (podnetd's
// listen address), for at most wait.
func waitAgentGone(ctx context.Context, addr string, wait time.Duration, stderr io.Writer) error {
	deadline := time.Now().Add(wait)
	said := false
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return nil
		}
		c.Close()
		if time.Now().After(deadline) {
			return fmt.Errorf("a podnetd still answers on %s after %s: delete podnet's DaemonSet first "+
				"(kubectl delete -f deploy/podnet.yaml); a running agent puts back what the cleanup removes "+
				"(--agent '' skips this check)", addr, wait)
		}
		if !said {
			fmt.Fprintf(stderr, "podnetd cleanup: a podnetd still answers on %s; waiting up to %s for it to go\n", addr, wait)
			said = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

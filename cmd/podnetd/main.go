// Command podnetd is podnet's node agent: one per node (a process in each
// lab machine; a DaemonSet on a real cluster). See package podnetd.
//
//	podnetd [flags]              the agent (flags, or --config FILE)
//	podnetd cleanup [flags]      remove what podnet put on this node
//	podnetd install-cni [flags]  place the CNI plugin in /opt/cni/bin atomically
//	podnetd sleep                wait for a signal (the cleanup DaemonSet's main container)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

// dispatch runs the command args name and returns its exit code: 0, 1 for
// a failure, 2 for bad arguments or options.
func dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "cleanup":
			return cleanupMain(args[1:], stdout, stderr)
		case "install-cni":
			return installMain(args[1:], stdout, stderr)
		case "sleep":
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			<-ctx.Done()
			return 0
		}
	}
	return agentMain(args, stderr)
}

// parseFlags parses args into fs; -h prints the usage and is no error.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) (ok bool, code int) {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return false, 0
		}
		return false, 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q (flags only; see -h)\n", fs.Name(), fs.Arg(0))
		return false, 2
	}
	return true, 0
}

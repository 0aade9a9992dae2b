package images

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
)

// RunBuiltin runs the built-in program name (one of the Builtin constants)
// with args, as Program.Builtin and Program.Args describe it, and returns its
// exit code. Servers listen on every address of the current network
// namespace. It returns when the program ends by itself, when ctx is done or
// when the process receives SIGTERM or SIGINT; a server stopped that way exits
// 0, like nginx, httpd and agnhost netexec on SIGTERM.
//
// RunBuiltin is meant to run in a process of its own (the lab re-executes
// itself inside the pod's netns): while it runs, SIGTERM and SIGINT stop the
// built-in instead of the process. stdout and stderr may be the same writer;
// RunBuiltin serializes its writes.
func RunBuiltin(ctx context.Context, name string, args []string, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stopSignals(ctx, cancel)

	mu := &sync.Mutex{}
	stdout, stderr = &lockedWriter{mu: mu, w: stdout}, &lockedWriter{mu: mu, w: stderr}
	switch name {
	case BuiltinNginx:
		return runWebServer(ctx, nginxSite, args, stdout, stderr)
	case BuiltinHTTPD:
		return runWebServer(ctx, httpdSite, args, stdout, stderr)
	case BuiltinAgnhost:
		return runAgnhost(ctx, args, stdout, stderr)
	case BuiltinPause:
		<-ctx.Done()
		return 0
	}
	fmt.Fprintf(stderr, "podnet lab: no built-in program %q (have %s, %s, %s and %s)\n",
		name, BuiltinNginx, BuiltinHTTPD, BuiltinAgnhost, BuiltinPause)
	return 127
}

// signalError is the cause of a context cancelled by a signal.
type signalError struct{ sig os.Signal }

func (e signalError) Error() string { return "received signal " + e.sig.String() }

// stopSignals cancels ctx, with a signalError cause, on SIGTERM or SIGINT
// until ctx is done.
func stopSignals(ctx context.Context, cancel context.CancelCauseFunc) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		defer signal.Stop(ch)
		select {
		case sig := <-ch:
			cancel(signalError{sig})
		case <-ctx.Done():
		}
	}()
}

// stopReason is the signal that stopped ctx, or SIGTERM (what the lab sends
// when it stops a container) when the caller cancelled it.
func stopReason(ctx context.Context) os.Signal {
	var se signalError
	if errors.As(context.Cause(ctx), &se) {
		return se.sig
	}
	return syscall.SIGTERM
}

// lockedWriter serializes writes from the goroutines of a built-in server.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// newFlagSet returns a flag set that reports errors to out and accepts the
// klog verbosity flag agnhost's command line has everywhere.
func newFlagSet(name string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Int("v", 0, "log verbosity (accepted and ignored)")
	return fs
}

// parseArgs parses flags found anywhere among args, as cobra does (agnhost
// connect takes "HOST:PORT --timeout=1s"), and returns the other arguments.
// Everything after "--" is an argument.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(positional, rest...), nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

// flagExit is the exit code for a flag parsing error: 0 for -h/--help (the
// usage is already printed), 1 otherwise.
// parseNoArgs parses flags of a subcommand that takes no positional
// argument, as agnhost's do; ok is false when the caller must exit with code.
func parseNoArgs(fs *flag.FlagSet, args []string, stderr io.Writer) (code int, ok bool) {
	rest, err := parseArgs(fs, args)
	if err != nil {
		return flagExit(err), false
	}
	if len(rest) > 0 {
		fmt.Fprintf(stderr, "Error: accepts at most 0 arg(s), received %d\n", len(rest))
		return 1, false
	}
	return 0, true
}

func flagExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 1
}

// portList is a repeatable --port flag.
type portList []int

func (p *portList) String() string { return fmt.Sprint([]int(*p)) }

func (p *portList) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 || n > 65535 {
		return fmt.Errorf("invalid port %q", s)
	}
	*p = append(*p, n)
	return nil
}

package nodeagent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/creack/pty"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"

	"github.com/podnet/podnet/pkg/lab/cgroup"
	"github.com/podnet/podnet/pkg/lab/images"
)

// outputGrace is how long exec waits, once the command has exited, for
// processes it left in the background to let go of its output.
const outputGrace = 2 * time.Second

// halfCloseGrace is how long a forwarded connection stays open towards the
// pod once the pod has closed its side.
const halfCloseGrace = 100 * time.Millisecond

// containerStreams is the cri-streaming Executor and Attacher of one
// container, looked up when the request came.
type containerStreams struct {
	k *kubeletAPI
	c Container
}

// ExecInContainer runs cmd in the container (see execIn). A non-zero exit
// is returned as a utilexec.ExitError, which the library reports to the
// client as "command terminated with exit code N".
func (s *containerStreams) ExecInContainer(ctx context.Context, _, _, _ string, cmd []string, in io.Reader, out, errOut io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, _ time.Duration) error {
	return s.k.execIn(ctx, s.c, cmd, in, out, errOut, tty, resize)
}

// AttachContainer shows what the container writes from now on, until it
// exits. The lab's containers have no stdin and no tty (their stdout and
// stderr both go to the log file), so input is read and dropped.
func (s *containerStreams) AttachContainer(ctx context.Context, pod, _, container string, in io.Reader, out, errOut io.WriteCloser, _ bool, _ <-chan remotecommand.TerminalSize) error {
	if in != nil {
		go func() { _, _ = io.Copy(io.Discard, in) }()
	}
	var w io.Writer = io.Discard
	if out != nil {
		w = out
	} else if errOut != nil {
		w = errOut
	}
	f, err := os.Open(s.c.LogPath)
	if err != nil {
		return fmt.Errorf("open the log of container %q: %w", container, err)
	}
	defer f.Close()
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		return err
	}
	ns, name, _ := strings.Cut(pod, "/")
	err = copyLog(ctx, w, f, func() bool {
		now, err := s.k.pods.LookupContainer(ns, name, container)
		return err != nil || now.PID != s.c.PID
	})
	if err != nil {
		s.k.log.Debug("attach ended", "pod", pod, "container", container, "err", err)
	}
	return nil // the client went away or the container exited: both end attach
}

// execIn runs argv in the container's network, mount and UTS namespaces
// (`nsenter -t PID -n -m -u`), in its working directory, with its
// environment and in its cgroup (so it dies with the pod), as `runc exec`
// does. With tty, argv gets a pseudo-terminal whose size follows resize.
func (k *kubeletAPI) execIn(ctx context.Context, c Container, argv []string, in io.Reader, out, errOut io.Writer, tty bool, resize <-chan remotecommand.TerminalSize) error {
	full := append([]string{"nsenter", "--target", strconv.Itoa(c.PID), "--net", "--mount", "--uts", "--wd", "--"}, argv...)
	cmd := exec.CommandContext(ctx, full[0], full[1:]...)
	cmd.Env = containerEnv(c.PID)
	if tty {
		cmd.Env = append(cmd.Env, "TERM=xterm")
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if cg, err := containerCgroup(c.PID); err != nil {
		k.log.Debug("exec outside the container's cgroup", "pid", c.PID, "err", err)
	} else {
		defer cg.Close()
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cg.Fd())
	}
	var err error
	if tty {
		err = runWithTTY(cmd, in, out, resize)
	} else {
		err = runPiped(cmd, in, out, errOut)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code := ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal()) // as a shell reports it
		}
		return utilexec.CodeExitError{Err: err, Code: code}
	}
	return err
}

func runPiped(cmd *exec.Cmd, in io.Reader, out, errOut io.Writer) error {
	cmd.Stdout, cmd.Stderr = out, errOut
	cmd.WaitDelay = outputGrace
	var stdin io.WriteCloser
	if in != nil {
		var err error
		if stdin, err = cmd.StdinPipe(); err != nil {
			return err
		}
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	if stdin != nil {
		// Not waited for: the client may keep its stdin open after the
		// command has exited. The end of input closes the command's stdin.
		go func() {
			_, _ = io.Copy(stdin, in)
			stdin.Close()
		}()
	}
	return cmd.Wait()
}

func runWithTTY(cmd *exec.Cmd, in io.Reader, out io.Writer, resize <-chan remotecommand.TerminalSize) error {
	cmd.SysProcAttr.Setctty = true
	// kubectl sends the terminal's size as soon as the streams are up;
	// start with it, so the command's first output fits.
	var size *pty.Winsize
	select {
	case sz, ok := <-resize:
		if ok {
			size = &pty.Winsize{Rows: sz.Height, Cols: sz.Width}
		}
	case <-time.After(200 * time.Millisecond):
	}
	ptmx, err := pty.StartWithAttrs(cmd, size, cmd.SysProcAttr)
	if err != nil {
		return err
	}
	defer ptmx.Close()
	exited := make(chan struct{})
	go func() {
		for {
			select {
			case <-exited:
				return
			case sz, ok := <-resize:
				if !ok {
					return
				}
				_ = pty.Setsize(ptmx, &pty.Winsize{Rows: sz.Height, Cols: sz.Width})
			}
		}
	}()
	if in != nil {
		go func() {
			_, _ = io.Copy(ptmx, in)
			// The client's input has ended: hang up, as a closing
			// terminal does (the command leads its own session).
			select {
			case <-exited:
			default:
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGHUP)
			}
		}()
	}
	if out == nil {
		out = io.Discard
	}
	copied := make(chan struct{})
	go func() {
		// Ends with EIO once the last process holding the terminal exits.
		_, _ = io.Copy(out, ptmx)
		close(copied)
	}()
	err = cmd.Wait()
	close(exited)
	select {
	case <-copied:
	case <-time.After(outputGrace):
	}
	return err
}

// containerEnv is the environment of the container's main process, which
// exec'd commands get as they would from the runtime.
func containerEnv(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil || len(b) == 0 {
		return []string{"PATH=" + images.ContainerPATH}
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// containerCgroup opens the cgroup v2 directory of a process.
func containerCgroup(pid int) (*os.File, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rel, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			mnt, err := cgroup.Mount()
			if err != nil {
				return nil, err
			}
			return os.Open(filepath.Join(mnt, rel))
		}
	}
	return nil, fmt.Errorf("process %d: no cgroup v2 membership", pid)
}

// podForwarder is the cri-streaming PortForwarder of one pod: the agent
// runs in the node's network namespace, so it dials the pod's address.
type podForwarder struct {
	k  *kubeletAPI
	ip netip.Addr
}

// PortForward copies one forwarded connection between stream and the
// pod's port, passing half-closes on in both directions.
func (p *podForwarder) PortForward(ctx context.Context, pod, _ string, port int32, stream io.ReadWriteCloser) error {
	if port < 1 || port > 65535 {
		return fmt.Errorf("port %d: not a TCP port", port)
	}
	addr := netip.AddrPortFrom(p.ip, uint16(port)).String()
	d := net.Dialer{Timeout: 5 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("connect to %s of pod %s: %w", addr, pod, err)
	}
	defer conn.Close()
	toPod := make(chan struct{})
	go func() {
		defer close(toPod)
		_, _ = io.Copy(conn, stream)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite() // the client has sent everything
		}
	}()
	if _, err := io.Copy(stream, conn); err != nil {
		p.k.log.Debug("port-forward: copy from the pod", "pod", pod, "port", port, "err", err)
	}
	// The pod has closed its side. The client learns it only when this
	// returns (kubectl waits for the error stream to close before it
	// closes its local connection), so give bytes the client is still
	// sending to a half-closed pod a moment, not more.
	select {
	case <-toPod:
	case <-time.After(halfCloseGrace):
	}
	return nil
}

// runOutput is exec's output for /run: stdout and stderr in one buffer
// (os/exec writes to it from one goroutine, as both are the same writer).
func (k *kubeletAPI) runOutput(ctx context.Context, c Container, argv []string) ([]byte, error) {
	var out bytes.Buffer
	err := k.execIn(ctx, c, argv, nil, &out, &out, false, nil)
	return out.Bytes(), err
}

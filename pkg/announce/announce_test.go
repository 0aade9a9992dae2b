package announce

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func serve(t *testing.T, socket string, program func(context.Context, Pod) (bool, error)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Listen(ctx, socket, Handler(program)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Listen: %v", err)
		}
	})
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			return
		}
		if i > 200 {
			t.Fatal("socket never listened")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSendWaitsForTheAnswer(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "run", "policy.sock")
	var got Pod
	serve(t, socket, func(_ context.Context, p Pod) (bool, error) {
		got = p
		time.Sleep(50 * time.Millisecond) // a sync
		return true, nil
	})
	start := time.Now()
	r, err := Send(context.Background(), socket, Pod{Namespace: "default", Name: "pod-b", IPs: []string{"10.244.1.3"}})
	if err != nil || !r.Isolated {
		t.Fatalf("Send: %+v, %v", r, err)
	}
	if time.Since(start) < 50*time.Millisecond {
		t.Error("Send returned before the answer")
	}
	if got.Name != "pod-b" || got.IPs[0] != "10.244.1.3" {
		t.Errorf("podnetd got %+v", got)
	}
}

func TestBadAnnouncementsAndFailuresAreErrors(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "policy.sock")
	serve(t, socket, func(_ context.Context, p Pod) (bool, error) {
		if p.Name == "slow" {
			return false, errors.New("not programmed in time")
		}
		return false, nil
	})
	for _, tc := range []struct {
		p    Pod
		want string
	}{
		{Pod{Namespace: "default", IPs: []string{"10.244.1.3"}}, "namespace and name go together"},
		{Pod{IPs: []string{"10.244.1.3"}, HostIf: "a/b"}, `host interface "a/b"`},
		{Pod{IPs: []string{"10.244.1.3"}, HostIf: "veth0123456789abcdef"}, `host interface "veth0123456789abcdef"`},
		{Pod{Namespace: "default", Name: "x", IPs: []string{"10.244.1.300"}}, `address "10.244.1.300"`},
		{Pod{Namespace: "default", Name: "x"}, "no address"},
		{Pod{Namespace: "default", Name: "slow", IPs: []string{"10.244.1.3"}}, "not programmed in time"},
	} {
		if _, err := Send(context.Background(), socket, tc.p); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error saying %q", tc.p, err, tc.want)
		}
	}
	// A container that is not a Kubernetes pod is announced by address
	// and interface alone.
	if _, err := Send(context.Background(), socket, Pod{IPs: []string{"10.244.1.3"}, HostIf: "veth0123456789a"}); err != nil {
		t.Errorf("a nameless announcement: %v", err)
	}
	if _, err := Send(context.Background(), filepath.Join(t.TempDir(), "none.sock"), Pod{Namespace: "a", Name: "b", IPs: []string{"10.0.0.1"}}); err == nil {
		t.Error("Send to no podnetd succeeded")
	}
}

func TestListenReplacesAStaleSocketButNotALiveOne(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "policy.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	// a live listener: refused
	if err := Listen(context.Background(), socket, Handler(nil)); err == nil || !strings.Contains(err.Error(), "another podnetd") {
		t.Errorf("Listen beside a live socket: %v", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // the file stays: stale
	serve(t, socket, func(context.Context, Pod) (bool, error) { return false, nil })
	// not a socket: refused, file kept
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Listen(context.Background(), file, Handler(nil)); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen on a file: %v", err)
	}
	if _, err := os.Stat(file); err != nil {
		t.Errorf("the file was removed: %v", err)
	}
}

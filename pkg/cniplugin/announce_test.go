package cniplugin

import (
	"context"
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/pkg/announce"
	"github.com/podnet/podnet/pkg/wire"
)

// With podnetd's socket in the conflist, ADD announces the pod with its
// address and host veth and returns only after podnetd answers; if
// podnetd does not, ADD fails with "try again later" and leaves nothing
// behind.
func TestAddAnnouncesThePodToPodnetd(t *testing.T) {
	e := newEnv(t)
	var got []announce.Pod
	var sockets []string
	e.p.Announce = func(_ context.Context, socket string, p announce.Pod) (announce.Reply, error) {
		got, sockets = append(got, p), append(sockets, socket)
		return announce.Reply{Isolated: true}, nil
	}
	a := e.mustAdd(t, cmdArgs("c1", netns, conf(t, "1.1.0", map[string]any{"agentSocket": "/run/podnet/podnetd.sock"})))
	if len(got) != 1 || sockets[0] != "/run/podnet/podnetd.sock" {
		t.Fatalf("announcements %v to %v, want one to /run/podnet/podnetd.sock", got, sockets)
	}
	addr := mustPrefix(t, a.res.IPs[0].Address).Addr().String()
	if p := got[0]; p.Namespace != "default" || p.Name != "web-0" || len(p.IPs) != 1 || p.IPs[0] != addr || p.HostIf != wire.HostName("c1", "eth0") {
		t.Errorf("announced %+v, want default/web-0 with %s on %s", p, addr, wire.HostName("c1", "eth0"))
	}
	if err := got[0].Check(); err != nil {
		t.Errorf("the announcement does not pass podnetd's check: %v", err)
	}

	// No socket (anti-spoofing and NetworkPolicy off): nothing announced.
	got = nil
	e.mustAdd(t, cmdArgs("c2", netns2, conf(t, "1.1.0", nil)))
	if len(got) != 0 {
		t.Errorf("announced %v without a socket", got)
	}
}

func TestAddFailsClosedWhenPodnetdDoesNotAnswer(t *testing.T) {
	e := newEnv(t)
	e.p.Announce = func(context.Context, string, announce.Pod) (announce.Reply, error) {
		return announce.Reply{}, errors.New("dial unix /run/podnet/podnetd.sock: connect: no such file or directory")
	}
	_, err := e.add(t, cmdArgs("c1", netns, conf(t, "1.1.0", map[string]any{"agentSocket": "/run/podnet/podnetd.sock"})))
	ce := cniErr(t, err)
	if ce == nil {
		t.Fatal("ADD succeeded without podnetd's answer")
	}
	if ce.Code != types.ErrTryAgainLater || ce.Details == "" {
		t.Errorf("error %d %q (%q), want code %d with details", ce.Code, ce.Msg, ce.Details, types.ErrTryAgainLater)
	}
	e.wantNothingLeaked(t)
}

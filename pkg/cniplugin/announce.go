package cniplugin

import (
	"context"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/pkg/announce"
	"github.com/podnet/podnet/pkg/netconf"
)

// announceTimeout bounds the wait for podnetd: one policy sync takes
// milliseconds; this covers a podnetd that is just starting.
const announceTimeout = 20 * time.Second

// announce tells podnetd (at the conflist's agentSocket) the new pod's
// addresses and host interface and waits until its rules are in the
// kernel: its anti-spoofing entry (until then its veth sends nothing) and
// its NetworkPolicy, so that its containers, which start after ADD
// returns, never exchange a packet the rules forbid. Without a socket in
// the conflist (anti-spoofing and NetworkPolicy off) there is nothing to
// wait for. If podnetd does not answer, ADD fails with "try again later"
// and the runtime retries: the pod waits rather than start unguarded.
func (p *Plugin) announce(conf *netconf.Conf, pod netconf.PodArgs, plan addressing, hostIf string) error {
	if conf.AgentSocket == "" || p.Announce == nil {
		return nil
	}
	a := announce.Pod{Namespace: pod.Namespace, Name: pod.Name, HostIf: hostIf}
	if a.Namespace == "" || a.Name == "" {
		a.Namespace, a.Name = "", "" // not a Kubernetes pod: no policy
	}
	for _, ad := range plan.addrs {
		a.IPs = append(a.IPs, ad.Addr().String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), announceTimeout)
	defer cancel()
	r, err := p.Announce(ctx, conf.AgentSocket, a)
	if err != nil {
		return types.NewError(types.ErrTryAgainLater, "the pod's rules (anti-spoofing, NetworkPolicy) are not in place: "+err.Error(),
			"podnetd on this node must be running (kubectl -n kube-system get pods -l app.kubernetes.io/name=podnet -o wide); the runtime retries")
	}
	p.Log.Info("rules in place", "pod", a.String(), "isolated", r.Isolated)
	return nil
}

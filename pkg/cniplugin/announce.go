package cniplugin

import (
	"context"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/pkg/netconf"
	"github.com/podnet/podnet/pkg/policy/announce"
)

// announceTimeout bounds the wait for podnetd: one policy sync takes
// milliseconds; this covers a podnetd that is just starting.
const announceTimeout = 20 * time.Second

// announce tells podnetd (at the conflist's policySocket) the new pod's
// addresses and waits until its NetworkPolicy is in the kernel, so that
// its containers, which start after ADD returns, never exchange a packet
// the policy forbids. Without a socket in the conflist (NetworkPolicy off)
// or a pod name in CNI_ARGS (not a Kubernetes pod) there is nothing to
// wait for. If podnetd does not answer, ADD fails with "try again later"
// and the runtime retries: the pod waits rather than start unpoliced.
func (p *Plugin) announce(conf *netconf.Conf, pod netconf.PodArgs, plan addressing) error {
	if conf.PolicySocket == "" || pod.Namespace == "" || pod.Name == "" || p.Announce == nil {
		return nil
	}
	a := announce.Pod{Namespace: pod.Namespace, Name: pod.Name}
	for _, ad := range plan.addrs {
		a.IPs = append(a.IPs, ad.Addr().String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), announceTimeout)
	defer cancel()
	r, err := p.Announce(ctx, conf.PolicySocket, a)
	if err != nil {
		return types.NewError(types.ErrTryAgainLater, "NetworkPolicy for the pod is not in place: "+err.Error(),
			"podnetd on this node must be running (kubectl -n kube-system get pods -l app.kubernetes.io/name=podnet -o wide); the runtime retries")
	}
	p.Log.Info("NetworkPolicy in place", "pod", pod.Namespace+"/"+pod.Name, "isolated", r.Isolated)
	return nil
}

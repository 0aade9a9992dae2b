package nodeagent

import (
	"context"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

// cleanStart removes what an earlier run of the agent on this node left:
// pod processes (by cgroup), their network attachments (CNI GC with no
// valid attachment: veths and address reservations), sandboxes and pod
// files. The agent does not adopt running pods yet; a restarted agent
// restarts its pods, as a rebooted node would.
func (a *Agent) cleanStart(ctx context.Context) {
	if g, err := a.podGroup("", ""); err == nil && g.Populated() {
		a.log.Info("stopping pods left by an earlier run of the agent")
		if err := g.Remove(5 * time.Second); err != nil {
			a.log.Warn("stop leftover pods", "err", err)
		}
	}
	if list, err := a.networkList(); err == nil {
		if err := a.cni().GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{}}); err != nil {
			a.log.Warn("CNI GC of leftovers", "err", err)
		}
	}
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "cni-") {
				_ = run("ip", "netns", "del", e.Name())
			}
		}
	}
	_ = os.RemoveAll(a.cfg.PodDir)
}

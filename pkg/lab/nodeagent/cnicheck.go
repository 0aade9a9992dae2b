package nodeagent

import (
	"context"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

// cniInterval is how often the agent CHECKs every sandbox and GCs the
// attachments it no longer has.
const cniInterval = 30 * time.Second

// checkAndGC runs CNI CHECK for every running pod (a failure is logged with
// the plugin's message: the network of that pod was changed behind the
// runtime's back) and CNI GC with the attachments of the running pods as the
// valid ones, which releases whatever a crash or a lost DEL left behind.
func (a *Agent) checkAndGC(ctx context.Context) {
	list, err := a.networkList()
	if err != nil {
		return
	}
	a.mu.Lock()
	type sb struct {
		pod string
		rt  *libcni.RuntimeConf
	}
	var sbs []sb
	valid := []types.GCAttachment{}
	for _, ps := range a.pods {
		sbs = append(sbs, sb{ps.namespace + "/" + ps.name, ps.sb.rt})
		valid = append(valid, types.GCAttachment{ContainerID: ps.sb.rt.ContainerID, IfName: ps.sb.rt.IfName})
	}
	a.mu.Unlock()
	cni := a.cni()
	for _, s := range sbs {
		if err := cni.CheckNetworkList(ctx, list, s.rt); err != nil {
			a.log.Warn("CNI CHECK failed", "pod", s.pod, "err", err)
		}
	}
	if err := cni.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
		a.log.Warn("CNI GC", "err", err)
	}
}

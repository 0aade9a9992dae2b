package cniplugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podnet/podnet/pkg/ipam"
	"github.com/podnet/podnet/pkg/netconf"
	"github.com/podnet/podnet/pkg/wire"
)

// addressing is the layer-3 plan of one pod interface.
type addressing struct {
	addrs  []netip.Prefix // pod addresses, with the subnet's prefix length
	gws    []netip.Prefix // the bridge's address in each subnet, same order
	routes []wire.Route
	dns    types.DNS
}

// Add implements CNI ADD. On any failure it undoes what it did — the veth
// pair and the reservation — so a failed ADD leaks nothing.
func (p *Plugin) Add(args *skel.CmdArgs) (err error) {
	conf, err := netconf.Parse(args.StdinData)
	if err != nil {
		return cniError(err)
	}
	pod, err := netconf.ParseArgs(args.Args)
	if err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, err.Error(),
			"write CNI_ARGS as KEY=VALUE pairs separated by ';'")
	}
	ctx := context.Background()
	plan, release, err := p.allocate(ctx, conf, args, pod)
	if err != nil {
		return cniError(err)
	}
	defer func() {
		if err != nil {
			// Undo in reverse order; the interface first, so the address is
			// never free while an interface still carries it.
			if derr := p.Kernel.Detach(args.ContainerID, args.IfName); derr != nil {
				p.Log.Error("undo failed ADD: delete veth", "container", args.ContainerID, "err", derr)
			}
			if rerr := release(); rerr != nil {
				p.Log.Error("undo failed ADD: release address", "container", args.ContainerID, "err", rerr)
			}
		}
	}()
	br, err := p.Kernel.EnsureBridge(wire.Bridge{Name: conf.Bridge, Gateways: plan.gws})
	if err != nil {
		return cniError(err)
	}
	wp := p.podSpec(conf, args, plan)
	wp.BridgeIndex = br.Index
	at, err := p.Kernel.Attach(wp)
	if err != nil {
		return cniError(err)
	}
	if err := p.announce(conf, pod, plan, at.HostName); err != nil {
		return err
	}
	res := buildResult(conf, args, plan, br.MAC, at)
	if conf.RawPrevResult != nil {
		if res, err = mergePrev(conf, res); err != nil {
			return cniError(err)
		}
	}
	p.Log.Info("ADD", "container", args.ContainerID, "pod", pod.Namespace+"/"+pod.Name,
		"ifname", args.IfName, "addrs", fmt.Sprint(plan.addrs), "host", at.HostName)
	if err := types.PrintResult(res, conf.CNIVersion); err != nil {
		return types.NewError(types.ErrIOFailure, "write result: "+err.Error(), "")
	}
	return nil
}

func (p *Plugin) podSpec(conf *netconf.Conf, args *skel.CmdArgs, plan addressing) wire.Pod {
	return wire.Pod{Network: conf.Name, ContainerID: args.ContainerID, IfName: args.IfName,
		NetNS: args.Netns, Bridge: conf.Bridge, MTU: conf.MTU, Hairpin: conf.Hairpin(),
		Addrs: plan.addrs, Routes: plan.routes}
}

// allocate gets the pod's addresses from the built-in IPAM or the delegate,
// and returns how to give them back.
func (p *Plugin) allocate(ctx context.Context, conf *netconf.Conf, args *skel.CmdArgs, pod netconf.PodArgs) (addressing, func() error, error) {
	var plan addressing
	if conf.IPAM.Builtin == nil {
		r, err := p.Delegate.Add(ctx, conf.IPAM.Type, args.StdinData)
		if err != nil {
			return plan, nil, delegateError(conf.IPAM.Type, err)
		}
		release := func() error { return p.Delegate.Del(ctx, conf.IPAM.Type, args.StdinData) }
		cur, err := current.NewResultFromResult(r)
		if err != nil {
			return plan, release, errors.Join(fmt.Errorf("IPAM plugin %s returned an unusable result: %w", conf.IPAM.Type, err), release())
		}
		if len(cur.IPs) == 0 {
			return plan, release, errors.Join(fmt.Errorf("IPAM plugin %s returned no address", conf.IPAM.Type), release())
		}
		for _, ipc := range cur.IPs {
			a, gw := ipConfigPlan(ipc)
			plan.addrs, plan.gws = append(plan.addrs, a), append(plan.gws, gw)
		}
		plan.routes = routesFor(cur.Routes, plan.gws, conf.DefaultGateway())
		plan.dns = cur.DNS
		return plan, release, nil
	}
	alloc, err := p.allocator(conf)
	if err != nil {
		return plan, nil, err
	}
	alloc.Reclaim = p.interfaceGone(conf.Name)
	att := ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	got, err := alloc.Allocate(ipam.Request{Attachment: att, PodNamespace: pod.Namespace, PodName: pod.Name})
	if err != nil {
		return plan, nil, asStoreError(err)
	}
	release := func() error { _, err := alloc.Release(att); return err }
	plan.addrs, plan.gws = builtinAddrs(conf.IPAM.Builtin, got)
	plan.routes = routesFor(conf.IPAM.Builtin.Routes, plan.gws, conf.DefaultGateway())
	return plan, release, nil
}

// interfaceGone picks, of reservations made long ago (ipam.StaleAfter),
// those whose host veth is gone: their pod's network namespace went (a
// node reset, a sandbox its runtime lost) without the DEL that releases
// them, and no runtime sends a GC for them (containerd 2.4 sends none).
// A live pod's veth exists for as long as its namespace does. When the
// veths cannot be listed, nothing is called stale.
func (p *Plugin) interfaceGone(network string) func([]ipam.Reservation) []ipam.Reservation {
	return func(old []ipam.Reservation) []ipam.Reservation {
		links, err := p.Kernel.HostLinks(network)
		if err != nil {
			p.Log.Warn("ADD: no stale reservation reclaimed", "err", err)
			return nil
		}
		live := make(map[string]bool, len(links))
		for _, l := range links {
			live[l.Name] = true
		}
		var stale []ipam.Reservation
		for _, r := range old {
			if !live[wire.HostName(r.ContainerID, r.IfName)] {
				p.Log.Info("ADD reclaims a stale reservation: its pod's interface is gone", "ip", r.IP,
					"container", r.ContainerID, "pod", r.PodNamespace+"/"+r.PodName, "reserved", r.Created)
				stale = append(stale, r)
			}
		}
		return stale
	}
}

func (p *Plugin) allocator(conf *netconf.Conf) (*ipam.Allocator, error) {
	b := conf.IPAM.Builtin
	st, err := p.OpenStore(b.DataDir, conf.Name)
	if err != nil {
		return nil, asStoreError(err)
	}
	return &ipam.Allocator{Sets: b.Sets, Reserved: b.Reserved, Store: st}, nil
}

// builtinAddrs pairs each reserved address with its range's subnet and gateway.
func builtinAddrs(b *netconf.Builtin, got []ipam.Reservation) (addrs, gws []netip.Prefix) {
	for _, r := range got {
		for _, set := range b.Sets {
			for _, rg := range set {
				if rg.Subnet.Contains(r.IP) {
					addrs = append(addrs, netip.PrefixFrom(r.IP, rg.Subnet.Bits()))
					gws = append(gws, netip.PrefixFrom(rg.Gateway, rg.Subnet.Bits()))
				}
			}
		}
	}
	return addrs, gws
}

// ipConfigPlan reads an IPAM result's address and gateway; a result with no
// gateway gets the subnet's first address, as the built-in IPAM defaults.
func ipConfigPlan(ipc *current.IPConfig) (netip.Prefix, netip.Prefix) {
	a, _ := wire.PrefixOf(&ipc.Address)
	gw, ok := netip.AddrFromSlice(ipc.Gateway)
	if !ok {
		gw = a.Masked().Addr().Next()
	}
	return a, netip.PrefixFrom(gw.Unmap(), a.Bits())
}

// routesFor turns configured routes into pod routes (a route with no gw goes
// via the bridge's address of its family) and, when asked, adds a default
// route via the bridge for each family that has none.
func routesFor(conf []*types.Route, gws []netip.Prefix, defaultGW bool) []wire.Route {
	gwOf := map[bool]netip.Addr{}
	for _, g := range gws {
		if _, ok := gwOf[g.Addr().Is4()]; !ok {
			gwOf[g.Addr().Is4()] = g.Addr()
		}
	}
	var out []wire.Route
	hasDefault := map[bool]bool{}
	for _, r := range conf {
		dst, ok := wire.PrefixOf(&r.Dst)
		if !ok {
			continue
		}
		dst = dst.Masked()
		gw, ok := netip.AddrFromSlice(r.GW)
		if !ok {
			gw = gwOf[dst.Addr().Is4()]
		}
		out = append(out, wire.Route{Dst: dst, Gw: gw.Unmap()})
		if dst.Bits() == 0 {
			hasDefault[dst.Addr().Is4()] = true
		}
	}
	if defaultGW {
		for _, v4 := range []bool{true, false} {
			gw, ok := gwOf[v4]
			if !ok || hasDefault[v4] {
				continue
			}
			dst := netip.MustParsePrefix("::/0")
			if v4 {
				dst = netip.MustParsePrefix("0.0.0.0/0")
			}
			out = append(out, wire.Route{Dst: dst, Gw: gw})
		}
	}
	return out
}

func buildResult(conf *netconf.Conf, args *skel.CmdArgs, plan addressing, brMAC net.HardwareAddr, at wire.Attached) *current.Result {
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	res.Interfaces = []*current.Interface{
		{Name: conf.Bridge, Mac: brMAC.String()},
		{Name: at.HostName, Mac: at.HostMAC.String(), Mtu: conf.MTU},
		{Name: args.IfName, Mac: at.PodMAC.String(), Mtu: conf.MTU, Sandbox: args.Netns},
	}
	for i, a := range plan.addrs {
		res.IPs = append(res.IPs, &current.IPConfig{
			Interface: current.Int(2),
			Address:   net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())},
			Gateway:   plan.gws[i].Addr().AsSlice(),
		})
	}
	for _, r := range plan.routes {
		tr := &types.Route{Dst: net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), r.Dst.Addr().BitLen())}}
		if r.Gw.IsValid() {
			tr.GW = r.Gw.AsSlice()
		}
		res.Routes = append(res.Routes, tr)
	}
	res.DNS = conf.DNS
	if isEmptyDNS(res.DNS) {
		res.DNS = plan.dns
	}
	return res
}

func isEmptyDNS(d types.DNS) bool {
	return len(d.Nameservers) == 0 && d.Domain == "" && len(d.Search) == 0 && len(d.Options) == 0
}

// prevResult parses the configuration's prevResult as a current result.
func prevResult(conf *netconf.Conf) (*current.Result, error) {
	b, err := json.Marshal(conf.RawPrevResult)
	if err != nil {
		return nil, fmt.Errorf("encode prevResult: %w", err)
	}
	r, err := version.NewResult(conf.CNIVersion, b)
	if err != nil {
		return nil, &netconf.Error{Code: types.ErrDecodingFailure, Msg: "prevResult: " + err.Error(),
			Hint: "pass the result of the previous plugin unchanged"}
	}
	return current.NewResultFromResult(r)
}

// mergePrev appends podnet's interfaces, addresses and routes to the result
// of the plugins before it in the chain.
func mergePrev(conf *netconf.Conf, res *current.Result) (*current.Result, error) {
	prev, err := prevResult(conf)
	if err != nil {
		return nil, err
	}
	off := len(prev.Interfaces)
	for _, ipc := range res.IPs {
		ipc.Interface = current.Int(*ipc.Interface + off)
	}
	prev.Interfaces = append(prev.Interfaces, res.Interfaces...)
	prev.IPs = append(prev.IPs, res.IPs...)
	prev.Routes = append(prev.Routes, res.Routes...)
	if isEmptyDNS(prev.DNS) {
		prev.DNS = res.DNS
	}
	prev.CNIVersion = current.ImplementedSpecVersion
	return prev, nil
}

// Del implements CNI DEL: idempotent, and it works when the namespace or
// the veth pair is already gone.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	conf, err := netconf.Parse(args.StdinData)
	if err != nil {
		return cniError(err)
	}
	if err := p.Kernel.Detach(args.ContainerID, args.IfName); err != nil {
		return cniError(err)
	}
	if conf.IPAM.Builtin == nil {
		return cniError(delegateError(conf.IPAM.Type, p.Delegate.Del(context.Background(), conf.IPAM.Type, args.StdinData)))
	}
	alloc, err := p.allocator(conf)
	if err != nil {
		return cniError(err)
	}
	released, err := alloc.Release(ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName})
	if err != nil {
		return cniError(asStoreError(err))
	}
	p.Log.Info("DEL", "container", args.ContainerID, "ifname", args.IfName, "released", len(released))
	return nil
}

// Check implements CNI CHECK: it compares the kernel and the reservation
// store with what ADD reported (prevResult), and names the first difference.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, err := netconf.Parse(args.StdinData)
	if err != nil {
		return cniError(err)
	}
	if conf.RawPrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK needs a prevResult",
			"pass the result of ADD as prevResult, as libcni does")
	}
	prev, err := prevResult(conf)
	if err != nil {
		return cniError(err)
	}
	idx := -1
	for i, in := range prev.Interfaces {
		if in.Name == args.IfName && in.Sandbox == args.Netns {
			idx = i
		}
	}
	if idx < 0 {
		return cniError(fmt.Errorf("prevResult lists no interface %s in %s: %w", args.IfName, args.Netns, wire.ErrDrift))
	}
	mac, err := net.ParseMAC(prev.Interfaces[idx].Mac)
	if err != nil {
		return cniError(fmt.Errorf("prevResult gives %s no valid MAC: %w", args.IfName, wire.ErrDrift))
	}
	var plan addressing
	for _, ipc := range prev.IPs {
		if ipc.Interface != nil && *ipc.Interface == idx {
			a, gw := ipConfigPlan(ipc)
			plan.addrs, plan.gws = append(plan.addrs, a), append(plan.gws, gw)
		}
	}
	ctx := context.Background()
	// The routes ADD installed: from the configuration for the built-in
	// IPAM; for a delegate, its result's routes, of which prevResult is the
	// only record.
	var confRoutes []*types.Route
	if conf.IPAM.Builtin == nil {
		confRoutes = prev.Routes
		if err := p.Delegate.Check(ctx, conf.IPAM.Type, args.StdinData); err != nil {
			return cniError(delegateError(conf.IPAM.Type, err))
		}
	} else {
		confRoutes = conf.IPAM.Builtin.Routes
		if err := p.checkReservations(conf, args, plan.addrs); err != nil {
			return cniError(err)
		}
	}
	plan.routes = routesFor(confRoutes, plan.gws, conf.DefaultGateway())
	return cniError(p.Kernel.Verify(p.podSpec(conf, args, plan), mac))
}

func (p *Plugin) checkReservations(conf *netconf.Conf, args *skel.CmdArgs, addrs []netip.Prefix) error {
	alloc, err := p.allocator(conf)
	if err != nil {
		return err
	}
	held, err := alloc.Lookup(ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName})
	if err != nil {
		return asStoreError(err)
	}
	for _, a := range addrs {
		found := false
		for _, r := range held {
			found = found || r.IP == a.Addr()
		}
		if !found {
			return fmt.Errorf("the reservation of %s for container %s/%s is missing from the IPAM store: %w",
				a.Addr(), args.ContainerID, args.IfName, wire.ErrDrift)
		}
	}
	return nil
}

// Status implements CNI STATUS: nil when an ADD would succeed now.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, err := netconf.Parse(args.StdinData)
	if err != nil {
		return cniError(err)
	}
	up, err := p.Kernel.BridgeStatus(conf.Bridge)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, err.Error(),
			`an interface named like the bridge is in the way: set "bridge" to another name or delete it`)
	}
	if conf.IPAM.Builtin == nil {
		return cniError(delegateError(conf.IPAM.Type, p.Delegate.Status(context.Background(), conf.IPAM.Type, args.StdinData)))
	}
	alloc, err := p.allocator(conf)
	if err == nil {
		if w, ok := alloc.Store.(interface{ Writable() error }); ok {
			err = w.Writable()
		}
	}
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, err.Error(),
			"make the IPAM data directory writable by the plugin (ipam.dataDir, default "+ipam.DefaultDataDir+")")
	}
	if err := alloc.CheckFree(); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, err.Error(),
			"delete pods or run a CNI GC to release leaked reservations, or give the node a larger range")
	}
	if !up {
		return types.NewError(types.ErrLimitedConnectivity, "bridge "+conf.Bridge+" is down",
			"existing pods on this node are cut off; find what set it down, then `ip link set "+conf.Bridge+" up` (the next ADD does it too)")
	}
	return nil
}

// GC implements CNI GC: it releases every reservation and deletes every host
// veth of this network whose attachment is not in the runtime's list of
// valid attachments, and never touches a valid one.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	conf, err := netconf.Parse(args.StdinData)
	if err != nil {
		return cniError(err)
	}
	list := conf.GCValid()
	if list == nil {
		// Without the list every attachment would look stale: refuse rather
		// than cut every pod of the node off.
		return types.NewError(types.ErrInvalidNetworkConfig, "GC without cni.dev/valid-attachments",
			"pass the attachments still in use as cni.dev/valid-attachments (an empty list releases everything)")
	}
	valid := make(map[ipam.Attachment]bool, len(list))
	for _, a := range list {
		valid[ipam.Attachment{ContainerID: a.ContainerID, IfName: a.IfName}] = true
	}
	validNames := make(map[string]bool, len(list))
	for a := range valid {
		validNames[wire.HostName(a.ContainerID, a.IfName)] = true
	}
	links, err := p.Kernel.HostLinks(conf.Name)
	if err != nil {
		return cniError(err)
	}
	var errs []error
	// Interfaces first, then addresses: an address is never free while a
	// stale interface still carries it.
	for _, l := range links {
		// By name, not alias: a veth whose plugin died before setting its
		// alias has none, but its name is derived from its attachment.
		if validNames[l.Name] {
			continue
		}
		if err := p.Kernel.DeleteHostLink(l.Name); err != nil {
			errs = append(errs, err)
		} else {
			p.Log.Info("GC deleted veth", "link", l.Name, "container", l.ContainerID)
		}
	}
	if conf.IPAM.Builtin == nil {
		errs = append(errs, delegateError(conf.IPAM.Type, p.Delegate.GC(context.Background(), conf.IPAM.Type, args.StdinData)))
	} else if alloc, err := p.allocator(conf); err != nil {
		errs = append(errs, err)
	} else {
		released, err := alloc.GC(valid)
		errs = append(errs, asStoreError(err))
		for _, r := range released {
			p.Log.Info("GC released address", "ip", r.IP, "container", r.ContainerID, "pod", r.PodNamespace+"/"+r.PodName)
		}
	}
	return cniError(errors.Join(errs...))
}

package podnetd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/podnet/podnet/pkg/antispoof"
	"github.com/podnet/podnet/pkg/ipam"
	"github.com/podnet/podnet/pkg/masq"
	"github.com/podnet/podnet/pkg/netconf"
	"github.com/podnet/podnet/pkg/policy"
	"github.com/podnet/podnet/pkg/proxy"
)

// This file is `podnetd cleanup`: it removes what podnet put on a node once
// podnet is uninstalled (its DaemonSet deleted), in this order:
//
//  1. podnet's CNI conflist (netconf.ConflistName, and a temporary its
//     atomic write may have left), first, so that the runtime starts no
//     further pod on podnet here; its bridge, network name and store
//     directory are read from it before it goes.
//  2. The nftables tables inet podnet-masq, ip podnet-proxy,
//     ip6 podnet-proxy and inet podnet-policy, deleted whole (they are
//     podnet's by name).
//  3. Every route with podnet's protocol (201), in every table and both
//     families; then the VTEP podnet.1, if it is the one podnet makes
//     (cleanup_links.go). Routes go first so that each is named.
//  4. The per-pod state, only where no pod is left (cleanup_links.go,
//     cleanup_store.go): the bridge cni0 only when it has no port and is
//     podnet's; the plugin's reservation store only when none of its
//     reservations is live (its pod's host veth exists, or it is younger
//     than Grace: an ADD between reserving the address and creating the
//     veth); the plugin binary only when asked and when no pod is left.
//     A pod still here keeps its interface, address and the bridge, and
//     the report says which pods and what to do.
//
// It never touches anything podnet did not make: other tables, routes of
// other protocols, other devices, other files. It is idempotent: a second
// run finds nothing to remove and succeeds.

// CleanupConfig says where podnet's files are on this node. The zero
// value is the DaemonSet's layout.
type CleanupConfig struct {
	// CNIConfDir holds podnet's conflist (default /etc/cni/net.d).
	CNIConfDir string
	// CNIBinDir holds the plugin binary (default /opt/cni/bin).
	CNIBinDir string
	// RemoveCNIBin removes CNIBinDir/podnet too (when no pod is left).
	RemoveCNIBin bool
	// DataDir is the plugin's reservation store, when podnet's conflist
	// (which names it) is gone already (default ipam.DefaultDataDir).
	DataDir string
	// Grace: a reservation younger than this counts as live even without
	// its pod's veth (default DefaultCleanupGrace).
	Grace time.Duration
	// MasqNFT, ProxyNFT and Proxy6NFT reach podnet's nft tables (bound to
	// masq.Family/masq.TableName, proxy.IPv4.NFT and proxy.IPv6.NFT with
	// proxy.TableName); nil: the nft binary.
	MasqNFT, ProxyNFT, Proxy6NFT knftables.Interface
	// PolicyNFT reaches the NetworkPolicy table (knftables.InetFamily,
	// policy.TableName); nil: the nft binary.
	PolicyNFT knftables.Interface
	// SpoofNFT reaches the anti-spoofing tables (bridge and inet families,
	// antispoof.TableName); nil: the nft binary.
	SpoofNFT [2]knftables.Interface
	Now      func() time.Time
}

// DefaultCleanupGrace is how young a reservation without a veth must be to
// count as an ADD in progress: an ADD takes milliseconds to a few seconds.
const DefaultCleanupGrace = 2 * time.Minute

// CleanupReport is what a cleanup did: one line per object removed, and
// one per object kept with the reason.
type CleanupReport struct {
	Removed, Kept []string
}

func (r *CleanupReport) removed(format string, a ...any) {
	r.Removed = append(r.Removed, fmt.Sprintf(format, a...))
}

func (r *CleanupReport) kept(format string, a ...any) {
	r.Kept = append(r.Kept, fmt.Sprintf(format, a...))
}

// podnetNetwork is what podnet's conflist says about the plugin's state on
// the node, with the defaults netconf.Conflist writes.
type podnetNetwork struct {
	Name, Bridge, DataDir string
}

// Cleanup removes what podnet put on this node (see the order above),
// from the network namespace of the calling thread. It goes on after a
// failure and returns every error, with the report of what it did.
func Cleanup(ctx context.Context, cfg CleanupConfig) (CleanupReport, error) {
	if cfg.CNIConfDir == "" {
		cfg.CNIConfDir = "/etc/cni/net.d"
	}
	if cfg.CNIBinDir == "" {
		cfg.CNIBinDir = "/opt/cni/bin"
	}
	if cfg.DataDir == "" {
		cfg.DataDir = ipam.DefaultDataDir
	}
	if cfg.Grace <= 0 {
		cfg.Grace = DefaultCleanupGrace
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	var rep CleanupReport
	nw := podnetNetwork{Name: "podnet", Bridge: netconf.DefaultBridge, DataDir: cfg.DataDir}
	errs := []error{cleanupConflist(cfg.CNIConfDir, &nw, &rep), cleanupTables(ctx, cfg, &rep)}
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return rep, errors.Join(append(errs, fmt.Errorf("open netlink: %w", err))...)
	}
	defer h.Close()
	errs = append(errs, cleanupRoutes(h, &rep), cleanupVTEP(h, &rep))
	pods, err := cleanupPodState(h, cfg, nw, &rep)
	errs = append(errs, err, cleanupBinary(cfg, pods, &rep))
	return rep, errors.Join(errs...)
}

// conflistFile is the part of podnet's conflist the cleanup reads.
type conflistFile struct {
	Name    string `json:"name"`
	Plugins []struct {
		Type   string `json:"type"`
		Bridge string `json:"bridge"`
		IPAM   struct {
			DataDir string `json:"dataDir"`
		} `json:"ipam"`
	} `json:"plugins"`
}

// cleanupConflist removes podnet's conflist, and learns from it the
// network's name, bridge and store. A file of that name that is not a
// conflist running the podnet plugin is kept.
func cleanupConflist(dir string, nw *podnetNetwork, rep *CleanupReport) error {
	path := filepath.Join(dir, netconf.ConflistName)
	var errs []error
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		errs = append(errs, fmt.Errorf("read %s: %w", path, err))
	default:
		var c conflistFile
		ours := json.Unmarshal(b, &c) == nil && len(c.Plugins) > 0 && c.Plugins[0].Type == "podnet"
		if !ours {
			rep.kept("%s: not a conflist of the podnet plugin (its first plugin is not type podnet); remove it by hand if it is podnet's", path)
			break
		}
		if c.Name != "" {
			nw.Name = c.Name
		}
		if p := c.Plugins[0]; p.Bridge != "" {
			nw.Bridge = p.Bridge
		}
		if d := c.Plugins[0].IPAM.DataDir; d != "" {
			nw.DataDir = d
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", path, err))
		} else {
			rep.removed("CNI config %s", path)
		}
	}
	// netconf.WriteConflist's temporary, left by a writer killed mid-write.
	if err := os.Remove(path + ".tmp"); err == nil {
		rep.removed("CNI config temporary %s.tmp", path)
	} else if !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove %s.tmp: %w", path, err))
	}
	return errors.Join(errs...)
}

// cleanupTables deletes podnet's nftables tables, each through the code
// that owns it (masq.Cleanup, proxy.Proxier.Cleanup), after checking it
// exists so that the report says what was there.
func cleanupTables(ctx context.Context, cfg CleanupConfig, rep *CleanupReport) error {
	tables := []struct {
		family knftables.Family
		name   string
		nft    knftables.Interface
		del    func(knftables.Interface) error
	}{
		{masq.Family, masq.TableName, cfg.MasqNFT, func(n knftables.Interface) error { return masq.New(n).Cleanup(ctx) }},
		{proxy.IPv4.NFT, proxy.TableName, cfg.ProxyNFT, func(n knftables.Interface) error {
			return proxy.New(n, proxy.Config{Family: proxy.IPv4}).Cleanup(ctx)
		}},
		{proxy.IPv6.NFT, proxy.TableName, cfg.Proxy6NFT, func(n knftables.Interface) error {
			return proxy.New(n, proxy.Config{Family: proxy.IPv6}).Cleanup(ctx)
		}},
		{knftables.InetFamily, policy.TableName, cfg.PolicyNFT, func(n knftables.Interface) error {
			return policy.NewEnforcer(n, policy.Config{}).Cleanup(ctx)
		}},
		{knftables.BridgeFamily, antispoof.TableName, cfg.SpoofNFT[0], func(n knftables.Interface) error {
			return antispoof.Cleanup(ctx, n, nil)
		}},
		{knftables.InetFamily, antispoof.TableName, cfg.SpoofNFT[1], func(n knftables.Interface) error {
			return antispoof.Cleanup(ctx, nil, n)
		}},
	}
	var errs []error
	for _, t := range tables {
		name := t.name
		nft := t.nft
		if nft == nil {
			var err error
			if nft, err = knftables.New(t.family, name); err != nil {
				errs = append(errs, fmt.Errorf("nftables for table %s %s: %w", t.family, name, err))
				continue
			}
		}
		if _, err := nft.ListAll(ctx); knftables.IsNotFound(err) {
			continue
		} else if err != nil {
			errs = append(errs, fmt.Errorf("list table %s %s: %w", t.family, name, err))
			continue
		}
		if err := t.del(nft); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.removed("nftables table %s %s", t.family, name)
	}
	return errors.Join(errs...)
}

// cleanupBinary removes the plugin binary when asked and no pod is left
// (a pod still here needs it for its CNI DEL), with any temporary that an
// interrupted install left (see the install-cni command of podnetd).
func cleanupBinary(cfg CleanupConfig, podsLeft []string, rep *CleanupReport) error {
	path := filepath.Join(cfg.CNIBinDir, "podnet")
	_, err := os.Lstat(path)
	exists := err == nil
	switch {
	case !exists && !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("look at %s: %w", path, err)
	case !cfg.RemoveCNIBin:
		if exists {
			rep.kept("%s: the CNI plugin (give --remove-cni-bin to remove it)", path)
		}
		return nil
	case len(podsLeft) > 0:
		if exists {
			rep.kept("%s: pods still attached here (%s) need it to release their addresses", path, strings.Join(podsLeft, ", "))
		}
		return nil
	}
	var errs []error
	if exists {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", path, err))
		} else {
			rep.removed("CNI plugin %s", path)
		}
	}
	tmps, _ := filepath.Glob(filepath.Join(cfg.CNIBinDir, InstallTempPrefix+"*"))
	for _, t := range tmps {
		if err := os.Remove(t); err == nil {
			rep.removed("temporary of an interrupted install %s", t)
		} else if !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", t, err))
		}
	}
	return errors.Join(errs...)
}

// InstallTempPrefix starts the name of the temporary that podnetd
// install-cni writes next to the plugin before renaming it into place.
const InstallTempPrefix = ".podnet.install-"

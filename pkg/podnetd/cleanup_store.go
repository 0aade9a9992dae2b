package podnetd

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/podnet/podnet/pkg/ipam"
	"github.com/podnet/podnet/pkg/wire"
)

// cleanupStore removes the plugin's reservation store of the network
// (DataDir/<network>) if none of its reservations is live, under the
// store's lock so that no ADD reserves an address meanwhile. A reservation
// is live while its pod's host veth exists (its name follows from the
// container and interface, wire.HostName) or while it is younger than
// cfg.Grace (an ADD reserves the address before it creates the veth).
// Stale reservations (pods gone without a CNI DEL) go with the store. A
// store with a live reservation is kept whole: its pod's address must not
// be handed out twice. It returns the live reservations, by the name of
// their veth (by their description when the veth is not there yet).
func cleanupStore(cfg CleanupConfig, nw podnetNetwork, links map[string]bool, rep *CleanupReport) (map[string]string, error) {
	dir := filepath.Join(nw.DataDir, nw.Name)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		removeEmptyDir(nw.DataDir, rep)
		return nil, nil
	} else if err != nil {
		return unknownPods(err), fmt.Errorf("look at the reservation store %s: %w", dir, err)
	}
	st, err := ipam.NewDiskStore(nw.DataDir, nw.Name)
	if err != nil {
		return unknownPods(err), err
	}
	unlock, err := st.Lock()
	if err != nil {
		return unknownPods(err), err
	}
	defer unlock()
	rs, err := st.List()
	if err != nil {
		rep.kept("reservation store %s: it could not be read, so no reservation is known to be stale", dir)
		return unknownPods(err), err
	}
	now := cfg.Now()
	live := map[string]string{}
	var stale []ipam.Reservation
	for _, r := range rs {
		veth := wire.HostName(r.ContainerID, r.IfName)
		switch {
		case links[veth]:
			live[veth] = fmt.Sprintf("%s (%s, veth %s)", r.IP, podOf(r), veth)
		case !r.Created.IsZero() && now.Sub(r.Created) < cfg.Grace:
			d := fmt.Sprintf("%s (%s, reserved %s ago: its ADD may still be running)", r.IP, podOf(r), now.Sub(r.Created).Round(time.Second))
			live[d] = d
		default:
			stale = append(stale, r)
		}
	}
	if len(live) > 0 {
		rep.kept("reservation store %s: %d live reservations (%s): their pods still hold these addresses; delete them and run the cleanup again",
			dir, len(live), strings.Join(sortedValues(live), ", "))
		return live, nil
	}
	var errs []error
	for _, r := range stale {
		if err := st.Release(r.IP); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.removed("stale reservation %s (%s): its pod's veth is gone", r.IP, podOf(r))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return nil, removeStoreDir(dir, nw.DataDir, rep)
}

// removeStoreDir removes the store's own files and then the directory,
// unless someone else's files are in it; then the data directory if that
// is empty.
func removeStoreDir(dir, dataDir string, rep *CleanupReport) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	var others []string
	var errs []error
	for _, e := range ents {
		n := e.Name()
		if ipam.StoreFile(n) {
			if err := os.Remove(filepath.Join(dir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove %s: %w", filepath.Join(dir, n), err))
			}
			continue
		}
		others = append(others, n)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if len(others) > 0 {
		rep.kept("reservation store %s: it holds files the plugin did not write (%s)", dir, strings.Join(others, ", "))
		return nil
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	rep.removed("reservation store %s (no live reservation)", dir)
	removeEmptyDir(dataDir, rep)
	return nil
}

// removeEmptyDir removes dir if it exists and is empty (a mount point, or
// a directory with anything in it, stays).
func removeEmptyDir(dir string, rep *CleanupReport) {
	if err := syscall.Rmdir(dir); err == nil {
		rep.removed("directory %s (empty)", dir)
	}
}

// podOf names a reservation's pod for the report.
func podOf(r ipam.Reservation) string {
	cid := r.ContainerID
	if len(cid) > 12 {
		cid = cid[:12]
	}
	if r.PodName != "" {
		return fmt.Sprintf("pod %s/%s, container %s", r.PodNamespace, r.PodName, cid)
	}
	return "container " + cid
}

// unknownPods stands for pods that may be left when the store could not be
// read: the plugin binary stays.
func unknownPods(err error) map[string]string {
	return map[string]string{"?": "pods unknown: " + err.Error()}
}

func sortedValues(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

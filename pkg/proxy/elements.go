package proxy

import (
	"slices"
	"strings"
)

// Verdict-map elements are shared by all ports: a key (an address,
// protocol and port) can be claimed by two Service ports at once (two
// Services with the same external IP and port). The map can hold one
// element per key, so the claims are kept, and the port whose name sorts
// first wins, deterministically; when it lets go, the next one gets the
// key. Kept incrementally, so a partial sync looks only at the keys of
// the ports that changed.

// newElem is a map element with its id (map name and key), the identity
// the claims and the diffs use.
func newElem(mapName string, key []string, value string) elemObj {
	return elemObj{mapName: mapName, key: key, value: value, id: mapName + " " + strings.Join(key, " . ")}
}

type claim struct {
	owner string // ServicePortName.String()
	e     elemObj
}

// elemClaims holds the claims on every key, by element id, each list
// sorted by owner: the first one is in the map.
type elemClaims map[string][]claim

// add records owner's claim on e's key and returns the owner of another
// claim on it that wants another value, if any (a conflict to report;
// claims on the same set element, a hairpin pair, are no conflict).
func (c elemClaims) add(owner string, e elemObj) string {
	cl := c[e.id]
	i, _ := slices.BinarySearchFunc(cl, owner, func(x claim, o string) int { return strings.Compare(x.owner, o) })
	cl = slices.Insert(cl, i, claim{owner, e})
	c[e.id] = cl
	for _, x := range cl {
		if x.owner != owner && x.e.value != e.value {
			return x.owner
		}
	}
	return ""
}

// drop removes owner's claim on the key id.
func (c elemClaims) drop(owner, id string) {
	cl := slices.DeleteFunc(c[id], func(x claim) bool { return x.owner == owner })
	if len(cl) == 0 {
		delete(c, id)
		return
	}
	c[id] = cl
}

// winner is the element in the map for key id, if any port claims it.
func (c elemClaims) winner(id string) (elemObj, bool) {
	if cl := c[id]; len(cl) > 0 {
		return cl[0].e, true
	}
	return elemObj{}, false
}

// claimAll builds the claims of every port from scratch, for a full sync,
// with the elements that win and the conflicts.
func claimAll(ports map[ServicePortName]*portState) (elemClaims, map[string]elemObj, []string) {
	c := make(elemClaims, len(ports))
	var conflicts []string
	for name, ps := range ports {
		owner := name.String()
		for _, e := range ps.objs.elems {
			if rival := c.add(owner, e); rival != "" {
				conflicts = append(conflicts, e.id+": "+rival+" and "+owner)
			}
		}
	}
	won := make(map[string]elemObj, len(c))
	for id := range c {
		won[id], _ = c.winner(id)
	}
	slices.Sort(conflicts)
	return c, won, conflicts
}

// elemOps are the element changes of a partial sync.
type elemOps struct {
	del, add []elemObj
}

// claimChanges moves the claims of the changed ports from their old
// objects (written) to their new ones (ports), and returns what changes
// in the map for the keys they touch, compared with what is in it
// (elems), and new conflicts. It updates c in place: after a failed sync
// the claims are rebuilt by the full sync that follows.
func (c elemClaims) claimChanges(changed []ServicePortName, written, ports map[ServicePortName]*portState, elems map[string]elemObj) (elemOps, []string) {
	touched := map[string]bool{}
	var conflicts []string
	for _, name := range changed {
		owner := name.String()
		if o := written[name]; o != nil {
			for _, e := range o.objs.elems {
				c.drop(owner, e.id)
				touched[e.id] = true
			}
		}
		if n := ports[name]; n != nil {
			for _, e := range n.objs.elems {
				if rival := c.add(owner, e); rival != "" {
					conflicts = append(conflicts, e.id+": "+rival+" and "+owner)
				}
				touched[e.id] = true
			}
		}
	}
	ids := make([]string, 0, len(touched))
	for id := range touched {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var ops elemOps
	for _, id := range ids {
		want, ok := c.winner(id)
		have, had := elems[id]
		if had && (!ok || have.value != want.value) {
			ops.del = append(ops.del, have)
		}
		if ok && (!had || have.value != want.value) {
			ops.add = append(ops.add, want)
		}
	}
	return ops, conflicts
}

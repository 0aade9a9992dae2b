package proxy

import (
	"slices"

	"sigs.k8s.io/knftables"
)

// portDiff accumulates what a partial sync changes.
type portDiff struct {
	addSets     []setObj
	addChains   []string
	flushChains []string
	ruleChains  []chainObj
	staleChains []string
	staleSets   []string
}

// partial queues the changes of the changed ports from their objects last
// written (old) to the desired ones (ports), and the element changes ops.
// Ports whose objects are the very ones last written (renderAll reused
// them) are not looked at, so the cost grows with the number of changed
// ports, not of Services.
//
// The order of the operations, and why:
//
//  1. add new affinity sets and new chains, so that rules and map
//     elements added below can refer to them;
//  2. flush the chains whose rules changed, and add the rules of new and
//     changed chains (a policy chain is rewritten whole: its numgen map
//     names every endpoint);
//  3. delete map elements that are gone or whose verdict changed, then add
//     the new and changed ones (nft refuses to overwrite an element);
//  4. last, flush and delete the chains and sets no port uses any more.
//     The kernel refuses to delete a chain that a map element or a rule
//     still refers to ("Device or resource busy"): the elements went in
//     step 3, and the rules that jumped to them were in chains flushed in
//     step 2 or in stale chains flushed here first. (Deleting a chain in
//     the same transaction that removes the last element pointing to it
//     needs Linux 6.2 or later; older kernels free the reference late.)
func (w *writer) partial(tx *knftables.Transaction, old, ports map[ServicePortName]*portState, changed []ServicePortName, ops elemOps) {
	var d portDiff
	for _, name := range changed {
		d.port(objsOf(old[name]), objsOf(ports[name]))
	}
	added := map[string]elemObj{}
	for _, e := range ops.add {
		added[e.id] = e
	}
	for _, m := range usedPickMaps(added) {
		tx.Add(pickMapDef(w.fam, m)) // a no-op if it exists
	}
	for _, s := range d.addSets {
		tx.Add(w.affinitySet(s))
	}
	for _, c := range d.addChains {
		tx.Add(w.chain(c))
	}
	for _, c := range d.flushChains {
		tx.Flush(w.chain(c))
	}
	for _, c := range d.ruleChains {
		w.rules(tx, c)
	}
	for _, e := range ops.del {
		tx.Delete(w.elem(e, true))
	}
	for _, e := range ops.add {
		tx.Add(w.elem(e, false))
	}
	for _, c := range d.staleChains {
		tx.Flush(w.chain(c))
	}
	for _, c := range d.staleChains {
		tx.Delete(w.chain(c))
	}
	for _, s := range d.staleSets {
		tx.Delete(&knftables.Set{Family: w.fam.NFT, Table: TableName, Name: s})
	}
}

func objsOf(ps *portState) *portObjects {
	if ps == nil {
		return &portObjects{}
	}
	return ps.objs
}

// port records the differences between one port's old and new objects.
// Chain and set names belong to exactly one port (they hash its name), so
// a port's diff never touches another's objects.
func (d *portDiff) port(o, n *portObjects) {
	oldChains := make(map[string][]string, len(o.chains))
	for _, c := range o.chains {
		oldChains[c.name] = c.rules
	}
	newChains := make(map[string]bool, len(n.chains))
	for _, c := range n.chains {
		newChains[c.name] = true
		rules, had := oldChains[c.name]
		switch {
		case !had:
			d.addChains = append(d.addChains, c.name)
			d.ruleChains = append(d.ruleChains, c)
		case !slices.Equal(rules, c.rules):
			d.flushChains = append(d.flushChains, c.name)
			d.ruleChains = append(d.ruleChains, c)
		}
	}
	for _, c := range o.chains {
		if !newChains[c.name] {
			d.staleChains = append(d.staleChains, c.name)
		}
	}
	oldSets := make(map[string]bool, len(o.sets))
	for _, s := range o.sets {
		oldSets[s.name] = true
	}
	newSets := make(map[string]bool, len(n.sets))
	for _, s := range n.sets {
		newSets[s.name] = true
		if !oldSets[s.name] {
			d.addSets = append(d.addSets, s)
		}
	}
	for _, s := range o.sets {
		if !newSets[s.name] {
			d.staleSets = append(d.staleSets, s.name)
		}
	}
}

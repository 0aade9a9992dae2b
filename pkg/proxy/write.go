package proxy

import (
	"slices"
	"strings"

	"sigs.k8s.io/knftables"
)

// writer turns rendered objects into knftables operations. Every object
// names its family and table (see New).
type writer struct {
	fam  Family
	mark uint32
}

func (w *writer) table() *knftables.Table {
	return &knftables.Table{Family: w.fam.NFT, Name: TableName, Comment: knftables.PtrTo(tableComment)}
}

func (w *writer) chain(name string) *knftables.Chain {
	return &knftables.Chain{Family: w.fam.NFT, Table: TableName, Name: name}
}

func (w *writer) base(bc baseChain) *knftables.Chain {
	c := w.chain(bc.name)
	c.Type, c.Hook, c.Priority = knftables.PtrTo(bc.typ), knftables.PtrTo(bc.hook), knftables.PtrTo(bc.priority)
	return c
}

func (w *writer) rules(tx *knftables.Transaction, c chainObj) {
	for _, r := range c.rules {
		tx.Add(&knftables.Rule{Family: w.fam.NFT, Table: TableName, Chain: c.name, Rule: r})
	}
}

// affinitySet is dynamic (the packet path adds to it) with a timeout.
// "dynamic" is given explicitly: the kernel adds it to a set that rules
// update, and an `add set` without it would then differ from the set.
func (w *writer) affinitySet(s setObj) *knftables.Set {
	return &knftables.Set{Family: w.fam.NFT, Table: TableName, Name: s.name, Type: w.fam.AddrType,
		Flags: []knftables.SetFlag{knftables.DynamicFlag, knftables.TimeoutFlag}, Timeout: knftables.PtrTo(s.timeout)}
}

func (w *writer) staticSet(s staticSet) *knftables.Set {
	set := &knftables.Set{Family: w.fam.NFT, Table: TableName, Name: s.name, Type: s.typ}
	if s.interval {
		set.Flags = []knftables.SetFlag{knftables.IntervalFlag}
	}
	return set
}

// elem is the element to add; with keyOnly, the element to delete.
func (w *writer) hairpin() *knftables.Set {
	s := hairpinSet(w.fam)
	s.Family, s.Table = w.fam.NFT, TableName
	return s
}

func (w *writer) elem(e elemObj, keyOnly bool) *knftables.Element {
	el := &knftables.Element{Family: w.fam.NFT, Table: TableName, Key: e.key}
	switch {
	case e.value == "":
		el.Set = e.mapName
	case keyOnly:
		el.Map = e.mapName
	default:
		el.Map, el.Value = e.mapName, []string{e.value}
	}
	return el
}

// full queues the whole table; have is what the kernel holds now (from
// ListAll). The shape of the transaction, and why:
//
//  1. add every object: creates what is missing, leaves what exists;
//  2. flush the static chains, sets and maps and the per-port chains that
//     exist: their content becomes exactly the desired one whatever
//     drifted. Affinity sets are not flushed: clients keep their endpoint;
//  3. add every rule and element (rules after all objects: a rule may
//     refer to any chain or set, an element to any chain);
//  4. last, remove stale objects. The kernel refuses to delete a chain
//     or set that a rule or map element still refers to, so every
//     reference goes first: step 2 flushed the maps and our chains, and
//     all stale chains are flushed before any is deleted (one may jump to
//     another).
//
// nft applies it as one netlink batch, so packets see the old table or
// the new one, never a half-written one.
func (w *writer) full(tx *knftables.Transaction, n Node, ports map[ServicePortName]*portState, elems map[string]elemObj, have map[string][]string) {
	statics, sets, maps := staticChains(w.fam, n, w.mark), staticSets(w.fam, n), verdictMaps(w.fam)
	for _, name := range usedPickMaps(elems) {
		maps = append(maps, pickMapDef(w.fam, name))
	}
	names := sortedNames(ports)
	tx.Add(w.table())
	for _, bc := range baseChains {
		tx.Add(w.base(bc))
	}
	for _, c := range statics {
		tx.Add(w.chain(c.name))
	}
	for _, s := range sets {
		tx.Add(w.staticSet(s))
	}
	for _, m := range maps {
		m.Family, m.Table = w.fam.NFT, TableName
		tx.Add(m)
	}
	tx.Add(w.hairpin())
	for _, name := range names {
		for _, s := range ports[name].objs.sets {
			tx.Add(w.affinitySet(s))
		}
		for _, c := range ports[name].objs.chains {
			tx.Add(w.chain(c.name))
		}
	}
	w.flushAll(tx, statics, sets, maps, ports, names, have)
	for _, bc := range baseChains {
		w.rules(tx, chainObj{bc.name, []string{bc.rule}})
	}
	for _, c := range statics {
		w.rules(tx, c)
	}
	for _, s := range sets {
		for _, e := range s.elems {
			tx.Add(&knftables.Element{Family: w.fam.NFT, Table: TableName, Set: s.name, Key: []string{e}})
		}
	}
	for _, name := range names {
		for _, c := range ports[name].objs.chains {
			w.rules(tx, c)
		}
	}
	for _, k := range sortedKeys(elems) {
		tx.Add(w.elem(elems[k], false))
	}
	w.removeStale(tx, staleObjects(w.fam, have, statics, sets, maps, ports))
}

// flushAll is step 2 of full. A per-port chain that does not exist yet
// needs no flush (and a flush of a missing chain would fail).
func (w *writer) flushAll(tx *knftables.Transaction, statics []chainObj, sets []staticSet, maps []*knftables.Map,
	ports map[ServicePortName]*portState, names []ServicePortName, have map[string][]string) {
	existing := make(map[string]bool, len(have["chain"]))
	for _, c := range have["chain"] {
		existing[c] = true
	}
	for _, bc := range baseChains {
		tx.Flush(w.chain(bc.name))
	}
	for _, c := range statics {
		tx.Flush(w.chain(c.name))
	}
	for _, s := range sets {
		tx.Flush(w.staticSet(s))
	}
	for _, m := range maps {
		tx.Flush(m)
	}
	tx.Flush(w.hairpin())
	for _, name := range names {
		for _, c := range ports[name].objs.chains {
			if existing[c.name] {
				tx.Flush(w.chain(c.name))
			}
		}
	}
}

// stale is what to remove: chains, and other named objects.
type stale struct {
	chains []string
	others []knftables.Object
}

// removeStale flushes every stale chain, then deletes them, then the sets
// and maps (which only stale rules could still refer to).
func (w *writer) removeStale(tx *knftables.Transaction, s stale) {
	for _, c := range s.chains {
		tx.Flush(w.chain(c))
	}
	for _, c := range s.chains {
		tx.Delete(w.chain(c))
	}
	for _, o := range s.others {
		tx.Delete(o)
	}
}

// staleObjects lists what the kernel holds in our table and the desired
// table does not: objects of Services gone, of an older layout, or of
// someone else who wrote into our table.
func staleObjects(fam Family, have map[string][]string, statics []chainObj, sets []staticSet, maps []*knftables.Map, ports map[ServicePortName]*portState) stale {
	want := map[string]bool{"set " + setHairpin: true}
	for _, bc := range baseChains {
		want["chain "+bc.name] = true
	}
	for _, c := range statics {
		want["chain "+c.name] = true
	}
	for _, s := range sets {
		want["set "+s.name] = true
	}
	for _, m := range maps {
		want["map "+m.Name] = true
	}
	for _, ps := range ports {
		for _, c := range ps.objs.chains {
			want["chain "+c.name] = true
		}
		for _, s := range ps.objs.sets {
			want["set "+s.name] = true
		}
	}
	var out stale
	for _, typ := range []string{"chain", "set", "map", "flowtable", "counter"} {
		names := slices.Clone(have[typ])
		slices.Sort(names)
		for _, name := range names {
			if want[typ+" "+name] {
				continue
			}
			switch typ {
			case "chain":
				out.chains = append(out.chains, name)
			case "set":
				out.others = append(out.others, &knftables.Set{Family: fam.NFT, Table: TableName, Name: name})
			case "map":
				out.others = append(out.others, &knftables.Map{Family: fam.NFT, Table: TableName, Name: name})
			case "flowtable":
				out.others = append(out.others, &knftables.Flowtable{Family: fam.NFT, Table: TableName, Name: name})
			case "counter":
				out.others = append(out.others, &knftables.Counter{Family: fam.NFT, Table: TableName, Name: name})
			}
		}
	}
	return out
}

// usedPickMaps are the pick maps that elements are in, sorted.
func usedPickMaps(elems map[string]elemObj) []string {
	used := map[string]bool{}
	for _, e := range elems {
		if isPickMap(e.mapName) {
			used[e.mapName] = true
		}
	}
	return sortedKeys(used)
}

func sortedNames(ports map[ServicePortName]*portState) []ServicePortName {
	names := make([]ServicePortName, 0, len(ports))
	for n := range ports {
		names = append(names, n)
	}
	return sortNames(names)
}

// sortNames sorts names in place by their string form, and returns them.
func sortNames(names []ServicePortName) []ServicePortName {
	type keyed struct {
		key  string
		name ServicePortName
	}
	all := make([]keyed, len(names))
	for i, n := range names {
		all[i] = keyed{n.String(), n}
	}
	slices.SortFunc(all, func(a, b keyed) int { return strings.Compare(a.key, b.key) })
	for i := range all {
		names[i] = all[i].name
	}
	return names
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

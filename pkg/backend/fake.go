package backend

import (
	"maps"
	"slices"
	"sync"
	"time"
)

// Fake is a Backend that programs nothing: it records every call made to
// it and answers what it is told to, for unit tests of its callers (the
// node agent). Its Result counts remotes added and removed against the last
// successful Sync, as a real backend's would against the kernel. It is safe
// for concurrent use: a test reads it while the agent runs.
type Fake struct {
	mu sync.Mutex

	facts   Facts
	refused map[string]string

	setupErr, syncErr     error
	setupFails, syncFails int // calls left to fail; < 0: every call

	setups  []Local
	syncs   []FakeSync
	current map[string]bool // the remotes of the last successful Sync
}

// FakeSync is one recorded call of Fake.Sync.
type FakeSync struct {
	At      time.Time
	Remotes []Remote
	Err     error // what the call returned
}

var _ Backend = (*Fake)(nil)

// NewFake returns a Fake whose Setup returns facts.
func NewFake(facts Facts) *Fake {
	return &Fake{facts: cloneFacts(facts)}
}

// SetFacts changes what later Setup calls return.
func (f *Fake) SetFacts(facts Facts) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.facts = cloneFacts(facts)
}

// SetRefused makes later Syncs refuse these nodes (node name: reason),
// those of them that are among the remotes given.
func (f *Fake) SetRefused(refused map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refused = maps.Clone(refused)
}

// FailSetup makes the next n Setup calls return err (n < 0: every call,
// until FailSetup is called again; n == 0 or a nil err: none).
func (f *Fake) FailSetup(err error, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.setupErr, f.setupFails = err, n
}

// FailSync makes the next n Sync calls return err (n < 0: every call,
// until FailSync is called again; n == 0 or a nil err: none).
func (f *Fake) FailSync(err error, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.syncErr, f.syncFails = err, n
}

// Setups returns the Local of every Setup call so far, failed ones too.
func (f *Fake) Setups() []Local {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.setups)
}

// Syncs returns every Sync call so far, failed ones too.
func (f *Fake) Syncs() []FakeSync {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]FakeSync, len(f.syncs))
	for i, s := range f.syncs {
		out[i] = FakeSync{At: s.At, Remotes: cloneRemotes(s.Remotes), Err: s.Err}
	}
	return out
}

// Setup implements Backend.
func (f *Fake) Setup(local Local) (Facts, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.setups = append(f.setups, local)
	if err := fail(f.setupErr, &f.setupFails); err != nil {
		return Facts{}, err
	}
	return cloneFacts(f.facts), nil
}

// Sync implements Backend.
func (f *Fake) Sync(remotes []Remote) (Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	call := FakeSync{At: time.Now(), Remotes: cloneRemotes(remotes)}
	call.Err = fail(f.syncErr, &f.syncFails)
	f.syncs = append(f.syncs, call)
	if call.Err != nil {
		return Result{}, call.Err
	}
	var res Result
	next := make(map[string]bool, len(remotes))
	for _, r := range remotes {
		if why, ok := f.refused[r.Node]; ok {
			if res.Refused == nil {
				res.Refused = map[string]string{}
			}
			res.Refused[r.Node] = why
			continue
		}
		next[r.Node] = true
		if !f.current[r.Node] {
			res.Added++
		}
	}
	for n := range f.current {
		if !next[n] {
			res.Removed++
		}
	}
	f.current = next
	return res, nil
}

// fail returns err if calls are left to fail, and counts this one.
func fail(err error, left *int) error {
	if err == nil || *left == 0 {
		return nil
	}
	if *left > 0 {
		*left--
	}
	return err
}

func cloneFacts(f Facts) Facts {
	return Facts{Annotations: maps.Clone(f.Annotations), MTU: f.MTU}
}

func cloneRemotes(rs []Remote) []Remote {
	if rs == nil {
		return nil
	}
	out := make([]Remote, len(rs))
	for i, r := range rs {
		out[i] = r
		out[i].VTEPMAC = slices.Clone(r.VTEPMAC)
	}
	return out
}

package policy

import (
	"context"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/knftables"
)

// TestChurnLeavesNothingBehind: 300 syncs of random scenes (pods coming
// and going, labels and policies changing, full and partial syncs mixed)
// through one Enforcer on a Fake. After every sync the table's pod chains
// are exactly the wanted ones plus those flushed less than a second ago
// (empty, dropping nothing), every map element points at a wanted chain,
// and the evaluator agrees with the truth model; after a quiet second and
// one more sync of nothing, only the skeleton is left.
func TestChurnLeavesNothingBehind(t *testing.T) {
	now := time.Unix(1000, 0)
	fake := knftables.NewFake(knftables.InetFamily, TableName)
	enf := NewEnforcer(fake, Config{Now: func() time.Time { return now }, FullSyncPeriod: 20 * time.Second})
	r := rand.New(rand.NewSource(7))
	for i := range 300 {
		s := &randomScene{r: r}
		s.build()
		// some pods gone this round
		s.pods = s.pods[:2+r.Intn(len(s.pods)-1)]
		pp, _ := Resolve(s.pols, s.pods, s.nss)
		if err := enf.Sync(context.Background(), pp); err != nil {
			t.Fatalf("sync %d: %v", i, err)
		}
		want := buildDesired(pp)
		tbl := fake.Table
		for name, c := range tbl.Chains {
			if !isPodObject(name) || want.chains[name] != nil {
				continue
			}
			if len(c.Rules) != 0 {
				t.Fatalf("sync %d: chain %s is not wanted but still has rules", i, name)
			}
			if _, stale := enf.stale[name]; !stale {
				t.Fatalf("sync %d: chain %s left behind, not even marked stale", i, name)
			}
		}
		for name := range want.chains {
			if tbl.Chains[name] == nil {
				t.Fatalf("sync %d: wanted chain %s missing", i, name)
			}
		}
		for _, m := range []string{mapEgressPods, mapIngressPod} {
			for _, e := range tbl.Maps[m].Elements {
				if want.chains[strings.TrimPrefix(e.Value[0], "jump ")] == nil {
					t.Fatalf("sync %d: %s element %v points at an unwanted chain", i, m, e.Key)
				}
			}
		}
		for range 20 {
			p := s.packet()
			if got, w := evalFake(t, fake, p), truth(p, s.pols, s.pods, s.nss); got != w {
				t.Fatalf("sync %d: %s: table %v, API %v", i, p, got, w)
			}
		}
		now = now.Add(time.Duration(r.Intn(800)) * time.Millisecond)
	}
	now = now.Add(2 * time.Second)
	if err := enf.Sync(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Second)
	if err := enf.Sync(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	var left []string
	for name := range fake.Table.Chains {
		if isPodObject(name) {
			left = append(left, "chain "+name)
		}
	}
	for name := range fake.Table.Sets {
		left = append(left, "set "+name)
	}
	for name := range fake.Table.Counters {
		left = append(left, "counter "+name)
	}
	if len(left) > 0 || enf.Pending() {
		t.Errorf("after the churn and a quiet sync: %d objects left: %s", len(left), fmt.Sprint(left))
	}
}

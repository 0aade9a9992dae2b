package podnetd

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := backoff{first: 200 * time.Millisecond, max: time.Second}
	want := []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, time.Second, time.Second}
	for i, w := range want {
		if got := b.next(); got != w || b.failures != i+1 {
			t.Errorf("failure %d: delay %s (failures %d), want %s", i+1, got, b.failures, w)
		}
	}
	b.reset()
	if got := b.next(); got != 200*time.Millisecond || b.failures != 1 {
		t.Errorf("after a reset: delay %s (failures %d), want 200ms", got, b.failures)
	}
	// A first delay above the cap is capped too.
	b = backoff{first: 2 * time.Second, max: time.Second}
	if got := b.next(); got != time.Second {
		t.Errorf("first delay over the cap: %s, want 1s", got)
	}
}

package cidrset

import (
	"fmt"
	"net/netip"
	"testing"
)

func TestMinimal(t *testing.T) {
	var in []netip.Prefix
	for _, s := range []string{"10.244.1.0/24", "192.168.56.0/24", "10.244.0.0/16", "10.244.0.0/16", "10.96.0.0/12", "192.168.56.0/24"} {
		in = append(in, netip.MustParsePrefix(s))
	}
	if got, want := fmt.Sprint(Minimal(in)), "[10.96.0.0/12 10.244.0.0/16 192.168.56.0/24]"; got != want {
		t.Fatalf("Minimal = %s, want %s", got, want)
	}
	if got := Minimal(nil); len(got) != 0 {
		t.Fatalf("Minimal(nil) = %v", got)
	}
}

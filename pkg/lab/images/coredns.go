package images

import (
	"fmt"
	"os"
	"path/filepath"
)

// CoreDNSVersion is the version of CoreDNS that hack/coredns/go.mod pins
// and hack/coredns.sh builds; a test keeps them in step.
const CoreDNSVersion = "v1.15.0"

// CoreDNSDirEnv names the environment variable that says where the lab
// finds the coredns binary (default: DefaultCoreDNSDir).
const CoreDNSDirEnv = "PODNET_COREDNS_DIR"

// DefaultCoreDNSDir is where hack/coredns.sh caches CoreDNSVersion.
func DefaultCoreDNSDir() string { return "/var/cache/podnet/coredns/" + CoreDNSVersion }

// CoreDNSDir is the directory holding the coredns binary the lab runs for
// CoreDNS images: $PODNET_COREDNS_DIR, or DefaultCoreDNSDir.
func CoreDNSDir() string {
	if d := os.Getenv(CoreDNSDirEnv); d != "" {
		return d
	}
	return DefaultCoreDNSDir()
}

// coreDNSProgram runs the CoreDNS built from its Go module, whatever the
// image's tag: the lab has one CoreDNS, CoreDNSVersion.
func coreDNSProgram(image string, args []string) (Program, error) {
	p := filepath.Join(CoreDNSDir(), "coredns")
	if fi, err := os.Stat(p); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return Program{}, fmt.Errorf("run CoreDNS for image %q: %w: %s is missing: build it with `make coredns` (hack/coredns.sh), or set %s to a directory holding a coredns binary",
			image, ErrMissingTool, p, CoreDNSDirEnv)
	}
	return Program{Path: p, Args: concat(args, nil)}, nil
}

package imageset

import "os"

// CoreDNSVersion is the CoreDNS that hack/coredns.sh builds (from
// hack/coredns/go.mod) and the tag of the lab's CoreDNS image.
const CoreDNSVersion = "v1.15.0"

// CoreDNSDirEnv names the environment variable that says where the lab
// finds the coredns binary (default: DefaultCoreDNSDir).
const CoreDNSDirEnv = "PODNET_COREDNS_DIR"

// DefaultCoreDNSDir is where hack/coredns.sh caches CoreDNSVersion.
func DefaultCoreDNSDir() string { return "/var/cache/podnet/coredns/" + CoreDNSVersion }

// CoreDNSDir is the directory holding the coredns binary the lab's CoreDNS
// image is made of: $PODNET_COREDNS_DIR, or DefaultCoreDNSDir.
func CoreDNSDir() string {
	if d := os.Getenv(CoreDNSDirEnv); d != "" {
		return d
	}
	return DefaultCoreDNSDir()
}

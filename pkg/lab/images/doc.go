// Package images maps container images to programs the podnet lab can run
// without a container runtime.
//
// The lab node agent stands in for kubelet and a container runtime: it runs a
// pod's containers as plain processes inside the pod's network namespace. It
// has no image store, so each image the lab accepts is mapped to something
// that exists on the host:
//
//   - busybox and network-debug images (nicolaka/netshoot) run the container's
//     command with the host's own tools (sh, sleep, ping, traceroute, nc, wget,
//     curl, nslookup, dig, ip, ss, tcpdump), found in PATH;
//   - nginx and httpd run a built-in HTTP server answering with the image's
//     default page and logging each request to stdout;
//   - registry.k8s.io/e2e-test-images/agnhost runs a built-in subset of agnhost
//     (netexec, connect, pause, serve-hostname) compatible with what the
//     Kubernetes network e2e tests use;
//   - registry.k8s.io/pause blocks until it is told to stop;
//   - registry.k8s.io/coredns/coredns (and coredns/coredns) runs the real
//     CoreDNS, CoreDNSVersion whatever the tag, built from its Go module by
//     hack/coredns.sh (found in $PODNET_COREDNS_DIR or DefaultCoreDNSDir).
//
// [Resolve] applies the Kubernetes command/args semantics to an image and
// returns a [Program]: a host executable or the name of a built-in. The lab
// runs built-ins by re-executing itself inside the pod's netns and calling
// [RunBuiltin], so built-ins simply listen on every address of whatever
// namespace they are in. Any other image is refused with an error that says
// what the lab supports, so the pod fails visibly instead of silently.
package images

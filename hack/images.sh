#!/usr/bin/env bash
# Builds the lab's container images (pause, agnhost, busybox, nginx, httpd,
# netshoot, CoreDNS, podnet) into the machine's image cache, once per inputs
# (see pkg/lab/imageset), from Debian packages and the binaries the other
# hack scripts build: CoreDNS (hack/coredns.sh), podnet (make build), agnhost
# (hack/k8s.sh, which is not run here: it takes long; pass -agnhost PATH
# for another build). Prints what it built on stderr and the cache directory.
# Extra arguments go to hack/images (go run ./hack/images -h), e.g.
# -only busybox,nginx or -push http://192.168.56.1:5000.
set -euo pipefail
cd "$(dirname "$0")/.."
coredns=$(bash hack/coredns.sh)
make -s build >&2
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
exec go run ./hack/images -coredns "$coredns/coredns" -version "$version" "$@"

#!/usr/bin/env bash
# Builds the upstream end-to-end test binary `e2e.test` and the agnhost
# test image's program from the k8s.io/kubernetes module pinned in
# hack/k8s/go.mod (the same version as the lab's Kubernetes), into the
# Kubernetes cache directory hack/k8s.sh uses, once per machine. Prints that
# directory.
set -euo pipefail
cd "$(dirname "$0")/k8s"
VERSION=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
DIR=${PODNET_K8S_DIR:-/var/cache/podnet/k8s/$VERSION}
minor=${VERSION#v1.}; minor=${minor%%.*}
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld+=" -X $p.gitVersion=$VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  ld+=" -X $p.buildDate=1970-01-01T00:00:00Z"
done
mkdir -p "$DIR"
if [ ! -x "$DIR/agnhost" ]; then
  echo "e2e: building agnhost $VERSION into $DIR (once per machine)" >&2
  tmp=$(mktemp -d)
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ld" -o "$tmp/agnhost" k8s.io/kubernetes/test/images/agnhost
  mv "$tmp/agnhost" "$DIR/agnhost"
  rm -rf "$tmp"
fi
# The other inputs of the lab's images (pkg/lab/imageset): pause.c and the
# porter's certificate of agnhost, from the same module.
mod=$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)
install -m 0644 "$mod/build/pause/linux/pause.c" "$DIR/pause.c"
mkdir -p "$DIR/agnhost-porter"
install -m 0644 "$mod/test/images/agnhost/porter/localhost.crt" "$mod/test/images/agnhost/porter/localhost.key" "$DIR/agnhost-porter/"
if [ "${1:-}" != "--agnhost-only" ] && [ ! -x "$DIR/e2e.test" ]; then
  echo "e2e: building e2e.test $VERSION into $DIR (once per machine; long)" >&2
  tmp=$(mktemp -d)
  CGO_ENABLED=0 GOFLAGS=-mod=mod go test -c -trimpath -ldflags "$ld" -o "$tmp/e2e.test" k8s.io/kubernetes/test/e2e
  mv "$tmp/e2e.test" "$DIR/e2e.test"
  rm -rf "$tmp"
fi
# The ginkgo CLI of the version e2e.test is built with: it runs the specs in
# parallel processes (the binary alone runs them one after another).
if [ "${1:-}" != "--agnhost-only" ] && [ ! -x "$DIR/ginkgo" ]; then
  echo "e2e: building ginkgo into $DIR (once per machine)" >&2
  tmp=$(mktemp -d)
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -o "$tmp/ginkgo" github.com/onsi/ginkgo/v2/ginkgo
  mv "$tmp/ginkgo" "$DIR/ginkgo"
  rm -rf "$tmp"
fi
echo "$DIR"

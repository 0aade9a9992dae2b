#!/usr/bin/env bash
# Builds CoreDNS for the lab's cluster DNS from the github.com/coredns/coredns
# Go module pinned in hack/coredns/go.mod (with only the plugins the lab uses:
# hack/coredns/main.go), into a cache shared by every checkout on this
# machine, by version: a machine builds it once (a minute or two). Prints the
# cache directory.
set -euo pipefail
cd "$(dirname "$0")/coredns"
VERSION=$(go list -m -f '{{.Version}}' github.com/coredns/coredns)
DIR=${PODNET_COREDNS_DIR:-/var/cache/podnet/coredns/$VERSION}
if [ ! -x "$DIR/coredns" ]; then
  echo "coredns: building $VERSION into $DIR (once per machine)" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$tmp/coredns" .
  mkdir -p "$DIR"
  mv "$tmp/coredns" "$DIR/coredns"
fi
echo "$DIR"

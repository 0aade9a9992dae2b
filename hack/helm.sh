#!/usr/bin/env bash
# Builds the Helm CLI that renders charts/podnet from the helm.sh/helm Go
# module pinned in hack/helm/go.mod, into a cache shared by every checkout on
# this machine, by version: a machine builds it once (a few minutes on two
# cores). Prints the path of the binary.
set -euo pipefail
cd "$(dirname "$0")/helm"
MOD=helm.sh/helm/v4
VERSION=$(go list -m -f '{{.Version}}' "$MOD")
BIN=${PODNET_HELM:-/var/cache/podnet/tools/helm-$VERSION}
if [ ! -x "$BIN" ]; then
  echo "helm: building $VERSION into $BIN (once per machine)" >&2
  dir=$(dirname "$BIN")
  mkdir -p "$dir"
  tmp=$(mktemp -d "$dir/.helm-build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath \
    -ldflags "-s -w -X $MOD/internal/version.version=$VERSION -X $MOD/internal/version.gitTreeState=clean" \
    -o "$tmp/helm" "$MOD/cmd/helm"
  mv "$tmp/helm" "$BIN"
fi
echo "$BIN"

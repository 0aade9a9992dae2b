#!/usr/bin/env bash
# Puts the ClusterNetworkPolicy CRD (policy.networking.k8s.io, the
# experimental channel: named ports and node peers are in it) of the
# sigs.k8s.io/network-policy-api module that go.mod pins into a cache shared
# by every checkout on this machine, by version, from the Go module proxy.
# The lab installs it before podnet. Prints the CRD file.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(go list -m -f '{{.Version}}' sigs.k8s.io/network-policy-api)
DIR=${PODNET_CRD_DIR:-/var/cache/podnet/crds/network-policy-api-$VERSION}
FILE=$DIR/policy.networking.k8s.io_clusternetworkpolicies.yaml
if [ ! -s "$FILE" ]; then
  src=$(go mod download -json "sigs.k8s.io/network-policy-api@$VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  if [ -z "$src" ] || [ ! -s "$src/config/crd/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml" ]; then
    echo "crds: sigs.k8s.io/network-policy-api@$VERSION has no experimental ClusterNetworkPolicy CRD (module dir: '$src')" >&2
    exit 1
  fi
  mkdir -p "$DIR"
  cp "$src/config/crd/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml" "$FILE.tmp"
  chmod 0644 "$FILE.tmp"
  mv "$FILE.tmp" "$FILE"
  echo "crds: ClusterNetworkPolicy CRD of network-policy-api $VERSION in $DIR" >&2
fi
echo "$FILE"

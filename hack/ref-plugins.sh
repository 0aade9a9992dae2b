#!/usr/bin/env bash
# Builds the reference CNI plugins (containernetworking/plugins, a current
# release) from their Go module into a cache directory shared by every
# checkout on this machine. The tests chain podnet with them and the
# benchmark compares podnet with bridge + host-local. Debian's package is too
# old (1.1.1: its bandwidth plugin crashes on CHECK without runtime config).
set -euo pipefail
VERSION=${REF_CNI_VERSION:-v1.9.1}
DIR=${PODNET_REF_CNI_DIR:-/var/cache/podnet/cni-plugins/$VERSION}
PLUGINS=(main/bridge main/loopback ipam/host-local meta/portmap meta/bandwidth meta/firewall meta/tuning)
need=()
for p in "${PLUGINS[@]}"; do [ -x "$DIR/$(basename "$p")" ] || need+=("$p"); done
((${#need[@]})) || exit 0
echo "ref-plugins: building ${need[*]} of containernetworking/plugins $VERSION into $DIR"
mkdir -p "$DIR"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for p in "${need[@]}"; do
  GOBIN=$tmp CGO_ENABLED=0 go install -ldflags="-s -w" "github.com/containernetworking/plugins/plugins/$p@$VERSION"
done
mv "$tmp"/* "$DIR"/

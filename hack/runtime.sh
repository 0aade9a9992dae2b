#!/usr/bin/env bash
# Builds the lab nodes' container runtime (containerd, containerd-shim-runc-v2,
# ctr, crictl and the image registry) from the Go modules pinned in
# hack/runtime/go.mod, into a cache shared by every checkout on this machine,
# by version: a machine builds them once (a few minutes on two cores). runc is
# Debian's (hack/deps.sh). The directory is named by containerd's version; its
# VERSIONS file names every pinned module, so a bump of any of them rebuilds
# all five (they share one module's dependency versions). Prints the cache
# directory.
set -euo pipefail
cd "$(dirname "$0")/runtime"
VERSIONS=$(go list -m -f '{{.Path}} {{.Version}}' github.com/containerd/containerd/v2 sigs.k8s.io/cri-tools \
  github.com/distribution/distribution/v3)
ver() { awk -v p="$1" '$1 == p { print $2 }' <<<"$VERSIONS"; }
CONTAINERD=$(ver github.com/containerd/containerd/v2)
CRITOOLS=$(ver sigs.k8s.io/cri-tools)
REGISTRY=$(ver github.com/distribution/distribution/v3)
DIR=${PODNET_RUNTIME_DIR:-/var/cache/podnet/runtime/$CONTAINERD}
CMDS=(containerd containerd-shim-runc-v2 ctr crictl registry)
need=()
if [ "$(cat "$DIR/VERSIONS" 2>/dev/null)" = "$VERSIONS" ]; then
  for c in "${CMDS[@]}"; do [ -x "$DIR/$c" ] || need+=("$c"); done
else
  need=("${CMDS[@]}")
fi
if ((${#need[@]})); then
  echo "runtime: building ${need[*]} (containerd $CONTAINERD, cri-tools $CRITOOLS, registry $REGISTRY)" \
    "into $DIR (once per machine)" >&2
  # containerd's own tags: no cgo-only snapshotters (btrfs; devmapper and
  # zfs, which the lab does not use either) and no man-page generator; the
  # shim also drops its gRPC server (it speaks ttrpc). no_aufs is gone in v2.
  tags="urfave_cli_no_docs no_btrfs no_devmapper no_zfs"
  ctrd="-s -w"
  for v in Version="$CONTAINERD" Package=github.com/containerd/containerd/v2; do
    ctrd+=" -X github.com/containerd/containerd/v2/version.$v"
  done
  reg="-s -w"
  for v in version="$REGISTRY" mainpkg=github.com/distribution/distribution/v3; do
    reg+=" -X github.com/distribution/distribution/v3/version.$v"
  done
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  build() { CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath "$@"; }
  for c in "${need[@]}"; do
    case $c in
      containerd | ctr)
        build -tags "$tags" -ldflags "$ctrd" -o "$tmp/$c" "github.com/containerd/containerd/v2/cmd/$c" ;;
      containerd-shim-runc-v2)
        build -tags "$tags no_grpc" -ldflags "$ctrd" -o "$tmp/$c" "github.com/containerd/containerd/v2/cmd/$c" ;;
      crictl)
        build -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRITOOLS" -o "$tmp/$c" \
          sigs.k8s.io/cri-tools/cmd/crictl ;;
      registry)
        build -ldflags "$reg" -o "$tmp/$c" github.com/distribution/distribution/v3/cmd/registry ;;
    esac
  done
  echo "$VERSIONS" >"$tmp/VERSIONS"
  mkdir -p "$DIR"
  # VERSIONS last: cut short before it, the next run rebuilds them all.
  for c in "${need[@]}"; do mv "$tmp/$c" "$DIR/$c"; done
  mv "$tmp/VERSIONS" "$DIR/VERSIONS"
fi
echo "$DIR"

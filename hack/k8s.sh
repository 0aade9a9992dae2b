#!/usr/bin/env bash
# Builds the lab's Kubernetes binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kube-proxy, kubectl) from the k8s.io/kubernetes Go module
# pinned in hack/k8s/go.mod, into a cache shared by every checkout on this
# machine, by version: a machine builds them once (about 20 minutes on two
# cores). Prints the cache directory.
set -euo pipefail
cd "$(dirname "$0")/k8s"
VERSION=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
DIR=${PODNET_K8S_DIR:-/var/cache/podnet/k8s/$VERSION}
CMDS=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl kubelet)
need=()
for c in "${CMDS[@]}"; do [ -x "$DIR/$c" ] || need+=("$c"); done
if ((${#need[@]})); then
  echo "k8s: building ${need[*]} $VERSION into $DIR (once per machine)" >&2
  minor=${VERSION#v1.}; minor=${minor%%.*}
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    ld+=" -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  pkgs=()
  for c in "${need[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ld" -o "$tmp/" "${pkgs[@]}"
  mkdir -p "$DIR"
  mv "$tmp"/* "$DIR"/
fi
echo "$DIR"

#!/usr/bin/env bash
# Installs what podnet's build, tests and demo need on a fresh Debian machine:
# system packages (as root, with apt-get) and Go tools (cached by version).
# Safe to run again: it only installs what is missing.
set -euo pipefail

PKGS=(iproute2 iputils-ping nftables iptables bridge-utils tcpdump traceroute conntrack iperf3 ethtool kmod
      curl wget netcat-openbsd bind9-dnsutils util-linux runc busybox-static)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing packages ${missing[*]}; run as root (or install them) first" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# etcd for the lab's control plane. The package would start a host etcd
# service on install; a policy-rc.d that forbids it keeps the host unchanged.
if ! dpkg-query -W -f='${Status}' etcd-server 2>/dev/null | grep -q "install ok installed"; then
  [ "$(id -u)" = 0 ] || { echo "deps: etcd-server is missing; run as root" >&2; exit 1; }
  ours=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && ours=1
  fi
  echo "deps: installing etcd-server (its service is not started)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
  [ -n "$ours" ] && rm -f /usr/sbin/policy-rc.d
fi

TOOLS=${PODNET_TOOLS_DIR:-/var/cache/podnet/tools}
STATICCHECK_VERSION=v0.8.2
if [ ! -x "$TOOLS/staticcheck-$STATICCHECK_VERSION" ]; then
  echo "deps: building staticcheck $STATICCHECK_VERSION"
  tmp=$(mktemp -d)
  GOBIN=$tmp go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
  mkdir -p "$TOOLS"
  mv "$tmp/staticcheck" "$TOOLS/staticcheck-$STATICCHECK_VERSION"
  rm -rf "$tmp"
fi
ln -sf "staticcheck-$STATICCHECK_VERSION" "$TOOLS/staticcheck"

#!/usr/bin/env bash
# make demo: seed 004 ("同一个 Node 下，Pod 间通信") on this machine. A node
# network namespace holds cni0; two pod sandboxes named cni-<uuid> (as
# containerd names them) are wired by the real podnet plugin, called the way
# a runtime calls it; then the seed's own commands show the path
#   pod-a eth0 -> vethX -> cni0 -> vethY -> pod-b eth0
# and a ping crosses it while tcpdump watches cni0. Everything it makes is
# removed on exit, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces)"; exit 1; }

NODE=podnet-demo-node
WORK=$(mktemp -d /tmp/podnet-demo.XXXXXX)
PODS=()
PLUGIN=$PWD/bin/podnet
CONF=$WORK/10-podnet.conf

cleanup() {
  set +e
  for p in "${PODS[@]}"; do
    [ -n "$p" ] && ip netns del "$p" 2>/dev/null
  done
  ip netns del "$NODE" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '\033[36m$ %s\033[0m\n' "$*"; "$@"; }
onnode() { ip netns exec "$NODE" "$@"; }

cat >"$CONF" <<JSON
{
  "cniVersion": "1.1.0",
  "name": "podnet",
  "type": "podnet",
  "bridge": "cni0",
  "mtu": 1500,
  "ipam": {
    "ranges": [[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}]],
    "dataDir": "$WORK/ipam"
  }
}
JSON

cni() { # cni VERB SANDBOX CONTAINERID PODNAME
  onnode env CNI_COMMAND="$1" CNI_NETNS="/var/run/netns/$2" CNI_CONTAINERID="$3" \
    CNI_IFNAME=eth0 CNI_PATH="$PWD/bin" \
    CNI_ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=$4" "$PLUGIN" <"$CONF"
}

say "A node (network namespace $NODE) and two pod sandboxes, as containerd makes them"
ip netns add "$NODE"
onnode ip link set lo up
declare -A IP CID SANDBOX
for pod in pod-a pod-b; do
  ns=cni-$(cat /proc/sys/kernel/random/uuid)
  PODS+=("$ns")
  ip netns add "$ns"
  ip netns exec "$ns" ip link set lo up
  cid=$(tr -d - </proc/sys/kernel/random/uuid)
  CID[$pod]=$cid SANDBOX[$pod]=$ns
  say "CNI ADD for $pod (sandbox $ns) — the runtime execs /opt/cni/bin/podnet with the config on stdin"
  res=$(cni ADD "$ns" "$cid" "$pod")
  [ "$pod" = pod-a ] && echo "$res"
  IP[$pod]=$(ip netns exec "$ns" ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
  echo "$pod got ${IP[$pod]}"
done

say "ip netns list   (seed 004: one namespace per pod)"
run ip netns list | grep -E '^cni-' || true

for i in 0 1; do
  say "ip netns exec ${PODS[$i]} ip a   (the pod's eth0, one end of the veth pair)"
  run ip netns exec "${PODS[$i]}" ip a
done

say "On the node: brctl show   (the host ends of both pairs are ports of cni0)"
run onnode brctl show
say "On the node: bridge link; ip -br addr; ip route"
run onnode bridge link
run onnode ip -br addr
run onnode ip route
say "Which veth is whose? podnet names the host end from the container ID and labels it"
run onnode ip -o link show type veth | sed -E 's/^[0-9]+: ([^:@]+).* alias (.*)$/\1  alias \2/; s/^[0-9]+: ([^:@]+)@[^ ]* .*$/\1/'

say "pod-a pings pod-b while tcpdump watches cni0 on the node"
onnode timeout 5 tcpdump -lni cni0 -c 4 icmp >"$WORK/tcpdump.txt" 2>/dev/null &
tcpdump_pid=$!
sleep 1
run ip netns exec "${PODS[0]}" ping -c 2 "${IP[pod-b]}"
wait "$tcpdump_pid" || true
printf '\033[36m$ tcpdump -ni cni0 icmp\033[0m\n'
cat "$WORK/tcpdump.txt"

say "ip netns exec ${PODS[0]} ip route   (everything leaves via the gateway, cni0's 10.244.1.1)"
run ip netns exec "${PODS[0]}" ip route

say "CNI DEL for both pods (and a second DEL: it is idempotent)"
for pod in pod-a pod-b; do
  cni DEL "${SANDBOX[$pod]}" "${CID[$pod]}" "$pod" && cni DEL "${SANDBOX[$pod]}" "${CID[$pod]}" "$pod" && echo "DEL $pod: ok (twice)"
done
run onnode bridge link
echo "(no ports left on cni0; reservations left: $(ls "$WORK/ipam/podnet" | grep -cE '^10\.' || true))"
say "Done. Everything the demo made is removed on exit."

#!/usr/bin/env bash
# make demo: seeds 003 and 004 replayed, then seeds 000 and 001's Services and seed 001's NetworkPolicy, with their own commands, on a lab
# cluster built on this machine (podnetctl lab up): the real Kubernetes
# control plane, nodes made of namespaces, pods wired by the podnet plugin.
# The lab is removed at the end (KEEP=1 keeps it for you to explore).
# BACKEND=host-gw reproduces seed 003's cross-node traceroute hop for hop;
# the default, vxlan, shows seeds 001/002's overlay (route, neigh, fdb).
# The nodes run the real kubelet, containerd and runc with real images, and
# podnet is installed from its manifest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces)"; exit 1; }
P=$PWD/bin/podnetctl

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# on NODE CMD...: a command typed on a node, shown as the seeds show it.
on() { local n=$1; shift; printf '\033[36m[vagrant@%s ~]$ %s\033[0m\n' "$n" "$*"; "$P" lab node "$n" -- "$@"; }
kc() { "$P" lab node node-1 -- kubectl "$@"; }

if "$P" lab status 2>/dev/null | grep -q '^lab up'; then
  echo "demo: a lab is already up; run \`bin/podnetctl lab down\` first (or use it directly)"; exit 1
fi
cleanup() { [ "${KEEP:-}" = 1 ] && { echo "KEEP=1: the lab stays up; bin/podnetctl lab down removes it"; return; }; "$P" lab down; }
trap cleanup EXIT

say "podnetctl lab up --backend ${BACKEND:-vxlan} — seed 003's cluster: controlplane 192.168.56.10, node-1 .11, node-2 .12 on eth1"
BACKEND=${BACKEND:-vxlan}
"$P" lab up --backend "$BACKEND"

say "podnet installed as on any cluster: its DaemonSet's pods next to CoreDNS (seed 000's check)"
on node-1 kubectl get pods -n kube-system -o wide
on node-1 sh -c 'kubectl get pods -n kube-system | grep -e coredns -e podnet'

say "The nodes and their pod subnets"
on node-1 kubectl get nodes -o wide
on node-1 kubectl get nodes -o custom-columns=NAME:.metadata.name,POD-CIDR:.spec.podCIDR

say "Seed 003: a pod from an image containerd pulls (here from the lab's registry) — and node-to-node reachability"
on node-1 kubectl run nginx --image=nginx:latest
kc wait --for=condition=Ready pod/nginx --timeout=60s >/dev/null
on node-1 kubectl get pods/nginx
on node-1 sh -c 'kubectl describe pods/nginx | sed -n "/^Events:/,\$p"'
on controlplane traceroute -n 192.168.56.11
on controlplane traceroute -n 192.168.56.12
kc delete pod nginx --now >/dev/null

say "Seed 003: pod to pod on the same node (cni0)"
on node-1 kubectl run httpd --image=httpd --overrides='{"spec":{"nodeName":"node-1"}}'
kc wait --for=condition=Ready pod/httpd --timeout=60s >/dev/null
on node-1 kubectl get pods -o wide
IP=$(kc get pod httpd -o jsonpath='{.status.podIP}')
on node-1 kubectl run traceroute --image=busybox --overrides='{"spec":{"nodeName":"node-1"}}' -- traceroute "$IP"
# traceroute exits, and `kubectl run` pods restart: wait for the first run to end.
for _ in $(seq 60); do
  [ -n "$(kc get pod traceroute -o jsonpath='{.status.containerStatuses[0].lastState.terminated.exitCode}{.status.containerStatuses[0].state.terminated.exitCode}')" ] && break
  sleep 1
done
on node-1 kubectl logs traceroute
echo "(one hop: both pods sit on node-1's cni0, in ${IP%.*}.0/24)"

say "Seed 004: what that looks like on node-1"
on node-1 ip netns list
on node-1 brctl show
on node-1 bridge link
on node-1 ip route
NS=$("$P" lab node node-1 -- ip netns list | awk 'NR==1{print $1}')
on node-1 ip netns exec "$NS" ip a
on node-1 cat /etc/cni/net.d/10-podnet.conflist

say "Seed 003: pod to pod across nodes (cni0 + eth1 + cni0), backend $BACKEND"
on node-2 kubectl run traceroute-2 --image=busybox --restart=Never --overrides='{"spec":{"nodeName":"node-2"}}' -- traceroute "$IP"
kc wait --for=jsonpath='{.status.phase}'=Succeeded pod/traceroute-2 --timeout=60s >/dev/null
on node-2 kubectl logs traceroute-2
if [ "$BACKEND" = host-gw ]; then
  echo "(three hops, as in seed 003: node-2's cni0 gateway, node-1's eth1, the pod)"
else
  echo "(three hops: node-2's cni0 gateway, node-1's VTEP 10.244.1.0 on podnet.1, the pod;"
  echo " make demo BACKEND=host-gw shows seed 003's hops, with node-1's eth1 in the middle)"
fi
for n in node-1 node-2; do
  say "The path on $n"
  on "$n" ip route
  if [ "$BACKEND" != host-gw ]; then
    on "$n" ip -d link show podnet.1
    on "$n" ip neigh show dev podnet.1
    on "$n" bridge fdb show dev podnet.1
  fi
done

say "Seeds 000 and 001: a Service (podnet's own proxy in podnetd, no kube-proxy)"
on node-1 kubectl create deployment web --image=registry.k8s.io/e2e-test-images/agnhost --replicas=3 -- /agnhost netexec --http-port=8080
on node-1 kubectl expose deployment web --port=80 --target-port=8080 --type=NodePort
kc wait --for=condition=Available deployment/web --timeout=60s >/dev/null
on node-1 kubectl run client --image=busybox --overrides='{"spec":{"nodeName":"node-2"}}' -- sleep 3600
kc wait --for=condition=Ready pod/client --timeout=60s >/dev/null
on node-1 kubectl get svc,ep -o wide
on node-1 kubectl exec client -- nslookup web.default.svc.cluster.local
echo "(from the client on node-2, six requests to the ClusterIP spread over the backends)"
on node-1 kubectl exec client -- sh -c 'for i in 1 2 3 4 5 6; do wget -qO- -T 2 http://web/hostname; echo; done'
NP=$(kc get svc web -o jsonpath='{.spec.ports[0].nodePort}')
printf '\033[36m[host]$ curl http://192.168.56.11:%s/hostname\033[0m\n' "$NP"
curl -s -m 3 "http://192.168.56.11:$NP/hostname"; echo
on node-1 nft list map ip podnet-proxy service-ips

say "Seed 000's classic failure: a selector that matches no pod"
on node-1 kubectl create service clusterip broken --tcp=80:8080
on node-1 kubectl get endpoints broken
on node-1 kubectl exec client -- wget -O- -T 5 http://broken/hostname || true
echo "(refused at once, not a timeout: the Service has no endpoints)"
on node-1 kubectl set selector service broken app=web
for _ in $(seq 50); do kc get endpoints broken -o jsonpath='{.subsets[0].addresses[0].ip}' 2>/dev/null | grep -q . && break; sleep 0.2; done
on node-1 kubectl get endpoints broken
on node-1 kubectl exec client -- wget -qO- -T 5 http://broken/hostname; echo

say "Seed 001: NetworkPolicy allow-from-pod-a — pod-b takes TCP 8080 from app=pod-a only"
on node-1 kubectl run pod-b --image=registry.k8s.io/e2e-test-images/agnhost --labels=app=pod-b --overrides='{"spec":{"nodeName":"node-1"}}' -- /agnhost netexec --http-port=8080
on node-1 kubectl run pod-a --image=registry.k8s.io/e2e-test-images/agnhost --labels=app=pod-a --overrides='{"spec":{"nodeName":"node-2"}}' -- /agnhost pause
on node-1 kubectl run pod-c --image=registry.k8s.io/e2e-test-images/agnhost --labels=app=pod-c --overrides='{"spec":{"nodeName":"node-1"}}' -- /agnhost pause
kc wait --for=condition=Ready pod/pod-b pod/pod-a pod/pod-c --timeout=60s >/dev/null
B=$(kc get pod pod-b -o jsonpath='{.status.podIP}')
"$P" lab node node-1 -- kubectl apply -f - <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-from-pod-a
  namespace: default
spec:
  podSelector:
    matchLabels:
      app: pod-b
  policyTypes:
  - Ingress
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: pod-a
    ports:
    - protocol: TCP
      port: 8080
YAML
sleep 1
on node-1 kubectl get networkpolicy -A
on node-1 kubectl describe networkpolicy allow-from-pod-a
echo "(pod-a on node-2, across nodes: allowed)"
on node-1 kubectl exec pod-a -- /agnhost connect --timeout=3s "$B:8080" && echo connected
echo "(pod-c on node-1, the same bridge as pod-b: dropped, the client times out)"
on node-1 kubectl exec pod-c -- /agnhost connect --timeout=3s "$B:8080" || true
echo "(podnetd on node-1 says who was refused, and by which policy)"
sleep 1
on node-1 sh -c 'kubectl -n kube-system logs $(kubectl -n kube-system get pods -l app.kubernetes.io/name=podnet --field-selector spec.nodeName=node-1 -o name) -c podnetd | grep "policy drop" | tail -1'
on node-1 nft list chain inet podnet-policy pods

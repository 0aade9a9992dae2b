#!/usr/bin/env bash
# make e2e-cnp: the network-policy-api conformance suite (ClusterNetworkPolicy,
# the judge of sigs.k8s.io/network-policy-api) against a lab. Builds the
# suite's test binary once per machine from the module version go.mod pins
# (hack/cnp-conformance/go.mod, a module of its own), brings a lab up (it
# installs the CRD), runs TestConformance with the experimental features
# podnet implements, prints the passed/failed counts and the wall time, and
# takes the lab down again, also on failure or interrupt.
#
#   CNP_SKIP     go test -skip regexp (default: the specs that need SCTP)
#   CNP_RUN      go test -run regexp  (default: all of TestConformance)
#   CNP_TIMEOUT  the whole run's bound (default 60m)
#
# The suite's base pods serve SCTP (agnhost porter, SERVE_SCTP_PORT_9003 and
# 9005): on a kernel without SCTP those containers exit and no base pod
# becomes Ready, so the suite stops in its set-up (docs/policy.md).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(cd hack/cnp-conformance && go list -m -f '{{.Version}}' sigs.k8s.io/network-policy-api)
BIN=${PODNET_CNP_CONFORMANCE:-/var/cache/podnet/cnp-conformance/$VERSION/conformance.test}
if [ ! -x "$BIN" ]; then
  echo "e2e-cnp: building the network-policy-api $VERSION conformance suite into $BIN (once per machine)" >&2
  mkdir -p "$(dirname "$BIN")"
  (cd hack/cnp-conformance && go test -c -trimpath -o "$BIN.tmp" sigs.k8s.io/network-policy-api/conformance)
  mv "$BIN.tmp" "$BIN"
fi
SKIP=${CNP_SKIP:-'TestConformance/SCTP'}
DIR=${PODNET_LAB_DIR:-/run/podnet-lab-cnp}
REPORT=$(mktemp -d /tmp/podnet-cnp.XXXXXX)
export PODNET_LAB_DIR=$DIR
cleanup() { bin/podnetctl lab down >/dev/null 2>&1 || true; }
trap cleanup EXIT INT TERM
start=$(date +%s)
bin/podnetctl lab up --workers 2
KUBECONFIG=$(bin/podnetctl lab kubeconfig)
export KUBECONFIG
set +e
"$BIN" -test.v -test.timeout "${CNP_TIMEOUT:-60m}" -test.run "${CNP_RUN:-^TestConformance$}" -test.skip "$SKIP" \
  -supported-features ClusterNetworkPolicyNamedPorts,ClusterNetworkPolicyEgressNodePeers 2>&1 | tee "$REPORT/cnp.log"
rc=${PIPESTATUS[0]}
set -e
end=$(date +%s)
passed=$(grep -cE '^    --- PASS: TestConformance/' "$REPORT/cnp.log" || true)
failed=$(grep -cE '^    --- FAIL: TestConformance/' "$REPORT/cnp.log" || true)
skipped=$(grep -cE '^    --- SKIP: TestConformance/' "$REPORT/cnp.log" || true)
echo
echo "e2e-cnp: network-policy-api $VERSION, skip '$SKIP'"
echo "e2e-cnp: $passed passed, $failed failed, $skipped skipped in $((end - start)) s (log: $REPORT/cnp.log)"
exit "$rc"

#!/usr/bin/env bash
# make e2e: the upstream judges of a Kubernetes network against the lab on
# the real node software. Brings a lab up (podnet installed from its
# manifest and image), runs the e2e.test binary of the lab's Kubernetes
# version under the ginkgo CLI (parallel processes, as upstream's
# hack/ginkgo-e2e.sh runs it) with a focus (default: sig-network Conformance),
# prints the passed/failed counts and the wall time, and takes the lab down
# again, also on failure or interrupt.
#
#   E2E_FOCUS   ginkgo focus regexp   (default '\[sig-network\].*\[Conformance\]')
#   E2E_SKIP    ginkgo skip regexp    (default: [Serial], [Disruptive] and
#               [Flaky], which parallel processes must not run; none of the
#               47 sig-network Conformance specs is one. docs/lab.md names
#               any spec that cannot pass here, with the reason: none yet)
#   E2E_TIMEOUT the whole run's bound (default 80m)
#   E2E_PROCS   parallel ginkgo processes (default 4; 1 runs them one by one)
#   E2E_ARGS    more arguments for e2e.test
#   E2E_LAB_ARGS more arguments for lab up (--backend host-gw,
#               --service-proxy kube-proxy, …)
set -euo pipefail
cd "$(dirname "$0")/.."
K8S=$(bash hack/e2e-build.sh)
FOCUS=${E2E_FOCUS:-'\[sig-network\].*\[Conformance\]'}
SKIP=${E2E_SKIP:-'\[Serial\]|\[Disruptive\]|\[Flaky\]'}
PROCS=${E2E_PROCS:-4}
DIR=${PODNET_LAB_DIR:-/run/podnet-lab-e2e}
REPORT=${E2E_REPORT_DIR:-$(mktemp -d /tmp/podnet-e2e.XXXXXX)}
export PODNET_LAB_DIR=$DIR
cleanup() { bin/podnetctl lab down >/dev/null 2>&1 || true; }
trap cleanup EXIT INT TERM
start=$(date +%s)
bin/podnetctl lab up --workers 2 ${E2E_LAB_ARGS:-}
KUBECONFIG=$(bin/podnetctl lab kubeconfig)
export KUBECONFIG PATH="$K8S:$PATH"
set +e
"$K8S/ginkgo" -p --procs="$PROCS" --focus="$FOCUS" --skip="$SKIP" \
  --timeout="${E2E_TIMEOUT:-80m}" --no-color "$K8S/e2e.test" -- \
  --kubeconfig "$KUBECONFIG" --provider skeleton --report-dir "$REPORT" --disable-log-dump \
  --e2e-verify-service-account=false ${E2E_ARGS:-} 2>&1 | tee "$REPORT/e2e.log"
rc=${PIPESTATUS[0]}
set -e
end=$(date +%s)
summary=$(grep -E '^Ran [0-9]+ of [0-9]+ Specs|^(SUCCESS|FAIL)! .*Passed' "$REPORT/e2e.log" | tail -2 | tr '\n' ' ')
passed=$(grep -oE '[0-9]+ Passed' "$REPORT/e2e.log" | tail -1 | grep -oE '[0-9]+' || echo 0)
failed=$(grep -oE '[0-9]+ Failed' "$REPORT/e2e.log" | tail -1 | grep -oE '[0-9]+' || echo 0)
echo
echo "e2e: focus $FOCUS, $PROCS processes, lab up --workers 2 ${E2E_LAB_ARGS:-}"
echo "e2e: $summary"
echo "e2e: $passed passed, $failed failed in $((end - start)) s (report: $REPORT)"
exit "$rc"

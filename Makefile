# podnet — see README.md. `make demo` and `make test` set everything up
# themselves on a fresh Debian machine (as root).
SHELL   := /bin/bash
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
TOOLS   ?= /var/cache/podnet/tools
export PODNET_REF_CNI_DIR ?= /var/cache/podnet/cni-plugins/v1.9.1
export PATH := $(PATH):/usr/sbin:/sbin

BINARIES := podnet podnetctl podnetd

.PHONY: all build deps ref-plugins k8s coredns crds runtime helm e2e-bin e2e e2e-policy e2e-cnp lint test unit bench demo demo-plugin lab-up lab-down clean

all: build

build:
	@mkdir -p bin
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.Version=$(VERSION)" -o bin/ $(addprefix ./cmd/,$(BINARIES))

deps:
	@bash hack/deps.sh

ref-plugins:
	@bash hack/ref-plugins.sh

# The lab's Kubernetes binaries, built once per machine from the
# k8s.io/kubernetes module (hack/k8s/go.mod) and cached by version.
k8s:
	@bash hack/k8s.sh >/dev/null

# The lab's cluster DNS: CoreDNS built once per machine from its Go module
# (hack/coredns/go.mod) with only the plugins the lab uses, cached by version.
coredns:
	@bash hack/coredns.sh >/dev/null

# The ClusterNetworkPolicy CRD of the network-policy-api module go.mod pins,
# which the lab installs: copied from the Go module cache, cached by version.
crds:
	@bash hack/crds.sh >/dev/null

# The Helm CLI that renders charts/podnet (the deploy tests compare it with
# deploy/*.yaml), built once per machine from its Go module (hack/helm/go.mod).
# The upstream e2e.test binary and agnhost (with the other inputs of the
# lab's images: pause.c, agnhost's porter certificate) from the same
# k8s.io/kubernetes module, built once per machine.
e2e-bin:
	@bash hack/e2e-build.sh >/dev/null

helm:
	@bash hack/helm.sh >/dev/null

# The lab nodes' container runtime: containerd (its runc shim, ctr), crictl
# and the image registry, built once per machine from their Go modules
# (hack/runtime/go.mod) and cached by version; runc is Debian's.
runtime:
	@bash hack/runtime.sh >/dev/null


# gofmt, go vet and staticcheck; any finding fails.
lint: deps
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(TOOLS)/staticcheck ./...

# Every test: unit tests, and (as root) kernel tests in throwaway network
# namespaces. Packages run one at a time so kernel tests do not compete for
# the two cores with each other's concurrency tests.
test: deps ref-plugins k8s coredns crds runtime helm e2e-bin build lint
	$(GO) test -count=1 -p 1 -timeout 60m ./...
	@left=$$(ip netns list 2>/dev/null | grep -c '^pntest-' || true); \
	  if [ "$$left" != 0 ]; then echo "tests left $$left network namespaces behind"; ip netns list; exit 1; fi

# Unit tests only (no root needed).
unit: helm
	$(GO) test -count=1 -short ./...

# A lab of network namespaces with the real control plane (see README).
lab-up: deps ref-plugins k8s coredns crds runtime e2e-bin build
	bin/podnetctl lab up

lab-down:
	bin/podnetctl lab down

bench: deps ref-plugins k8s build
	$(GO) run ./bench/cni
	$(GO) run ./bench/net
	$(GO) run ./bench/services

# The upstream judges against a lab on the real node software: sig-network
# Conformance by default (E2E_FOCUS, E2E_SKIP override; see hack/e2e.sh and
# docs/lab.md). Prints the passed/failed counts and the wall time.
e2e: deps ref-plugins k8s coredns crds runtime e2e-bin build
	@bash hack/e2e.sh

# The upstream NetworkPolicy suite ([sig-network] Netpol) against a lab;
# its SCTP specs cannot run on a kernel without SCTP (docs/policy.md).
e2e-policy: deps ref-plugins k8s coredns crds runtime e2e-bin build
	@E2E_FOCUS='\[sig-network\] Netpol' E2E_SKIP='SCTPConnectivity|\[Serial\]|\[Disruptive\]|\[Flaky\]' bash hack/e2e.sh

# The network-policy-api conformance suite (ClusterNetworkPolicy) against a
# lab (hack/cnp-conformance.sh); its base pods need SCTP (docs/policy.md).
e2e-cnp: deps ref-plugins k8s coredns crds runtime e2e-bin build
	@bash hack/cnp-conformance.sh

demo: deps ref-plugins k8s coredns crds runtime e2e-bin build
	@bash hack/demo.sh

# The CNI plugin alone: two pods on one bridge, seed 004's views.
demo-plugin: deps ref-plugins build
	@bash hack/demo-plugin.sh

clean:
	rm -rf bin

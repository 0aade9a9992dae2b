//go:build tools

// The network-policy-api conformance suite (ClusterNetworkPolicy), built as
// a test binary from the sigs.k8s.io/network-policy-api module: a module of
// its own so that podnet's module does not take the suite's dependencies
// (controller-runtime and the rest). hack/cnp-conformance.sh builds it with
// `go test -c sigs.k8s.io/network-policy-api/conformance`; these imports
// keep the packages its test files need in go.mod and go.sum.
package tools

import (
	_ "k8s.io/client-go/plugin/pkg/client/auth"
	_ "sigs.k8s.io/controller-runtime/pkg/client/config"
	_ "sigs.k8s.io/network-policy-api/conformance/tests"
	_ "sigs.k8s.io/network-policy-api/conformance/utils/suite"
)

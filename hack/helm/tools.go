//go:build tools

// Package helm pins the Helm CLI that renders charts/podnet (hack/helm.sh
// builds it; deploy's tests run it); nothing imports it.
package helm

import (
	_ "helm.sh/helm/v4/cmd/helm"
)

//go:build tools

// Package runtime pins the container runtime commands the lab's nodes run
// (hack/runtime.sh): containerd, its runc shim and ctr, crictl, and the
// image registry. Nothing imports it.
package runtime

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
	_ "github.com/distribution/distribution/v3/cmd/registry"
	_ "sigs.k8s.io/cri-tools/cmd/crictl"
)

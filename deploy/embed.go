package deploy

import (
	_ "embed"
)

// Manifest is deploy/podnet.yaml: what `kubectl apply -f` installs, and
// what `podnetctl lab up` applies to the lab.
//
//go:embed podnet.yaml
var Manifest []byte

// CleanupManifest is deploy/podnet-cleanup.yaml.
//
//go:embed podnet-cleanup.yaml
var CleanupManifest []byte

// Package deploy holds podnet's plain manifests, rendered from the Helm
// chart charts/podnet by hack/render-manifest.sh: podnet.yaml (the
// add-on: ServiceAccount, ClusterRole and binding, the ConfigMap
// podnet-config and the DaemonSet podnet) and podnet-cleanup.yaml (the
// DaemonSet that runs `podnetd cleanup` on every node after removal). Its
// tests check that the files are the chart's rendering, that values land
// where they should, and that the objects are what docs/deploy.md says.
// Manifest and CleanupManifest are the two files, for programs that install
// podnet (the lab does).
package deploy

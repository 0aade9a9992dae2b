// Package kernel holds podnet's kernel tests: they run the built plugin
// through libcni, as a container runtime does, against throwaway network
// namespaces, and assert where packets go and what is left behind. They
// skip when not run as root.
package kernel

package netconf

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// ConflistName is the file a node's podnet conflist is written to.
const ConflistName = "10-podnet.conflist"

// NetworkName is the CNI network of podnet's conflist: its host veths carry
// wire.Group(NetworkName), its reservations live under dataDir/NetworkName.
const NetworkName = "podnet"

// Conflist is the node conflist: the podnet plugin with the node's pod
// subnet and MTU (and podnetd's socket, when anti-spoofing or
// NetworkPolicy is on: the plugin announces new pods there), then the
// reference portmap plugin for hostPorts.
func Conflist(podCIDR string, mtu int, dataDir, agentSocket string) []byte {
	podnet := map[string]any{"type": "podnet", "bridge": DefaultBridge, "mtu": mtu,
		"ipam": map[string]any{"ranges": [][]map[string]string{{{"subnet": podCIDR}}}, "dataDir": dataDir}}
	if agentSocket != "" {
		podnet["agentSocket"] = agentSocket
	}
	conf := map[string]any{"cniVersion": "1.1.0", "name": NetworkName, "plugins": []any{
		podnet,
		map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "backend": "nftables"},
	}}
	b, _ := json.MarshalIndent(conf, "", "  ")
	return append(b, '\n')
}

// WriteConflist writes the conflist into dir atomically (a runtime never
// reads half a file), and only when it changed; it reports whether it wrote.
func WriteConflist(dir string, content []byte) (bool, error) {
	path := filepath.Join(dir, ConflistName)
	if old, err := os.ReadFile(path); err == nil && string(old) == string(content) {
		return false, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("create %s: %w", dir, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, content, 0o644); err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	return true, nil
}

package nodeagent

import (
	"strconv"
	"strings"
)

// mountTable is the mount points of a mount namespace, from
// /proc/self/mountinfo.
type mountTable struct {
	// all are every mount point; topLevel those mounted directly on the
	// root filesystem, in mount order.
	all, topLevel []string
}

// parseMountInfo reads /proc/<pid>/mountinfo (proc(5)): field 1 is the
// mount's ID, field 2 its parent's, field 5 the mount point with spaces,
// tabs, newlines and backslashes octal-escaped.
func parseMountInfo(data string) mountTable {
	type entry struct{ id, parent, point string }
	var entries []entry
	root := ""
	for line := range strings.Lines(data) {
		f := strings.Fields(line)
		if len(f) < 5 || strings.HasSuffix(f[4], `\040(deleted)`) {
			continue
		}
		e := entry{id: f[0], parent: f[1], point: unescapeMountPoint(f[4])}
		if e.point == "/" {
			root = e.id // the last one mounted at / is the root
		}
		entries = append(entries, e)
	}
	var t mountTable
	seen := map[string]bool{}
	for _, e := range entries {
		if e.point == "/" || seen[e.point] {
			continue
		}
		seen[e.point] = true
		t.all = append(t.all, e.point)
		if e.parent == root {
			t.topLevel = append(t.topLevel, e.point)
		}
	}
	return t
}

func unescapeMountPoint(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// onRootFS says whether p (a real path) is on the root filesystem: under no
// mount point but /.
func (t mountTable) onRootFS(p string) bool {
	for _, m := range t.all {
		if within(p, m) {
			return false
		}
	}
	return true
}

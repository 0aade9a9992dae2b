package imageset

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/podnet/podnet/pkg/lab/oci"
)

// names is every image name the recipes give, normalized, to its recipe.
func names(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, r := range Recipes("v0.1.0") {
		for _, n := range r.Names {
			ref, err := oci.ParseReference(n)
			if err != nil {
				t.Fatalf("recipe %s: %v", r.Name, err)
			}
			if ref.String() != n {
				t.Errorf("recipe %s: name %s is not written in full (%s)", r.Name, n, ref)
			}
			if other, dup := out[n]; dup {
				t.Errorf("%s is the name of both %s and %s", n, other, r.Name)
			}
			out[n] = r.Name
		}
	}
	return out
}

// TestSeedNamesResolve: what the user types (kubectl run --image=nginx:latest
// and the like) names an image of the set.
func TestSeedNamesResolve(t *testing.T) {
	have := names(t)
	for typed, recipe := range map[string]string{
		"nginx:latest": "nginx", "nginx": "nginx", "httpd": "httpd", "busybox": "busybox",
		"nicolaka/netshoot": "netshoot", "busybox:1.36": "busybox", "docker.io/podnet/podnet:v0.1.0": "podnet",
	} {
		ref, err := oci.ParseReference(typed)
		if err != nil {
			t.Fatal(err)
		}
		if got := have[ref.String()]; got != recipe {
			t.Errorf("%s (%s) is made by %q, want %s", typed, ref, got, recipe)
		}
	}
}

// TestE2ENames checks the names against the e2e framework's image list of
// the Kubernetes version hack/k8s pins (test/utils/image/manifest.go in the
// module cache), for every image of that list the set makes.
func TestE2ENames(t *testing.T) {
	gomod, err := os.ReadFile("../../../hack/k8s/go.mod")
	if err != nil {
		t.Skipf("no hack/k8s/go.mod: %v", err)
	}
	m := regexp.MustCompile(`k8s.io/kubernetes (v\S+)`).FindSubmatch(gomod)
	if m == nil {
		t.Skip("hack/k8s/go.mod pins no k8s.io/kubernetes")
	}
	modCache, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Skipf("go env GOMODCACHE: %v", err)
	}
	manifest := filepath.Join(strings.TrimSpace(string(modCache)), "k8s.io", "kubernetes@"+string(m[1]), "test/utils/image/manifest.go")
	src, err := os.ReadFile(manifest)
	if err != nil {
		t.Skipf("k8s.io/kubernetes %s is not in the module cache: %v", m[1], err)
	}
	registries := map[string]string{"PromoterE2eRegistry": "registry.k8s.io/e2e-test-images", "GcRegistry": "registry.k8s.io"}
	have := names(t)
	// kube-proxy's image is tagged with the pinned Kubernetes version, as
	// kubeadm names it.
	if kp := "registry.k8s.io/kube-proxy:" + string(m[1]); have[kp] == "" {
		t.Errorf("no recipe gives %s (kubernetesVersion is %s)", kp, kubernetesVersion)
	}
	entry := regexp.MustCompile(`configs\[(\w+)\] = Config\{list\.(\w+), "([^"]+)", "([^"]+)"\}`)
	want := map[string]bool{"Agnhost": true, "AgnhostPrev": true, "BusyBox": true, "Nginx": true, "NginxNew": true, "Pause": true}
	for _, e := range entry.FindAllStringSubmatch(string(src), -1) {
		id, reg, name, version := e[1], e[2], e[3], e[4]
		if !want[id] {
			continue
		}
		delete(want, id)
		full := registries[reg] + "/" + name + ":" + version
		if _, ok := have[full]; !ok {
			t.Errorf("the e2e framework's %s is %s; no recipe gives that name", id, full)
		}
	}
	for id := range want {
		t.Errorf("the e2e list of %s has no %s any more", m[1], id)
	}
}

func TestCacheKeyCoversWhatAnImageIsMadeOf(t *testing.T) {
	r := nginxRecipe()
	in := map[string]*inputFile{}
	base := cacheKey(r, in, []string{"nginx=1.22.1 aa"})
	if cacheKey(r, in, []string{"nginx=1.22.1 aa"}) != base {
		t.Fatal("the key is not stable")
	}
	if cacheKey(r, in, []string{"nginx=1.22.2 bb"}) == base {
		t.Error("a new package version keeps the key")
	}
	r2 := nginxRecipe()
	r2.Config.Cmd = []string{"nginx"}
	if cacheKey(r2, in, []string{"nginx=1.22.1 aa"}) == base {
		t.Error("another command keeps the key")
	}
	a := agnhostRecipe()
	k1 := cacheKey(a, map[string]*inputFile{inAgnhost: {hash: "sha256:1"}}, nil)
	k2 := cacheKey(a, map[string]*inputFile{inAgnhost: {hash: "sha256:2"}}, nil)
	// An input another recipe uses does not matter to this one.
	k3 := cacheKey(a, map[string]*inputFile{inAgnhost: {hash: "sha256:1"}, inPodnetd: {hash: "sha256:9"}}, nil)
	if k1 == k2 || k1 != k3 {
		t.Errorf("input hashes: agnhost change kept the key (%v) or podnetd's change moved it (%v)", k1 == k2, k1 != k3)
	}
}

func TestFilterDropsNoiseAndKeepsOnly(t *testing.T) {
	f := filter{}
	for p, want := range map[string]bool{
		"usr/sbin/nginx": true, "usr/share/doc/nginx/copyright": false, "usr/share/man/man8/nginx.8.gz": false,
		"usr/lib/x86_64-linux-gnu/libfoo.a": false, "etc/nginx/mime.types": true, "usr/share/locale/de/x.mo": false,
	} {
		if f.keep(p, false) != want {
			t.Errorf("keep(%s) = %v", p, !want)
		}
	}
	only := filter{only: []string{"usr/bin/ipcs", "usr/lib/apache2/modules/mod_dir.so", "etc/x"}}
	for p, want := range map[string]bool{
		"usr/bin/ipcs": true, "usr/bin/ipcrm": false, "usr/lib/apache2/modules/mod_dir.so": true, "etc/x/y.conf": true,
	} {
		if only.keep(p, false) != want {
			t.Errorf("only: keep(%s) = %v", p, !want)
		}
	}
}

func TestParseDepends(t *testing.T) {
	out := `nginx
  Depends: libc6
 |Depends: libssl3
  Depends: <debconf-2.0>
    cdebconf
    debconf
  PreDepends: dpkg
  Recommends: nope
libc6
  Depends: libgcc-s1
<debconf-2.0>
`
	g := parseDepends([]byte(out))
	if got := strings.Join(g["nginx"], " "); got != "libc6 libssl3 debconf-2.0 cdebconf debconf dpkg" {
		t.Errorf("nginx depends on %q", got)
	}
	if got := strings.Join(g["libc6"], " "); got != "libgcc-s1" {
		t.Errorf("libc6 depends on %q", got)
	}
	if _, ok := g["debconf-2.0"]; !ok {
		t.Error("the virtual package is not in the graph")
	}
}

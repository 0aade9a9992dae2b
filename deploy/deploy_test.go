package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/podnet/podnet/pkg/podnetd"
)

const (
	chart     = "../charts/podnet"
	manifest  = "podnet.yaml"
	cleanupMf = "podnet-cleanup.yaml"
)

// helmBin is the Helm CLI hack/helm.sh builds: $PODNET_HELM, or its cache
// path for the version hack/helm/go.mod pins. Missing, the test fails:
// rendering the chart is part of `make test`.
func helmBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PODNET_HELM"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("PODNET_HELM=%s: %v: run `make helm`", p, err)
		}
		return p
	}
	mod, err := os.ReadFile("../hack/helm/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^require helm\.sh/helm/v\d+ (v\S+)$`).FindSubmatch(mod)
	if m == nil {
		t.Fatal("hack/helm/go.mod requires no helm.sh/helm module")
	}
	p := "/var/cache/podnet/tools/helm-" + string(m[1])
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("helm %s is not built (%v): run `make helm` (make test does it)", m[1], err)
	}
	return p
}

// helm runs helm template on the chart with args; Helm's own state goes to
// a temporary home.
func helm(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(helmBin(t), append([]string{"template", "podnet", chart, "--namespace", "kube-system"}, args...)...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("helm template %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

func mustHelm(t *testing.T, args ...string) []byte {
	t.Helper()
	out, err := helm(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// body is a generated manifest without the header comment the render
// script puts before the chart's output.
func body(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte("\n---\n"))
	if i < 0 {
		t.Fatalf("%s: no document separator", file)
	}
	for _, l := range strings.Split(string(b[:i]), "\n") {
		if !strings.HasPrefix(l, "#") {
			t.Fatalf("%s: header line %q is not a comment", file, l)
		}
	}
	return b[i+1:]
}

// The plain manifests are exactly what the chart renders.
func TestManifestsAreTheChartsRendering(t *testing.T) {
	for _, tc := range []struct {
		file string
		args []string
	}{
		{manifest, nil},
		{cleanupMf, []string{"--set", "cleanup.enabled=true", "--show-only", "templates/cleanup.yaml"}},
	} {
		got, want := body(t, tc.file), mustHelm(t, tc.args...)
		if !bytes.Equal(got, want) {
			gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
			i := 0
			for i < len(gl) && i < len(wl) && gl[i] == wl[i] {
				i++
			}
			line := func(l []string) string {
				if i < len(l) {
					return l[i]
				}
				return "(end)"
			}
			t.Errorf("deploy/%s is not the chart's rendering (run hack/render-manifest.sh): from line %d of its body:\n file:  %s\n chart: %s",
				tc.file, i+1, line(gl), line(wl))
		}
	}
}

// version is the repository's VERSION, checked for form.
func version(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../VERSION")
	if err != nil {
		t.Fatal(err)
	}
	v := strings.TrimSpace(string(b))
	if !regexp.MustCompile(`^v\d+\.\d+\.\d+$`).MatchString(v) {
		t.Fatalf("VERSION %q: want v<major>.<minor>.<patch>", v)
	}
	return v
}

func TestVersionIsTheOneSource(t *testing.T) {
	v := version(t)
	b, err := os.ReadFile(filepath.Join(chart, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Version    string `yaml:"version"`
		AppVersion string `yaml:"appVersion"`
	}
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	if c.Version != strings.TrimPrefix(v, "v") || c.AppVersion != v {
		t.Errorf("Chart.yaml version %q appVersion %q; VERSION is %s (run hack/render-manifest.sh)", c.Version, c.AppVersion, v)
	}
	for _, f := range []string{manifest, cleanupMf} {
		for _, o := range decodeFile(t, f) {
			if ds, ok := o.(*appsv1.DaemonSet); ok {
				for _, c := range allContainers(ds) {
					if want := "docker.io/podnet/podnet:" + v; c.Image != want {
						t.Errorf("%s: container %s runs %s, want %s", f, c.Name, c.Image, want)
					}
				}
			}
		}
	}
}

// decode splits a multi-document manifest and decodes every object with
// client-go's scheme, strictly: an unknown or duplicated field fails.
func decode(t *testing.T, name string, b []byte) []runtime.Object {
	t.Helper()
	dec := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var out []runtime.Object
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if isEmpty(doc) {
			continue
		}
		o, gvk, err := dec.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("%s: decode %s: %v", name, gvk, err)
		}
		out = append(out, o)
	}
}

func isEmpty(doc []byte) bool {
	for _, l := range strings.Split(string(doc), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") && l != "---" {
			return false
		}
	}
	return true
}

func decodeFile(t *testing.T, name string) []runtime.Object {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, name, b)
}

func allContainers(ds *appsv1.DaemonSet) []corev1.Container {
	return append(append([]corev1.Container{}, ds.Spec.Template.Spec.InitContainers...), ds.Spec.Template.Spec.Containers...)
}

// objects are the manifest's objects by kind and name.
type objects struct {
	sa   *corev1.ServiceAccount
	cm   *corev1.ConfigMap
	role *rbacv1.ClusterRole
	bind *rbacv1.ClusterRoleBinding
	ds   *appsv1.DaemonSet
}

func addOn(t *testing.T, objs []runtime.Object) objects {
	t.Helper()
	var o objects
	var kinds []string
	for _, obj := range objs {
		switch v := obj.(type) {
		case *corev1.ServiceAccount:
			o.sa = v
		case *corev1.ConfigMap:
			o.cm = v
		case *rbacv1.ClusterRole:
			o.role = v
		case *rbacv1.ClusterRoleBinding:
			o.bind = v
		case *appsv1.DaemonSet:
			o.ds = v
		}
		kinds = append(kinds, fmt.Sprintf("%T", obj))
	}
	if len(objs) != 5 || o.sa == nil || o.cm == nil || o.role == nil || o.bind == nil || o.ds == nil {
		t.Fatalf("want a ServiceAccount, ConfigMap, ClusterRole, ClusterRoleBinding and DaemonSet; got %v", kinds)
	}
	return o
}

func TestManifestRBAC(t *testing.T) {
	o := addOn(t, decodeFile(t, manifest))
	// Exactly what pkg/podnetd does with the API (see charts/podnet/templates/rbac.yaml).
	want := map[string][]string{
		"/nodes":                            {"list", "patch", "watch"},
		"/nodes/status":                     {"patch"},
		"/events":                           {"create", "patch"},
		"/services":                         {"list", "watch"},
		"discovery.k8s.io/endpointslices":   {"list", "watch"},
		"networking.k8s.io/networkpolicies": {"list", "watch"},
		"/pods":                             {"list", "watch"},
		"/namespaces":                       {"list", "watch"},
		"policy.networking.k8s.io/clusternetworkpolicies": {"list", "watch"},
	}
	got := map[string][]string{}
	for _, r := range o.role.Rules {
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			t.Errorf("unexpected rule %+v", r)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				got[g+"/"+res] = append(got[g+"/"+res], r.Verbs...)
			}
		}
	}
	for k := range got {
		sort.Strings(got[k])
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ClusterRole rules\n got %v\nwant %v", got, want)
	}
	if o.sa.Name != "podnet" || o.sa.Namespace != "kube-system" || o.role.Name != "podnet" {
		t.Errorf("ServiceAccount %s/%s, ClusterRole %s", o.sa.Namespace, o.sa.Name, o.role.Name)
	}
	b := o.bind
	if b.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "podnet"}) ||
		len(b.Subjects) != 1 || b.Subjects[0] != (rbacv1.Subject{Kind: "ServiceAccount", Name: "podnet", Namespace: "kube-system"}) {
		t.Errorf("ClusterRoleBinding %+v %+v", b.RoleRef, b.Subjects)
	}
}

// podnetdOptions reads the ConfigMap's config.yaml as podnetd does.
func podnetdOptions(t *testing.T, cm *corev1.ConfigMap) (podnetd.Options, podnetd.Config) {
	t.Helper()
	if cm.Name != "podnet-config" || cm.Namespace != "kube-system" || len(cm.Data) != 1 {
		t.Fatalf("ConfigMap %s/%s with keys %v; want kube-system/podnet-config with config.yaml", cm.Namespace, cm.Name, cm.Data)
	}
	o := podnetd.DefaultOptions()
	if err := o.ApplyFile("config.yaml", []byte(cm.Data["config.yaml"])); err != nil {
		t.Fatalf("podnetd refuses the ConfigMap's config.yaml: %v", err)
	}
	cfg, err := o.Config("node-1")
	if err != nil {
		t.Fatalf("podnetd refuses the ConfigMap's config.yaml: %v", err)
	}
	return o, cfg
}

func TestManifestConfigMap(t *testing.T) {
	o := addOn(t, decodeFile(t, manifest))
	got, _ := podnetdOptions(t, o.cm)
	// Every key is there, and the defaults are podnetd's own.
	for _, k := range []string{"backend", "mtu", "serviceProxy", "network", "clusterCIDR", "nodePortAddresses", "apiServer", "listen"} {
		if !regexp.MustCompile(`(?m)^` + k + `: `).MatchString(o.cm.Data["config.yaml"]) {
			t.Errorf("config.yaml lacks %s", k)
		}
	}
	want := podnetd.DefaultOptions()
	if got.Backend != want.Backend || got.MTU != want.MTU || got.ServiceProxy != want.ServiceProxy || got.Network != want.Network ||
		got.ClusterCIDR != want.ClusterCIDR || got.NodePortAddresses != "" || got.APIServer != "" || got.Listen != want.Listen {
		t.Errorf("config.yaml differs from podnetd's defaults:\n got %+v\nwant %+v", got, want)
	}
}

func TestManifestDaemonSet(t *testing.T) {
	o := addOn(t, decodeFile(t, manifest))
	ds := o.ds
	spec := ds.Spec.Template.Spec
	if ds.Name != "podnet" || ds.Namespace != "kube-system" {
		t.Errorf("DaemonSet %s/%s", ds.Namespace, ds.Name)
	}
	sel := map[string]string{"app.kubernetes.io/name": "podnet"}
	if !reflect.DeepEqual(ds.Spec.Selector.MatchLabels, sel) || ds.Spec.Template.Labels["app.kubernetes.io/name"] != "podnet" {
		t.Errorf("selector %v, pod labels %v", ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels)
	}
	u := ds.Spec.UpdateStrategy
	if u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate == nil || u.RollingUpdate.MaxUnavailable.String() != "1" ||
		(u.RollingUpdate.MaxSurge != nil && u.RollingUpdate.MaxSurge.String() != "0") {
		t.Errorf("update strategy %+v", u)
	}
	if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSDefault || spec.ServiceAccountName != "podnet" ||
		spec.PriorityClassName != "system-node-critical" {
		t.Errorf("hostNetwork %v, dnsPolicy %s, serviceAccount %s, priority %s", spec.HostNetwork, spec.DNSPolicy, spec.ServiceAccountName, spec.PriorityClassName)
	}
	if g := spec.TerminationGracePeriodSeconds; g == nil || *g < 1 || *g > 30 {
		t.Errorf("terminationGracePeriodSeconds %v", g)
	}
	if !reflect.DeepEqual(spec.Tolerations, []corev1.Toleration{{Operator: corev1.TolerationOpExists}}) {
		t.Errorf("tolerations %+v: want one, operator Exists, no key (every taint)", spec.Tolerations)
	}
	hostPaths := map[string]string{}
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	if !reflect.DeepEqual(hostPaths, map[string]string{"cni-conf": "/etc/cni/net.d", "cni-bin": "/opt/cni/bin", "run-podnet": "/run/podnet",
		"cni-data": "/var/lib/cni/podnet"}) {
		t.Errorf("hostPath volumes %v", hostPaths)
	}
	if cm := volumes["config"].ConfigMap; cm == nil || cm.Name != "podnet-config" {
		t.Errorf("config volume %+v", volumes["config"])
	}

	if len(spec.InitContainers) != 1 || len(spec.Containers) != 1 {
		t.Fatalf("%d init containers, %d containers", len(spec.InitContainers), len(spec.Containers))
	}
	ic := spec.InitContainers[0]
	if ic.Name != "install-cni" || strings.Join(ic.Command, " ") != "/usr/local/bin/podnetd install-cni --from=/usr/local/bin/podnet --cni-bin-dir=/opt/cni/bin" ||
		!mounts(ic, "cni-bin", "/opt/cni/bin", false) || len(ic.VolumeMounts) != 1 {
		t.Errorf("install-cni: %v %+v", ic.Command, ic.VolumeMounts)
	}
	checkCaps(t, ic, nil)

	c := spec.Containers[0]
	if c.Name != "podnetd" || strings.Join(c.Command, " ") != "/usr/local/bin/podnetd --config=/etc/podnet/config.yaml" || len(c.Args) != 0 {
		t.Errorf("podnetd: %v %v", c.Command, c.Args)
	}
	if len(c.Env) != 1 || c.Env[0].Name != "NODE_NAME" || c.Env[0].ValueFrom == nil || c.Env[0].ValueFrom.FieldRef == nil ||
		c.Env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("env %+v: want NODE_NAME from spec.nodeName", c.Env)
	}
	// /run/podnet: the socket the plugin announces new pods on;
	// /var/lib/cni/podnet: the plugin's store, whose pod owns which veth
	// (anti-spoofing), read under its lock.
	if !mounts(c, "config", "/etc/podnet", true) || !mounts(c, "cni-conf", "/etc/cni/net.d", false) ||
		!mounts(c, "run-podnet", "/run/podnet", false) || !mounts(c, "cni-data", "/var/lib/cni/podnet", false) || len(c.VolumeMounts) != 4 {
		t.Errorf("podnetd mounts %+v", c.VolumeMounts)
	}
	checkCaps(t, c, []corev1.Capability{"NET_ADMIN"})

	// The probes reach podnetd's listener: the ConfigMap's listen address.
	opts, _ := podnetdOptions(t, o.cm)
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"readiness", c.ReadinessProbe, "/healthz"}, {"liveness", c.LivenessProbe, "/livez"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s probe %+v: want httpGet", p.name, p.probe)
			continue
		}
		g := p.probe.HTTPGet
		if addr := fmt.Sprintf("%s:%s", g.Host, g.Port.String()); addr != opts.Listen || g.Path != p.path {
			t.Errorf("%s probe on %s%s; podnetd listens on %s and serves %s", p.name, addr, g.Path, opts.Listen, p.path)
		}
	}
}

func mounts(c corev1.Container, volume, path string, readOnly bool) bool {
	for _, m := range c.VolumeMounts {
		if m.Name == volume && m.MountPath == path && m.ReadOnly == readOnly {
			return true
		}
	}
	return false
}

// checkCaps: not privileged, every capability dropped but add, no
// escalation, a read-only root filesystem.
func checkCaps(t *testing.T, c corev1.Container, add []corev1.Capability) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Errorf("%s: no securityContext capabilities", c.Name)
		return
	}
	if (sc.Privileged != nil && *sc.Privileged) || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: privileged %v, allowPrivilegeEscalation %v, readOnlyRootFilesystem %v", c.Name, sc.Privileged, sc.AllowPrivilegeEscalation, sc.ReadOnlyRootFilesystem)
	}
	if !reflect.DeepEqual(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || !reflect.DeepEqual(sc.Capabilities.Add, add) {
		t.Errorf("%s: capabilities add %v drop %v; want add %v drop [ALL]", c.Name, sc.Capabilities.Add, sc.Capabilities.Drop, add)
	}
}

func TestCleanupManifest(t *testing.T) {
	objs := decodeFile(t, cleanupMf)
	if len(objs) != 1 {
		t.Fatalf("%d objects; want the cleanup DaemonSet alone", len(objs))
	}
	ds, ok := objs[0].(*appsv1.DaemonSet)
	if !ok || ds.Name != "podnet-cleanup" || ds.Namespace != "kube-system" {
		t.Fatalf("%T %v", objs[0], objs[0])
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken ||
		!reflect.DeepEqual(spec.Tolerations, []corev1.Toleration{{Operator: corev1.TolerationOpExists}}) {
		t.Errorf("hostNetwork %v, automount %v, tolerations %+v", spec.HostNetwork, spec.AutomountServiceAccountToken, spec.Tolerations)
	}
	if len(spec.InitContainers) != 1 || len(spec.Containers) != 1 {
		t.Fatalf("%d init containers, %d containers", len(spec.InitContainers), len(spec.Containers))
	}
	ic := spec.InitContainers[0]
	if strings.Join(ic.Command, " ") != "/usr/local/bin/podnetd cleanup --agent=127.0.0.1:9965 --remove-cni-bin" {
		t.Errorf("cleanup command %v", ic.Command)
	}
	for v, p := range map[string]string{"cni-conf": "/etc/cni/net.d", "cni-bin": "/opt/cni/bin", "cni-data": "/var/lib/cni"} {
		if !mounts(ic, v, p, false) {
			t.Errorf("cleanup does not mount %s at %s: %+v", v, p, ic.VolumeMounts)
		}
	}
	checkCaps(t, ic, []corev1.Capability{"NET_ADMIN"})
	if c := spec.Containers[0]; strings.Join(c.Command, " ") != "/usr/local/bin/podnetd sleep" {
		t.Errorf("main container %v", c.Command)
	}
	checkCaps(t, spec.Containers[0], nil)
}

// Values other than the defaults land where they should.
func TestChartValues(t *testing.T) {
	out := mustHelm(t, "--set", "backend=host-gw", "--set", "image.tag=v9.9.9", "--set", "image.repository=registry.example/podnet",
		"--set", "mtu=1400", "--set", "serviceProxy=false", "--set", "nodePortAddresses={192.168.56.0/24}",
		"--set", "apiServer=192.168.56.10:6443", "--set", "healthPort=9977", "--set", "priorityClassName=other")
	o := addOn(t, decode(t, "rendering", out))
	opts, cfg := podnetdOptions(t, o.cm)
	if cfg.Backend != "host-gw" || cfg.MTU != 1400 || cfg.ServiceProxy || len(cfg.NodePortAddresses) != 1 ||
		cfg.NodePortAddresses[0].String() != "192.168.56.0/24" || opts.APIServer != "192.168.56.10:6443" || opts.Listen != "127.0.0.1:9977" {
		t.Errorf("config %+v, options %+v", cfg, opts)
	}
	spec := o.ds.Spec.Template.Spec
	for _, c := range allContainers(o.ds) {
		if c.Image != "registry.example/podnet:v9.9.9" {
			t.Errorf("%s: image %s", c.Name, c.Image)
		}
	}
	if p := spec.Containers[0].ReadinessProbe.HTTPGet.Port.IntValue(); p != 9977 || spec.PriorityClassName != "other" {
		t.Errorf("probe port %d, priority %s", p, spec.PriorityClassName)
	}
	def := addOn(t, decodeFile(t, manifest))
	if a, b := o.ds.Spec.Template.Annotations["podnet.io/config-hash"], def.ds.Spec.Template.Annotations["podnet.io/config-hash"]; a == "" || a == b {
		t.Errorf("config hash %q with other options, %q by default: a new config must roll the pods", a, b)
	}

	// cleanup.enabled swaps podnet's DaemonSet for the cleanup's.
	out = mustHelm(t, "--set", "cleanup.enabled=true", "--set", "cleanup.removeCNIBin=false")
	var names []string
	for _, obj := range decode(t, "rendering", out) {
		if ds, ok := obj.(*appsv1.DaemonSet); ok {
			names = append(names, ds.Name)
			if strings.Contains(strings.Join(ds.Spec.Template.Spec.InitContainers[0].Command, " "), "--remove-cni-bin") {
				t.Error("removeCNIBin=false still removes the plugin")
			}
		}
	}
	if !reflect.DeepEqual(names, []string{"podnet-cleanup"}) {
		t.Errorf("DaemonSets with cleanup.enabled: %v", names)
	}
}

// Bad values are refused by the chart's schema, with the value's name.
func TestChartRefusesBadValues(t *testing.T) {
	for _, set := range []string{"backend=vxlam", "mtu=100", "serviceProxy=maybe", "bakend=vxlan", "image.pullPolicy=Sometimes"} {
		_, err := helm(t, "--set", set)
		key := strings.SplitN(set, "=", 2)[0]
		if err == nil || !strings.Contains(err.Error(), strings.SplitN(key, ".", 2)[0]) {
			t.Errorf("--set %s: %v", set, err)
		}
	}
}

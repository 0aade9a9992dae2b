package nodeagent

import (
	"context"
	"os"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"
)

// fakeSources serves ConfigMaps, Secrets and tokens from maps.
type fakeSources struct {
	configMaps map[string]*corev1.ConfigMap
	secrets    map[string]*corev1.Secret
	tokenAsked []string
}

func (f *fakeSources) configMap(_ context.Context, ns, name string) (*corev1.ConfigMap, error) {
	if cm, ok := f.configMaps[ns+"/"+name]; ok {
		return cm, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "configmaps"}, name)
}

func (f *fakeSources) secret(_ context.Context, ns, name string) (*corev1.Secret, error) {
	if s, ok := f.secrets[ns+"/"+name]; ok {
		return s, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, name)
}

func (f *fakeSources) token(_ context.Context, pod *corev1.Pod, p *corev1.ServiceAccountTokenProjection) ([]byte, error) {
	f.tokenAsked = append(f.tokenAsked, serviceAccountOf(pod)+"@"+p.Audience)
	return []byte("token-for-" + pod.Name), nil
}

func testPod() *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-0", Namespace: "shop", UID: "uid-1",
		Labels: map[string]string{"app": "web", "tier": `fr"ont`}, Annotations: map[string]string{"a": "1"}},
		Spec: corev1.PodSpec{NodeName: "node-1", ServiceAccountName: "web"}}
}

func testSources() *fakeSources {
	return &fakeSources{
		configMaps: map[string]*corev1.ConfigMap{
			"shop/coredns":          {Data: map[string]string{"Corefile": ".:53 {}\n", "other": "x"}, BinaryData: map[string][]byte{"bin": {0, 1}}},
			"shop/kube-root-ca.crt": {Data: map[string]string{"ca.crt": "CA"}},
		},
		secrets: map[string]*corev1.Secret{"shop/tls": {Data: map[string][]byte{"tls.crt": []byte("C"), "tls.key": []byte("K")}}},
	}
}

func project(t *testing.T, src sources, v corev1.Volume) payload {
	t.Helper()
	p, err := projectVolume(context.Background(), src, testPod(), podInfo{podIP: "10.244.1.5", hostIP: "192.168.56.11"}, v)
	if err != nil {
		t.Fatalf("project %s: %v", v.Name, err)
	}
	return p
}

func wantFiles(t *testing.T, p payload, want map[string]string, mode os.FileMode) {
	t.Helper()
	if len(p) != len(want) {
		t.Errorf("files %v, want %v", keys(p), want)
	}
	for k, v := range want {
		f, ok := p[k]
		if !ok || string(f.data) != v || f.mode != mode {
			t.Errorf("file %s = %q mode %o, want %q mode %o", k, f.data, f.mode, v, mode)
		}
	}
}

func keys(p payload) []string {
	var out []string
	for k := range p {
		out = append(out, k)
	}
	return out
}

func TestConfigMapAndSecretVolumes(t *testing.T) {
	src := testSources()
	all := project(t, src, corev1.Volume{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: "coredns"}}}})
	wantFiles(t, all, map[string]string{"Corefile": ".:53 {}\n", "other": "x", "bin": "\x00\x01"}, 0o644)

	items := project(t, src, corev1.Volume{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: "coredns"}, DefaultMode: ptr.To(int32(0o600)),
		Items: []corev1.KeyToPath{{Key: "Corefile", Path: "conf/Corefile"}}}}})
	wantFiles(t, items, map[string]string{"conf/Corefile": ".:53 {}\n"}, 0o600)

	sec := project(t, src, corev1.Volume{Name: "tls", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
		SecretName: "tls", Items: []corev1.KeyToPath{{Key: "tls.key", Path: "key.pem", Mode: ptr.To(int32(0o400))}}}}})
	wantFiles(t, sec, map[string]string{"key.pem": "K"}, 0o400)

	none := project(t, src, corev1.Volume{Name: "opt", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}, Optional: ptr.To(true)}}})
	wantFiles(t, none, map[string]string{}, 0)
}

func TestVolumeErrorsSayWhat(t *testing.T) {
	src := testSources()
	for _, tc := range []struct {
		v    corev1.Volume
		want string
	}{
		{corev1.Volume{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}}}}, `volume "cfg": get configmap shop/absent`},
		{corev1.Volume{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "coredns"},
			Items:                []corev1.KeyToPath{{Key: "nope", Path: "x"}}}}}, `configmap shop/coredns has no key "nope"`},
		{corev1.Volume{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "coredns"},
			Items:                []corev1.KeyToPath{{Key: "other", Path: "../escape"}}}}}, `must not contain '..'`},
		{corev1.Volume{Name: "data", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/data"}}},
			`volume "data": hostPath volumes are not supported by the podnet lab`},
		{corev1.Volume{Name: "d", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{
			Items: []corev1.DownwardAPIVolumeFile{{Path: "x", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nope"}}}}}},
			`field path "spec.nope" is not supported`},
	} {
		_, err := projectVolume(context.Background(), src, testPod(), podInfo{}, tc.v)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("volume %s: error %v, want %q", tc.v.Name, err, tc.want)
		}
	}
}

// TestServiceAccountVolume is the volume the ServiceAccount admission
// plugin adds to every pod (kube-api-access-*).
func TestServiceAccountVolume(t *testing.T) {
	src := testSources()
	v := corev1.Volume{Name: "kube-api-access-x", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		DefaultMode: ptr.To(int32(0o644)),
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{ExpirationSeconds: ptr.To(int64(3607)), Path: "token"}},
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"},
				Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{
				{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}}}},
		}}}}
	wantFiles(t, project(t, src, v), map[string]string{"token": "token-for-web-0", "ca.crt": "CA", "namespace": "shop"}, 0o644)
	if len(src.tokenAsked) != 1 || src.tokenAsked[0] != "web@" {
		t.Errorf("tokens asked: %v, want one for service account web with the API server's audience", src.tokenAsked)
	}
}

func TestDownwardAPIFields(t *testing.T) {
	pod := testPod()
	info := podInfo{podIP: "10.244.1.5", hostIP: "192.168.56.11"}
	for path, want := range map[string]string{
		"metadata.name": "web-0", "metadata.namespace": "shop", "metadata.uid": "uid-1",
		"metadata.labels": "app=\"web\"\ntier=\"fr\\\"ont\"", "metadata.labels['app']": "web", "metadata.annotations['a']": "1",
		"spec.nodeName": "node-1", "spec.serviceAccountName": "web", "status.podIP": "10.244.1.5", "status.hostIP": "192.168.56.11",
	} {
		got, err := fieldValue(pod, info, path)
		if err != nil || got != want {
			t.Errorf("%s = %q, %v; want %q", path, got, err, want)
		}
	}
}

func TestSpecEnv(t *testing.T) {
	src := testSources()
	c := corev1.Container{Name: "c", Env: []corev1.EnvVar{
		{Name: "PLAIN", Value: "v"},
		{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
		{Name: "CONF", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: "coredns"}, Key: "other"}}},
		{Name: "KEY", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: "tls"}, Key: "tls.key"}}},
		{Name: "MAYBE", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}, Key: "k", Optional: ptr.To(true)}}},
	}}
	env, err := specEnv(context.Background(), src, testPod(), podInfo{podIP: "10.244.1.5"}, c)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(env, " "), "PLAIN=v POD_IP=10.244.1.5 CONF=x KEY=K"; got != want {
		t.Errorf("env %q, want %q", got, want)
	}
	c.Env = []corev1.EnvVar{{Name: "MISSING", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}, Key: "k"}}}}
	if _, err := specEnv(context.Background(), src, testPod(), podInfo{}, c); err == nil ||
		!strings.Contains(err.Error(), "environment variable MISSING: get configmap shop/absent") {
		t.Errorf("a missing configmap for env: %v", err)
	}
	if got := mergeEnv([]string{"PATH=/bin", "A=1"}, []string{"A=2", "B=3"}); strings.Join(got, " ") != "PATH=/bin A=2 B=3" {
		t.Errorf("mergeEnv = %v", got)
	}
}

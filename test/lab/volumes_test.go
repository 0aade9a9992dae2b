package lab_test

import (
	"context"
	"os"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// volumes checks the lab nodes' volumes end to end: a Secret and a
// ConfigMap (items, subPath) read with the node's own credentials, the
// downward API, an emptyDir shared by two containers, the service account
// token, read-only mounts, and mount points under / and /etc that appear
// in the container only.
func volumes(t *testing.T, e *env) {
	ctx := context.Background()
	if _, err := e.client.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "creds"},
		StringData: map[string]string{"password": "s3cret"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "app"},
		Data: map[string]string{"app.conf": "port=8080", "other": "more"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sleeper := func(name string, mounts ...corev1.VolumeMount) corev1.Container {
		return corev1.Container{Name: name, Image: "busybox", Command: []string{"sleep", "3600"}, VolumeMounts: mounts}
	}
	shared := corev1.VolumeMount{Name: "shared", MountPath: "/shared"}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "vols", Namespace: "default", Labels: map[string]string{"app": "vols"}},
		Spec: corev1.PodSpec{NodeName: "node-2", TerminationGracePeriodSeconds: new(int64), Containers: []corev1.Container{
			sleeper("one", shared,
				corev1.VolumeMount{Name: "creds", MountPath: "/etc/creds", ReadOnly: true},
				corev1.VolumeMount{Name: "app", MountPath: "/config"},
				corev1.VolumeMount{Name: "app-all", MountPath: "/etc/other.txt", SubPath: "other"},
				corev1.VolumeMount{Name: "podinfo", MountPath: "/podinfo"}),
			sleeper("two", shared),
		}, Volumes: []corev1.Volume{
			{Name: "shared", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			{Name: "creds", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "creds"}}},
			{Name: "app", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: "app"}, Items: []corev1.KeyToPath{{Key: "app.conf", Path: "conf/app.conf"}}}}},
			{Name: "app-all", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: "app"}}}},
			{Name: "podinfo", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
				{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}}}}}},
		}}}
	if _, err := e.client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitRunning(t, "vols")
	in := func(container, script string) string {
		t.Helper()
		out, err := e.podnetctl("lab", "kubectl", "--", "exec", "vols", "-c", container, "--", "sh", "-c", script)
		if err != nil {
			t.Fatalf("in container %s: %s: %v\n%s", container, script, err, out)
		}
		return out
	}
	got := in("one", `cat /etc/creds/password; echo; cat /config/conf/app.conf; echo; cat /etc/other.txt; echo; cat /podinfo/labels; echo
		test -s /var/run/secrets/kubernetes.io/serviceaccount/token && cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo
		touch /etc/creds/x 2>/dev/null && echo writable; echo shared-by-one > /shared/note`)
	want := "s3cret\nport=8080\nmore\napp=\"vols\"\ndefault\n"
	if got != want {
		t.Errorf("container one sees:\n%s\nwant:\n%s", got, want)
	}
	if got := in("two", "cat /shared/note; ls /config 2>/dev/null || echo no-config"); got != "shared-by-one\nno-config\n" {
		t.Errorf("container two sees %q, want the emptyDir file and no /config (the mounts are per container)", got)
	}
	for _, p := range []string{"/config", "/podinfo", "/shared"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s appeared on the host", p)
		}
	}
	if out := e.onNode("node-2", "ls /etc/creds 2>&1; cat /etc/other.txt 2>&1 || true"); strings.Contains(out, "s3cret") || strings.Contains(out, "more") {
		t.Errorf("the volumes' contents show on the node outside the container:\n%s", out)
	}
}

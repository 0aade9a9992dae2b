package nodeagent

// Volumes as kubelet projects them (pkg/volume/configmap, secret,
// downwardapi, projected): what each volume's files are, computed from the
// pod and the objects it references. Writing them (atomicdir.go) and
// mounting them into containers (mounts.go) are elsewhere.

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// volumeFile is one file of a volume.
type volumeFile struct {
	data []byte
	mode os.FileMode
}

// payload is a volume's files by path relative to the volume.
type payload map[string]volumeFile

// sources are the API objects volumes and environment variables read. The
// agent asks the API server with the node's credentials: the Node
// authorizer lets a node read exactly what its pods reference, and request
// tokens for their service accounts bound to them.
type sources interface {
	configMap(ctx context.Context, namespace, name string) (*corev1.ConfigMap, error)
	secret(ctx context.Context, namespace, name string) (*corev1.Secret, error)
	// token is a service account token for the pod (its
	// serviceAccountName), bound to it.
	token(ctx context.Context, pod *corev1.Pod, p *corev1.ServiceAccountTokenProjection) ([]byte, error)
}

// podInfo is what the downward API reads besides the pod object.
type podInfo struct {
	podIP, hostIP string
}

// defaultVolumeMode is the API's default for defaultMode (0644).
const defaultVolumeMode int32 = 0o644

func fileMode(item *int32, def *int32) os.FileMode {
	switch {
	case item != nil:
		return os.FileMode(*item) & os.ModePerm
	case def != nil:
		return os.FileMode(*def) & os.ModePerm
	}
	return os.FileMode(defaultVolumeMode)
}

// isPayloadVolume says whether the agent writes the volume's files (as
// opposed to an emptyDir, which starts empty and belongs to the pod).
func isPayloadVolume(v corev1.Volume) bool {
	return v.ConfigMap != nil || v.Secret != nil || v.DownwardAPI != nil || v.Projected != nil
}

// projectVolume computes the files of a configMap, secret, downwardAPI or
// projected volume.
func projectVolume(ctx context.Context, src sources, pod *corev1.Pod, info podInfo, v corev1.Volume) (payload, error) {
	out := payload{}
	var err error
	switch {
	case v.ConfigMap != nil:
		err = addConfigMap(ctx, src, pod.Namespace, out, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional, v.ConfigMap.DefaultMode)
	case v.Secret != nil:
		err = addSecret(ctx, src, pod.Namespace, out, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional, v.Secret.DefaultMode)
	case v.DownwardAPI != nil:
		err = addDownwardAPI(out, pod, info, v.DownwardAPI.Items, v.DownwardAPI.DefaultMode)
	case v.Projected != nil:
		err = addProjected(ctx, src, pod, info, out, v.Projected)
	default:
		return nil, fmt.Errorf("volume %q: %s volumes are not supported by the podnet lab (it has configMap, secret, downwardAPI, projected and emptyDir)",
			v.Name, volumeType(v))
	}
	if err != nil {
		return nil, fmt.Errorf("volume %q: %w", v.Name, err)
	}
	return out, nil
}

func addProjected(ctx context.Context, src sources, pod *corev1.Pod, info podInfo, out payload, p *corev1.ProjectedVolumeSource) error {
	def := p.DefaultMode
	for _, s := range p.Sources {
		var err error
		switch {
		case s.ConfigMap != nil:
			err = addConfigMap(ctx, src, pod.Namespace, out, s.ConfigMap.Name, s.ConfigMap.Items, s.ConfigMap.Optional, def)
		case s.Secret != nil:
			err = addSecret(ctx, src, pod.Namespace, out, s.Secret.Name, s.Secret.Items, s.Secret.Optional, def)
		case s.DownwardAPI != nil:
			err = addDownwardAPI(out, pod, info, s.DownwardAPI.Items, def)
		case s.ServiceAccountToken != nil:
			var tok []byte
			if tok, err = src.token(ctx, pod, s.ServiceAccountToken); err == nil {
				err = addFile(out, s.ServiceAccountToken.Path, volumeFile{data: tok, mode: fileMode(nil, def)})
			}
		default:
			err = fmt.Errorf("a projected source other than configMap, secret, downwardAPI and serviceAccountToken is not supported by the podnet lab")
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func addConfigMap(ctx context.Context, src sources, ns string, out payload, name string, items []corev1.KeyToPath, optional *bool, def *int32) error {
	cm, err := src.configMap(ctx, ns, name)
	if apierrors.IsNotFound(err) && optional != nil && *optional {
		return nil
	}
	if err != nil {
		return fmt.Errorf("get configmap %s/%s: %w", ns, name, err)
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	maps.Copy(data, cm.BinaryData)
	return addKeys(out, "configmap "+ns+"/"+name, data, items, optional, def)
}

func addSecret(ctx context.Context, src sources, ns string, out payload, name string, items []corev1.KeyToPath, optional *bool, def *int32) error {
	s, err := src.secret(ctx, ns, name)
	if apierrors.IsNotFound(err) && optional != nil && *optional {
		return nil
	}
	if err != nil {
		return fmt.Errorf("get secret %s/%s: %w", ns, name, err)
	}
	data := maps.Clone(s.Data)
	for k, v := range s.StringData { // only set on objects never stored; harmless
		data[k] = []byte(v)
	}
	return addKeys(out, "secret "+ns+"/"+name, data, items, optional, def)
}

// addKeys is kubelet's key-to-path projection: every key when items is
// empty, else exactly the listed keys (a missing one is an error unless
// the source is optional).
func addKeys(out payload, what string, data map[string][]byte, items []corev1.KeyToPath, optional *bool, def *int32) error {
	if len(items) == 0 {
		for _, k := range slices.Sorted(maps.Keys(data)) {
			if err := addFile(out, k, volumeFile{data: data[k], mode: fileMode(nil, def)}); err != nil {
				return err
			}
		}
		return nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if optional != nil && *optional {
				continue
			}
			return fmt.Errorf("%s has no key %q", what, it.Key)
		}
		if err := addFile(out, it.Path, volumeFile{data: v, mode: fileMode(it.Mode, def)}); err != nil {
			return err
		}
	}
	return nil
}

func addDownwardAPI(out payload, pod *corev1.Pod, info podInfo, items []corev1.DownwardAPIVolumeFile, def *int32) error {
	for _, it := range items {
		if it.FieldRef == nil {
			return fmt.Errorf("downward API file %q: only fieldRef is supported by the podnet lab (not resourceFieldRef)", it.Path)
		}
		v, err := fieldValue(pod, info, it.FieldRef.FieldPath)
		if err != nil {
			return fmt.Errorf("downward API file %q: %w", it.Path, err)
		}
		if err := addFile(out, it.Path, volumeFile{data: []byte(v), mode: fileMode(it.Mode, def)}); err != nil {
			return err
		}
	}
	return nil
}

// addFile adds one file, refusing paths that would leave the volume and
// two sources writing the same path (the API validates both; the agent
// does not write outside a volume whatever it is given).
func addFile(out payload, p string, f volumeFile) error {
	if err := checkRelPath(p); err != nil {
		return err
	}
	if _, dup := out[p]; dup {
		return fmt.Errorf("two sources project the path %q", p)
	}
	out[p] = f
	return nil
}

// checkRelPath refuses an empty or absolute path and any ".." element.
func checkRelPath(p string) error {
	if p == "" || path.IsAbs(p) {
		return fmt.Errorf("path %q: want a relative path inside the volume", p)
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			return fmt.Errorf("path %q: must not contain '..'", p)
		}
	}
	return nil
}

// fieldValue is the downward API's value of a pod field (kubelet's
// fieldpath.ExtractFieldPathAsString plus the status fields it fills in).
func fieldValue(pod *corev1.Pod, info podInfo, fieldPath string) (string, error) {
	if k, ok := subscript(fieldPath, "metadata.labels"); ok {
		return pod.Labels[k], nil
	}
	if k, ok := subscript(fieldPath, "metadata.annotations"); ok {
		return pod.Annotations[k], nil
	}
	switch fieldPath {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "metadata.labels":
		return formatMap(pod.Labels), nil
	case "metadata.annotations":
		return formatMap(pod.Annotations), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP", "status.podIPs":
		return info.podIP, nil
	case "status.hostIP", "status.hostIPs":
		return info.hostIP, nil
	}
	return "", fmt.Errorf("field path %q is not supported", fieldPath)
}

// subscript parses `prefix['key']`.
func subscript(fieldPath, prefix string) (string, bool) {
	rest, ok := strings.CutPrefix(fieldPath, prefix+"['")
	if !ok {
		return "", false
	}
	return strings.CutSuffix(rest, "']")
}

// formatMap is kubelet's format of labels and annotations: key="value"
// lines, sorted by key.
func formatMap(m map[string]string) string {
	var b strings.Builder
	for i, k := range slices.Sorted(maps.Keys(m)) {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "%s=%q", k, m[k])
	}
	return b.String()
}

// volumeType names a volume's source for messages.
func volumeType(v corev1.Volume) string {
	switch {
	case v.HostPath != nil:
		return "hostPath"
	case v.PersistentVolumeClaim != nil:
		return "persistentVolumeClaim"
	case v.Ephemeral != nil:
		return "ephemeral"
	case v.CSI != nil:
		return "csi"
	case v.NFS != nil:
		return "nfs"
	case v.Image != nil:
		return "image"
	}
	return "such"
}

// specEnv is the container's environment as kubelet builds it from
// the pod spec: values, the downward API (fieldRef) and configMap and
// secret keys (optional ones may be missing). $(VAR) references are not
// expanded.
func specEnv(ctx context.Context, src sources, pod *corev1.Pod, info podInfo, c corev1.Container) ([]string, error) {
	var env []string
	for _, e := range c.Env {
		v, ok, err := envValue(ctx, src, pod, info, e)
		if err != nil {
			return nil, fmt.Errorf("environment variable %s: %w", e.Name, err)
		}
		if ok {
			env = append(env, e.Name+"="+v)
		}
	}
	return env, nil
}

func envValue(ctx context.Context, src sources, pod *corev1.Pod, info podInfo, e corev1.EnvVar) (string, bool, error) {
	from := e.ValueFrom
	switch {
	case from == nil:
		return e.Value, true, nil
	case from.FieldRef != nil:
		v, err := fieldValue(pod, info, from.FieldRef.FieldPath)
		return v, err == nil, err
	case from.ConfigMapKeyRef != nil:
		r := from.ConfigMapKeyRef
		out := payload{}
		err := addConfigMap(ctx, src, pod.Namespace, out, r.Name, []corev1.KeyToPath{{Key: r.Key, Path: "v"}}, r.Optional, nil)
		f, ok := out["v"]
		return string(f.data), ok, err
	case from.SecretKeyRef != nil:
		r := from.SecretKeyRef
		out := payload{}
		err := addSecret(ctx, src, pod.Namespace, out, r.Name, []corev1.KeyToPath{{Key: r.Key, Path: "v"}}, r.Optional, nil)
		f, ok := out["v"]
		return string(f.data), ok, err
	}
	return "", false, fmt.Errorf("only value, fieldRef, configMapKeyRef and secretKeyRef are supported by the podnet lab")
}

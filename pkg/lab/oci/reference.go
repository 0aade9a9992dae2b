package oci

import (
	"fmt"
	"regexp"
	"strings"
)

// Reference is an image name taken apart: Domain/Path:Tag, as Docker and
// containerd normalize it ("nginx" is docker.io/library/nginx:latest).
type Reference struct {
	Domain string // "docker.io", "registry.k8s.io", "192.168.56.1:5000"
	Path   string // "library/nginx", "e2e-test-images/agnhost"
	Tag    string // "latest"; empty only when Digest is set
	Digest Digest // from name@sha256:..., else empty
}

var (
	pathComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$`)
	tagPattern    = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	domainPattern = regexp.MustCompile(`^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?$`)
)

// ParseReference parses and normalizes an image name: a first component
// with a dot or a port, or "localhost", is the registry's host; otherwise the
// registry is docker.io, where a one-component path is under library/. A name
// without tag or digest gets the tag "latest".
func ParseReference(s string) (Reference, error) {
	var r Reference
	name := s
	if i := strings.IndexByte(name, '@'); i >= 0 {
		r.Digest = Digest(name[i+1:])
		if err := r.Digest.Validate(); err != nil {
			return Reference{}, fmt.Errorf("image name %q: %w", s, err)
		}
		name = name[:i]
	}
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		r.Tag = name[i+1:]
		name = name[:i]
		if !tagPattern.MatchString(r.Tag) {
			return Reference{}, fmt.Errorf("image name %q: invalid tag %q", s, r.Tag)
		}
	}
	if r.Tag == "" && r.Digest == "" {
		r.Tag = "latest"
	}
	first, rest, found := strings.Cut(name, "/")
	if found && (strings.ContainsAny(first, ".:") || first == "localhost") {
		r.Domain, r.Path = first, rest
		if !domainPattern.MatchString(r.Domain) {
			return Reference{}, fmt.Errorf("image name %q: invalid registry host %q", s, r.Domain)
		}
	} else {
		r.Domain, r.Path = "docker.io", name
	}
	if r.Domain == "index.docker.io" || r.Domain == "registry-1.docker.io" {
		r.Domain = "docker.io"
	}
	if r.Domain == "docker.io" && !strings.Contains(r.Path, "/") {
		r.Path = "library/" + r.Path
	}
	for _, c := range strings.Split(r.Path, "/") {
		if !pathComponent.MatchString(c) {
			return Reference{}, fmt.Errorf("image name %q: invalid path component %q (lower-case letters, digits and separators)", s, c)
		}
	}
	return r, nil
}

// Name is the repository's full name, Domain/Path.
func (r Reference) Name() string { return r.Domain + "/" + r.Path }

// String is the normalized full reference.
func (r Reference) String() string {
	s := r.Name()
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + string(r.Digest)
	}
	return s
}

// MirrorRepository maps an image name to where a registry mirroring several
// upstream registries keeps it: the repository named by the upstream host
// followed by the path ("nginx" → "docker.io/library/nginx", tag "latest";
// "registry.k8s.io/pause:3.10.2" → "registry.k8s.io/pause", "3.10.2").
// containerd finds it there through HostsTOML's override_path.
func MirrorRepository(image string) (repo, tag string, err error) {
	r, err := ParseReference(image)
	if err != nil {
		return "", "", err
	}
	if r.Tag == "" {
		return "", "", fmt.Errorf("image name %q: a mirror is pushed by tag, and it has none", image)
	}
	return r.Name(), r.Tag, nil
}

// HostsTOML is the containerd registry host configuration
// (/etc/containerd/certs.d/<upstream>/hosts.toml) that sends pulls of
// images from upstream ("docker.io", "registry.k8s.io") to the mirror
// registry at mirrorURL ("http://192.168.56.10:5000"), under the repository
// MirrorRepository names: with override_path, containerd asks
// <mirrorURL>/v2/<upstream>/<path>/manifests/<tag>. The mirror is the
// server itself, not a host tried before upstream: nothing falls back to
// the internet, and an image the mirror lacks fails to pull at once.
func HostsTOML(upstream, mirrorURL string) string {
	return fmt.Sprintf("# Pulls from %s go to the lab's registry only (written by podnet).\n"+
		"server = %q\n"+
		"capabilities = [\"pull\", \"resolve\"]\n"+
		"override_path = true\n",
		upstream, strings.TrimSuffix(mirrorURL, "/")+"/v2/"+upstream)
}

// Package oci builds OCI container images from files of the host, byte for
// byte reproducibly, and ships them without Docker: as an OCI image-layout tar
// archive (what `ctr -n k8s.io images import` reads, every image under its full
// names) and to a registry over the OCI distribution HTTP API.
//
// It owns the image formats and nothing else: which files go into an image is
// the caller's business (the lab's recipes are in package imageset). The pieces:
//
//   - Entry and WriteTar: a layer's file system as a list of entries (files
//     copied from the host, inline content, directories, symlinks, hardlinks),
//     written as a deterministic tar: sorted, mtime 0, owner 0:0, modes kept.
//   - Store: content-addressed blobs on disk; AddLayer gzips a layer (fixed
//     header), AddImage writes the image config and the manifest.
//   - WriteArchive / OpenArchive: the OCI image-layout tar, with the
//     org.opencontainers.image.ref.name and io.containerd.image.name
//     annotations, one index entry per name; Verify checks every digest.
//   - Registry: blob HEAD, cross-repository mount or monolithic POST+PUT upload,
//     manifest PUT by tag. ParseReference and Reference.Repository map an image
//     name to its repository at a lab registry that mirrors several upstream
//     registries under their host names (docker.io/library/nginx).
//   - Extract: unpack an image's layers into a directory (tests, and seeing
//     what an image holds).
//
// Only what the lab needs is implemented: gzip layers, one platform per
// manifest, plain-HTTP registries without authentication.
package oci

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// Media types and annotations this package writes.
const (
	MediaTypeManifest  = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeIndex     = "application/vnd.oci.image.index.v1+json"
	MediaTypeConfig    = "application/vnd.oci.image.config.v1+json"
	MediaTypeLayerGzip = "application/vnd.oci.image.layer.v1.tar+gzip"
	MediaTypeLayer     = "application/vnd.oci.image.layer.v1.tar"

	// Docker's equivalents, accepted when reading archives made by others.
	mediaTypeDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	mediaTypeDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"

	// AnnotationRefName is the OCI annotation naming an image in an index
	// (containerd writes the tag there).
	AnnotationRefName = "org.opencontainers.image.ref.name"
	// AnnotationImageName is containerd's annotation carrying the full image
	// name; `ctr images import` names the image after it.
	AnnotationImageName = "io.containerd.image.name"

	layoutVersion = "1.0.0"
)

// Digest is a content digest, "sha256:<64 hex digits>".
type Digest string

// DigestOf returns the sha256 digest of b.
func DigestOf(b []byte) Digest {
	sum := sha256.Sum256(b)
	return Digest("sha256:" + hex.EncodeToString(sum[:]))
}

// Hex returns the hex part of the digest.
func (d Digest) Hex() string { return strings.TrimPrefix(string(d), "sha256:") }

// Validate reports whether d is a well-formed sha256 digest.
func (d Digest) Validate() error {
	h, ok := strings.CutPrefix(string(d), "sha256:")
	if !ok || len(h) != 64 {
		return fmt.Errorf("invalid digest %q: want sha256:<64 hex digits>", string(d))
	}
	for _, c := range h {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fmt.Errorf("invalid digest %q: want lower-case hex", string(d))
		}
	}
	return nil
}

// Platform is the platform an image runs on.
type Platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Variant      string `json:"variant,omitempty"`
}

// Descriptor points at a blob.
type Descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      Digest            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *Platform         `json:"platform,omitempty"`
}

// Manifest is an OCI image manifest.
type Manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        Descriptor   `json:"config"`
	Layers        []Descriptor `json:"layers"`
}

// Index is an OCI image index (index.json of an image layout).
type Index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType,omitempty"`
	Manifests     []Descriptor `json:"manifests"`
}

// Config is what a container of the image runs with.
type Config struct {
	User         string
	ExposedPorts []string // "80", "53/udp"; without a protocol, tcp
	Env          []string // "PATH=/usr/bin:/bin"
	Entrypoint   []string
	Cmd          []string
	WorkingDir   string
	Labels       map[string]string
	StopSignal   string // "SIGQUIT"
}

// imageConfig is the image configuration blob (OCI image-spec config.md).
type imageConfig struct {
	Created      string          `json:"created"`
	Architecture string          `json:"architecture"`
	OS           string          `json:"os"`
	Variant      string          `json:"variant,omitempty"`
	Config       containerConfig `json:"config"`
	RootFS       rootFS          `json:"rootfs"`
	History      []history       `json:"history,omitempty"`
}

type containerConfig struct {
	User         string              `json:"User,omitempty"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts,omitempty"`
	Env          []string            `json:"Env,omitempty"`
	Entrypoint   []string            `json:"Entrypoint,omitempty"`
	Cmd          []string            `json:"Cmd,omitempty"`
	WorkingDir   string              `json:"WorkingDir,omitempty"`
	Labels       map[string]string   `json:"Labels,omitempty"`
	StopSignal   string              `json:"StopSignal,omitempty"`
}

type rootFS struct {
	Type    string   `json:"type"`
	DiffIDs []Digest `json:"diff_ids"`
}

type history struct {
	Created   string `json:"created"`
	CreatedBy string `json:"created_by,omitempty"`
}

// epoch is the creation time written everywhere: images do not change with
// the day they were built.
const epoch = "1970-01-01T00:00:00Z"

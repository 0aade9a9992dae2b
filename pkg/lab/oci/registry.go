package oci

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
)

// Registry pushes images to a registry over the OCI distribution HTTP API
// (plain HTTP, no authentication: a registry inside the lab). Images are
// pushed into the repository MirrorRepository names, so one registry can
// mirror docker.io, registry.k8s.io and the others at once.
type Registry struct {
	// URL is the registry's base URL, "http://192.168.56.1:5000".
	URL string
	// Client is the HTTP client; nil means http.DefaultClient.
	Client *http.Client

	mu sync.Mutex
	// has remembers, per blob, a repository of this registry that holds it,
	// so the next repository mounts the blob instead of uploading it again.
	has map[Digest]string
}

// PushImage pushes the image, whose blobs are in src, under every name:
// each blob at most once per repository (a HEAD first; then a mount from
// another repository of the registry holding it, or a monolithic POST+PUT
// upload), then the manifest by tag.
func (r *Registry) PushImage(ctx context.Context, src BlobSource, img Image, names ...string) error {
	if len(names) == 0 {
		return fmt.Errorf("push %s: no name to push it under", img.Manifest.Digest)
	}
	manifest, err := readBlob(src, img.Manifest)
	if err != nil {
		return fmt.Errorf("push %s: %w", names[0], err)
	}
	mediaType := img.Manifest.MediaType
	if mediaType == "" {
		mediaType = MediaTypeManifest
	}
	for _, name := range names {
		repo, tag, err := MirrorRepository(name)
		if err != nil {
			return fmt.Errorf("push: %w", err)
		}
		for _, b := range append([]Descriptor{img.Config}, layerDescriptors(img)...) {
			if err := r.pushBlob(ctx, repo, src, b); err != nil {
				return fmt.Errorf("push %s to %s: %w", name, r.URL, err)
			}
		}
		if err := r.putManifest(ctx, repo, tag, mediaType, img.Manifest.Digest, manifest); err != nil {
			return fmt.Errorf("push %s to %s: %w", name, r.URL, err)
		}
	}
	return nil
}

func layerDescriptors(img Image) []Descriptor {
	out := make([]Descriptor, len(img.Layers))
	for i, l := range img.Layers {
		out[i] = l.Descriptor
	}
	return out
}

func (r *Registry) client() *http.Client {
	if r.Client != nil {
		return r.Client
	}
	return http.DefaultClient
}

func (r *Registry) endpoint(p string) string {
	return strings.TrimSuffix(r.URL, "/") + "/v2/" + p
}

func (r *Registry) do(ctx context.Context, method, u string, body io.Reader, size int64, header map[string]string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.ContentLength = size
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	return r.client().Do(req)
}

func (r *Registry) pushBlob(ctx context.Context, repo string, src BlobSource, d Descriptor) error {
	resp, err := r.do(ctx, http.MethodHead, r.endpoint(repo+"/blobs/"+string(d.Digest)), nil, 0, nil)
	if err != nil {
		return fmt.Errorf("check blob %s: %w", d.Digest, err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		r.remember(d.Digest, repo)
		return nil
	}
	if resp.StatusCode != http.StatusNotFound {
		return fmt.Errorf("check blob %s: %s", d.Digest, resp.Status)
	}

	start := r.endpoint(repo + "/blobs/uploads/")
	if from := r.holder(d.Digest); from != "" && from != repo {
		start += "?" + url.Values{"mount": {string(d.Digest)}, "from": {from}}.Encode()
	}
	resp, err = r.do(ctx, http.MethodPost, start, nil, 0, nil)
	if err != nil {
		return fmt.Errorf("start upload of blob %s: %w", d.Digest, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusCreated: // mounted from another repository
		r.remember(d.Digest, repo)
		return nil
	case http.StatusAccepted:
	default:
		return fmt.Errorf("start upload of blob %s: %w", d.Digest, registryError(resp))
	}
	loc, err := resp.Location()
	if err != nil {
		return fmt.Errorf("start upload of blob %s: no upload location: %w", d.Digest, err)
	}
	q := loc.Query()
	q.Set("digest", string(d.Digest))
	loc.RawQuery = q.Encode()

	blob, err := src.Open(d.Digest)
	if err != nil {
		return err
	}
	defer blob.Close()
	put, err := r.do(ctx, http.MethodPut, loc.String(), newVerifyReader(blob, d), d.Size,
		map[string]string{"Content-Type": "application/octet-stream"})
	if err != nil {
		return fmt.Errorf("upload blob %s: %w", d.Digest, err)
	}
	defer put.Body.Close()
	if put.StatusCode != http.StatusCreated {
		return fmt.Errorf("upload blob %s: %w", d.Digest, registryError(put))
	}
	r.remember(d.Digest, repo)
	return nil
}

func (r *Registry) putManifest(ctx context.Context, repo, tag, mediaType string, d Digest, body []byte) error {
	resp, err := r.do(ctx, http.MethodPut, r.endpoint(repo+"/manifests/"+tag), bytes.NewReader(body), int64(len(body)),
		map[string]string{"Content-Type": mediaType})
	if err != nil {
		return fmt.Errorf("put manifest %s:%s: %w", repo, tag, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("put manifest %s:%s: %w", repo, tag, registryError(resp))
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != "" && Digest(got) != d {
		return fmt.Errorf("put manifest %s:%s: the registry stored digest %s, want %s", repo, tag, got, d)
	}
	return nil
}

func (r *Registry) remember(d Digest, repo string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.has == nil {
		r.has = map[Digest]string{}
	}
	r.has[d] = repo
}

func (r *Registry) holder(d Digest) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.has[d]
}

// registryError turns an unexpected response into an error carrying the
// status and the registry's error codes (distribution spec's error body).
func registryError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<10))
	var body struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal(b, &body) == nil && len(body.Errors) > 0 {
		var parts []string
		for _, e := range body.Errors {
			parts = append(parts, e.Code+": "+e.Message)
		}
		return fmt.Errorf("%s: %s", resp.Status, strings.Join(parts, "; "))
	}
	if s := strings.TrimSpace(string(b)); s != "" {
		return fmt.Errorf("%s: %s", resp.Status, s)
	}
	return fmt.Errorf("%s", resp.Status)
}

// PushArchive pushes every image of the OCI archive at p (for linux/amd64)
// under the names its index gives it, and returns them. An image without a
// name is an error: a registry keeps images by name.
func (r *Registry) PushArchive(ctx context.Context, p string) ([]Named, error) {
	a, err := OpenArchive(p)
	if err != nil {
		return nil, fmt.Errorf("push archive: %w", err)
	}
	defer a.Close()
	images, err := a.Images(Platform{})
	if err != nil {
		return nil, fmt.Errorf("push archive %s: %w", p, err)
	}
	for _, n := range images {
		if len(n.Names) == 0 {
			return nil, fmt.Errorf("push archive %s: image %s has no name (annotation %s)", p, n.Image.Manifest.Digest, AnnotationImageName)
		}
		if err := r.PushImage(ctx, a, n.Image, n.Names...); err != nil {
			return nil, fmt.Errorf("push archive %s: %w", p, err)
		}
	}
	return images, nil
}

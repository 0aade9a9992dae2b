package oci

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// fakeRegistry implements the part of the OCI distribution API a push uses,
// and records what it was asked: blob HEAD and GET, upload POST (with
// cross-repository mount) and monolithic PUT, manifest PUT and GET.
type fakeRegistry struct {
	t  *testing.T
	mu sync.Mutex
	// blobs per repository, manifests per "repo:tag"
	blobs     map[string]map[Digest][]byte
	manifests map[string]fakeManifest
	uploads   map[string]string // upload id -> repository
	requests  []string          // "METHOD path"
	uploaded  []string          // "repo@digest" sent by PUT upload
	mounted   []string          // "repo@digest" mounted from another repository
	// failManifest makes manifest PUTs fail with a registry error.
	failManifest bool
}

type fakeManifest struct {
	mediaType string
	body      []byte
}

func newFakeRegistry(t *testing.T) *fakeRegistry {
	return &fakeRegistry{t: t, blobs: map[string]map[Digest][]byte{}, manifests: map[string]fakeManifest{}, uploads: map[string]string{}}
}

func (f *fakeRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, r.Method+" "+r.URL.Path)
	p, ok := strings.CutPrefix(r.URL.Path, "/v2/")
	if !ok {
		http.NotFound(w, r)
		return
	}
	switch {
	case r.Method == http.MethodPost && strings.HasSuffix(p, "/blobs/uploads/"):
		repo := strings.TrimSuffix(p, "/blobs/uploads/")
		if d := Digest(r.URL.Query().Get("mount")); d != "" {
			if b, ok := f.blobs[r.URL.Query().Get("from")][d]; ok {
				f.put(repo, d, b)
				f.mounted = append(f.mounted, repo+"@"+string(d))
				w.WriteHeader(http.StatusCreated)
				return
			}
		}
		id := randomID()
		f.uploads[id] = repo
		// A relative location, as distribution sends; with a query of its own.
		w.Header().Set("Location", "/v2/"+repo+"/blobs/uploads/"+id+"?_state=abc")
		w.WriteHeader(http.StatusAccepted)
	case r.Method == http.MethodPut && strings.Contains(p, "/blobs/uploads/"):
		repo, id, _ := strings.Cut(p, "/blobs/uploads/")
		if f.uploads[id] != repo || r.URL.Query().Get("_state") != "abc" {
			writeRegistryError(w, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN", "no such upload")
			return
		}
		delete(f.uploads, id)
		b, _ := io.ReadAll(r.Body)
		d := Digest(r.URL.Query().Get("digest"))
		if DigestOf(b) != d || r.ContentLength != int64(len(b)) {
			writeRegistryError(w, http.StatusBadRequest, "DIGEST_INVALID", "digest or length mismatch")
			return
		}
		f.put(repo, d, b)
		f.uploaded = append(f.uploaded, repo+"@"+string(d))
		w.WriteHeader(http.StatusCreated)
	case strings.Contains(p, "/blobs/"):
		repo, d, _ := strings.Cut(p, "/blobs/")
		b, ok := f.blobs[repo][Digest(d)]
		if !ok {
			writeRegistryError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown")
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		if r.Method == http.MethodGet {
			w.Write(b)
		}
	case strings.Contains(p, "/manifests/"):
		repo, tag, _ := strings.Cut(p, "/manifests/")
		key := repo + ":" + tag
		switch r.Method {
		case http.MethodPut:
			if f.failManifest {
				writeRegistryError(w, http.StatusBadRequest, "MANIFEST_INVALID", "manifest invalid")
				return
			}
			b, _ := io.ReadAll(r.Body)
			f.manifests[key] = fakeManifest{mediaType: r.Header.Get("Content-Type"), body: b}
			w.Header().Set("Docker-Content-Digest", string(DigestOf(b)))
			w.WriteHeader(http.StatusCreated)
		case http.MethodGet:
			m, ok := f.manifests[key]
			if !ok {
				writeRegistryError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest unknown")
				return
			}
			w.Header().Set("Content-Type", m.mediaType)
			w.Write(m.body)
		}
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeRegistry) put(repo string, d Digest, b []byte) {
	if f.blobs[repo] == nil {
		f.blobs[repo] = map[Digest][]byte{}
	}
	f.blobs[repo][d] = b
}

func writeRegistryError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"errors":[{"code":%q,"message":%q}]}`, code, msg)
}

func randomID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

package pki

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func newBundle(t *testing.T) *Bundle {
	t.Helper()
	b, err := Create(filepath.Join(t.TempDir(), "pki"), DefaultSpec())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := parseCert(data)
	if err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	return c
}

func pool(t *testing.T, b *Bundle) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	p.AddCert(readCert(t, b.Path(CACert)))
	return p
}

func verify(c *x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage, name string) error {
	_, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}, DNSName: name})
	return err
}

func checkSubject(t *testing.T, what string, c *x509.Certificate, cn string, orgs ...string) {
	t.Helper()
	if c.Subject.CommonName != cn || !slices.Equal(c.Subject.Organization, orgs) {
		t.Errorf("%s: subject CN=%q O=%q, want CN=%q O=%q", what, c.Subject.CommonName, c.Subject.Organization, cn, orgs)
	}
}

func TestCAAndFileModes(t *testing.T) {
	b := newBundle(t)
	ca := readCert(t, b.Path(CACert))
	if !ca.IsCA || ca.Subject.CommonName != CACommonName || ca.CheckSignatureFrom(ca) != nil {
		t.Errorf("CA: IsCA=%v CN=%q, want a self-signed CA named %q", ca.IsCA, ca.Subject.CommonName, CACommonName)
	}
	if life := ca.NotAfter.Sub(ca.NotBefore); life < 9*365*24*time.Hour {
		t.Errorf("CA lifetime %v, want about 10 years", life)
	}
	if !bytes.Equal(b.CACertPEM(), mustRead(t, b.Path(CACert))) {
		t.Error("CACertPEM differs from ca.crt")
	}
	modes := map[string]os.FileMode{
		CACert: 0o644, CAKey: 0o600, APIServerCert: 0o644, APIServerKey: 0o600,
		APIServerKubeletCert: 0o644, APIServerKubeletKey: 0o600,
		ServiceAccountKey: 0o600, ServiceAccountPub: 0o644,
		AdminKubeconfig: 0o600, ControllerManagerConfig: 0o600, SchedulerKubeconfig: 0o600,
	}
	for f, want := range modes {
		fi, err := os.Stat(b.Path(f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", f, fi.Mode().Perm(), want)
		}
	}
	entries, err := os.ReadDir(b.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(modes) {
		t.Errorf("directory holds %d files, want %d (no temporary files left)", len(entries), len(modes))
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestAPIServerServingCert(t *testing.T) {
	b := newBundle(t)
	c := readCert(t, b.Path(APIServerCert))
	roots := pool(t, b)
	spec := DefaultSpec()
	for _, n := range spec.APIServerDNSNames {
		if err := verify(c, roots, x509.ExtKeyUsageServerAuth, n); err != nil {
			t.Errorf("verify for %s: %v", n, err)
		}
	}
	for _, ip := range spec.APIServerIPs {
		if err := verify(c, roots, x509.ExtKeyUsageServerAuth, ip.String()); err != nil {
			t.Errorf("verify for %s: %v", ip, err)
		}
	}
	for _, bad := range []string{"example.com", "192.168.56.11"} {
		if verify(c, roots, x509.ExtKeyUsageServerAuth, bad) == nil {
			t.Errorf("verified for unlisted name %s", bad)
		}
	}
	if verify(c, roots, x509.ExtKeyUsageClientAuth, "") == nil {
		t.Error("serving certificate verified for client auth")
	}
}

func TestClientCertsAndKeyPairs(t *testing.T) {
	b := newBundle(t)
	c := readCert(t, b.Path(APIServerKubeletCert))
	checkSubject(t, "kubelet client", c, "kube-apiserver-kubelet-client", "system:masters")
	if err := verify(c, pool(t, b), x509.ExtKeyUsageClientAuth, ""); err != nil {
		t.Errorf("kubelet client cert: %v", err)
	}
	if verify(c, pool(t, b), x509.ExtKeyUsageServerAuth, "") == nil {
		t.Error("client certificate verified for server auth")
	}
	for _, pair := range [][2]string{{CACert, CAKey}, {APIServerCert, APIServerKey}, {APIServerKubeletCert, APIServerKubeletKey}} {
		if _, err := tls.LoadX509KeyPair(b.Path(pair[0]), b.Path(pair[1])); err != nil {
			t.Errorf("key pair %s/%s: %v", pair[0], pair[1], err)
		}
	}
}

func TestNodeServingCert(t *testing.T) {
	b := newBundle(t)
	ip := netip.MustParseAddr("192.168.56.11")
	certFile, keyFile, err := b.NodeServingCert("node-1", []netip.Addr{ip})
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(certFile) != "kubelet-node-1.crt" || filepath.Base(keyFile) != "kubelet-node-1.key" {
		t.Errorf("files %s, %s", certFile, keyFile)
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Error(err)
	}
	c := readCert(t, certFile)
	checkSubject(t, "kubelet serving", c, "system:node:node-1", "system:nodes")
	for _, n := range []string{"node-1", "192.168.56.11"} {
		if err := verify(c, pool(t, b), x509.ExtKeyUsageServerAuth, n); err != nil {
			t.Errorf("verify for %s: %v", n, err)
		}
	}
	if verify(c, pool(t, b), x509.ExtKeyUsageServerAuth, "192.168.56.12") == nil {
		t.Error("node-1 certificate verified for node-2's address")
	}
	for _, bad := range []string{"", "../etc", "Node_1", "a/b"} {
		if _, _, err := b.NodeServingCert(bad, []netip.Addr{ip}); err == nil {
			t.Errorf("node name %q accepted", bad)
		}
	}
	if _, _, err := b.NodeServingCert("node-2", []netip.Addr{{}}); err == nil {
		t.Error("zero address accepted")
	}
}

// kubeconfigField is a deliberately independent, minimal reading of a
// kubeconfig: the value of the one line "key: value".
func kubeconfigField(t *testing.T, data []byte, key string) string {
	t.Helper()
	var found []string
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), key+": "); ok {
			found = append(found, v)
		}
	}
	if len(found) != 1 {
		t.Fatalf("kubeconfig has %d %q lines, want 1:\n%s", len(found), key, data)
	}
	return found[0]
}

func decodeField(t *testing.T, data []byte, key string) []byte {
	t.Helper()
	dec, err := base64.StdEncoding.DecodeString(kubeconfigField(t, data, key))
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return dec
}

func TestKubeconfigs(t *testing.T) {
	b := newBundle(t)
	node, err := b.NodeKubeconfig("node-1")
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(node) != "node-node-1.conf" {
		t.Errorf("path %s", node)
	}
	for _, tc := range []struct {
		path, cn string
		orgs     []string
	}{
		{b.Path(AdminKubeconfig), "kubernetes-admin", []string{"system:masters"}},
		{b.Path(ControllerManagerConfig), "system:kube-controller-manager", nil},
		{b.Path(SchedulerKubeconfig), "system:kube-scheduler", nil},
		{node, "system:node:node-1", []string{"system:nodes"}},
	} {
		data := mustRead(t, tc.path)
		for _, want := range []string{"apiVersion: v1\n", "kind: Config\n", "current-context: podnet-lab\n"} {
			if !bytes.Contains(data, []byte(want)) {
				t.Errorf("%s: missing %q", tc.path, want)
			}
		}
		if got := kubeconfigField(t, data, "server"); got != `"https://192.168.56.10:6443"` {
			t.Errorf("%s: server %s", tc.path, got)
		}
		if ca := decodeField(t, data, "certificate-authority-data"); !bytes.Equal(ca, mustRead(t, b.Path(CACert))) {
			t.Errorf("%s: embedded CA is not ca.crt", tc.path)
		}
		certPEM := decodeField(t, data, "client-certificate-data")
		keyPEM := decodeField(t, data, "client-key-data")
		if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
			t.Errorf("%s: embedded key pair: %v", tc.path, err)
		}
		c, err := parseCert(certPEM)
		if err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		checkSubject(t, tc.path, c, tc.cn, tc.orgs...)
		if err := verify(c, pool(t, b), x509.ExtKeyUsageClientAuth, ""); err != nil {
			t.Errorf("%s: client cert: %v", tc.path, err)
		}
	}
	if _, err := b.NodeKubeconfig("bad/name"); err == nil {
		t.Error("bad node name accepted")
	}
}

func TestServiceAccountKeys(t *testing.T) {
	b := newBundle(t)
	block, _ := pem.Decode(mustRead(t, b.Path(ServiceAccountKey)))
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatal("sa.key is not a PKCS#8 PEM")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	priv, ok := k.(*rsa.PrivateKey)
	if !ok || priv.N.BitLen() != 2048 {
		t.Fatalf("sa.key: %T, want RSA 2048", k)
	}
	block, _ = pem.Decode(mustRead(t, b.Path(ServiceAccountPub)))
	if block == nil || block.Type != "PUBLIC KEY" {
		t.Fatal("sa.pub is not a PKIX PEM")
	}
	p, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("token"))
	sig, err := rsa.SignPKCS1v15(rand.Reader, priv, crypto.SHA256, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	if err := rsa.VerifyPKCS1v15(p.(*rsa.PublicKey), crypto.SHA256, digest[:], sig); err != nil {
		t.Errorf("sa.pub does not verify sa.key's signature: %v", err)
	}
}

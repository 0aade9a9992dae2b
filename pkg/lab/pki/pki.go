// Package pki owns the lab's public-key infrastructure: one self-signed CA,
// the certificates and keys the control plane serves and authenticates with,
// the service-account signing key pair, and the kubeconfig files every lab
// component uses to reach kube-apiserver. It writes all of them into one
// directory and nothing outside it.
//
// Create is idempotent. A directory that already holds a valid CA keeps it,
// and every certificate, key and kubeconfig that still chains to that CA,
// carries the identity that is asked for and has more than RenewBefore of
// life left is kept as it is; anything else (missing, corrupt, expiring,
// issued for other names or addresses) is issued afresh and replaced
// atomically. So `podnetctl lab up` after a `lab down` that kept its state
// brings back the same trust roots, and clients holding old kubeconfigs keep
// working. A CA that is half there (one of ca.crt / ca.key missing), corrupt
// or expired is an error, never silently replaced: remove the directory to
// start over.
//
// Keys are ECDSA P-256 (PKCS#8 PEM), except the service-account key, which
// is RSA 2048 (PKCS#8 private, PKIX public) for the widest compatibility.
// Private keys and kubeconfigs (which embed one) are mode 0600, certificates
// and sa.pub 0644.
package pki

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// Names of the files Create writes into the directory (see Bundle.Path).
const (
	CACert                  = "ca.crt"
	CAKey                   = "ca.key"
	APIServerCert           = "apiserver.crt"
	APIServerKey            = "apiserver.key"
	APIServerKubeletCert    = "apiserver-kubelet-client.crt"
	APIServerKubeletKey     = "apiserver-kubelet-client.key"
	ServiceAccountKey       = "sa.key"
	ServiceAccountPub       = "sa.pub"
	AdminKubeconfig         = "admin.conf"
	ControllerManagerConfig = "controller-manager.conf"
	SchedulerKubeconfig     = "scheduler.conf"
	nodeKubeconfigPattern   = "node-%s.conf"
	kubeletServingPattern   = "kubelet-%s"
)

// Identities of the certificates, as RBAC sees them.
const (
	CACommonName      = "podnet-lab-ca"
	AdminUser         = "kubernetes-admin"
	MastersGroup      = "system:masters"
	ControllerManager = "system:kube-controller-manager"
	Scheduler         = "system:kube-scheduler"
	KubeletClientUser = "kube-apiserver-kubelet-client"
	NodeUserPrefix    = "system:node:"
	NodesGroup        = "system:nodes"
	// KubeconfigName names the cluster, user and context in every kubeconfig.
	KubeconfigName = "podnet-lab"
)

// Lifetimes.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	CertValidity = 365 * 24 * time.Hour
	// RenewBefore is how much life a kept certificate must have left.
	RenewBefore = 30 * 24 * time.Hour
)

// Spec says where the API server is and what it must be reachable as.
type Spec struct {
	// Server is the URL every kubeconfig points at, e.g. https://192.168.56.10:6443.
	Server string
	// APIServerDNSNames and APIServerIPs are the SANs of the API server's
	// serving certificate. Include the first address of the Service CIDR
	// (see FirstServiceIP) so in-cluster clients can verify it.
	APIServerDNSNames []string
	APIServerIPs      []netip.Addr
}

// DefaultSpec is the lab of ARCHITECTURE.md: the API server on the
// controlplane namespace at 192.168.56.10:6443 and Service CIDR 10.96.0.0/12.
func DefaultSpec() Spec {
	return Spec{
		Server: "https://192.168.56.10:6443",
		APIServerDNSNames: []string{
			"kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local", "localhost", "controlplane",
		},
		APIServerIPs: []netip.Addr{
			netip.MustParseAddr("10.96.0.1"),
			netip.MustParseAddr("192.168.56.10"),
			netip.MustParseAddr("127.0.0.1"),
		},
	}
}

// FirstServiceIP is the address the "kubernetes" Service gets in a Service
// CIDR: the first one after the network address (10.96.0.1 for 10.96.0.0/12).
func FirstServiceIP(cidr string) (netip.Addr, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("parse service CIDR %q: %w", cidr, err)
	}
	ip := p.Masked().Addr().Next()
	if !ip.IsValid() || !p.Contains(ip) {
		return netip.Addr{}, fmt.Errorf("service CIDR %s: too small for a first address", p)
	}
	return ip, nil
}

func (s Spec) validate() error {
	u, err := url.Parse(s.Server)
	if err != nil {
		return fmt.Errorf("parse server URL %q: %w", s.Server, err)
	}
	if u.Scheme != "https" || u.Host == "" || u.Path != "" && u.Path != "/" {
		return fmt.Errorf("server URL %q: want https://host:port", s.Server)
	}
	if len(s.APIServerDNSNames) == 0 && len(s.APIServerIPs) == 0 {
		return fmt.Errorf("API server certificate: no DNS names or IPs given")
	}
	for _, n := range s.APIServerDNSNames {
		if !dnsName.MatchString(n) || len(n) > 253 {
			return fmt.Errorf("API server DNS name %q: not a DNS-1123 subdomain", n)
		}
	}
	for _, ip := range s.APIServerIPs {
		if !ip.IsValid() {
			return fmt.Errorf("API server IP: invalid (zero) address")
		}
	}
	return nil
}

// dnsName is a lowercase RFC 1123 subdomain, which is also what Kubernetes
// accepts as a node name; it never contains "/" so it is safe in a file name.
var dnsName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

func validNodeName(name string) error {
	if len(name) > 253 || !dnsName.MatchString(name) {
		return fmt.Errorf("node name %q: not a DNS-1123 subdomain", name)
	}
	return nil
}

// Bundle is a lab PKI directory with its CA loaded, ready to issue more.
// Its methods only write files of their own names, so they may be called
// concurrently for different nodes.
type Bundle struct {
	// Dir is the directory holding every file.
	Dir string

	spec  Spec
	ca    *x509.Certificate
	caPEM []byte
	caKey crypto.Signer
	now   func() time.Time
}

// Create makes dir (0700) if needed and fills it with the CA, the API
// server's serving and kubelet-client certificates, the service-account key
// pair and the admin, controller-manager and scheduler kubeconfigs, reusing
// whatever valid files are already there (see the package comment).
func Create(dir string, spec Spec) (*Bundle, error) {
	return create(dir, spec, time.Now)
}

func create(dir string, spec Spec, now func() time.Time) (*Bundle, error) {
	if err := spec.validate(); err != nil {
		return nil, fmt.Errorf("lab PKI spec: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create PKI directory %s: %w", dir, err)
	}
	b := &Bundle{Dir: dir, spec: spec, now: now}
	if err := b.loadOrCreateCA(); err != nil {
		return nil, err
	}
	if err := b.ensureServiceAccountKey(); err != nil {
		return nil, err
	}
	leaves := []leaf{
		{base: "apiserver", cn: "kube-apiserver", usage: x509.ExtKeyUsageServerAuth,
			dnsNames: spec.APIServerDNSNames, ips: spec.APIServerIPs},
		{base: "apiserver-kubelet-client", cn: KubeletClientUser, orgs: []string{MastersGroup},
			usage: x509.ExtKeyUsageClientAuth},
	}
	for _, l := range leaves {
		if _, _, err := b.ensureCertFiles(l); err != nil {
			return nil, err
		}
	}
	confs := []struct {
		file, cn string
		orgs     []string
	}{
		{AdminKubeconfig, AdminUser, []string{MastersGroup}},
		{ControllerManagerConfig, ControllerManager, nil},
		{SchedulerKubeconfig, Scheduler, nil},
	}
	for _, c := range confs {
		if _, err := b.ensureKubeconfig(c.file, c.cn, c.orgs); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// Path is the full path of a file in the bundle, e.g. b.Path(pki.CACert).
func (b *Bundle) Path(file string) string { return filepath.Join(b.Dir, file) }

// CACertPEM is the CA certificate, PEM encoded (for clients that embed it).
func (b *Bundle) CACertPEM() []byte { return append([]byte(nil), b.caPEM...) }

// NodeKubeconfig writes (or keeps) node-<name>.conf, authenticating as
// system:node:<name> in group system:nodes, and returns its path.
func (b *Bundle) NodeKubeconfig(name string) (string, error) {
	if err := validNodeName(name); err != nil {
		return "", fmt.Errorf("node kubeconfig: %w", err)
	}
	return b.ensureKubeconfig(fmt.Sprintf(nodeKubeconfigPattern, name), NodeUserPrefix+name, []string{NodesGroup})
}

// NodeServingCert writes (or keeps) kubelet-<name>.crt/.key, the serving
// certificate of the node's kubelet API, valid for the DNS name name
// and the given addresses, and returns both paths. kube-apiserver verifies
// it with --kubelet-certificate-authority=ca.crt.
func (b *Bundle) NodeServingCert(name string, ips []netip.Addr) (certFile, keyFile string, err error) {
	if err := validNodeName(name); err != nil {
		return "", "", fmt.Errorf("kubelet serving certificate: %w", err)
	}
	for _, ip := range ips {
		if !ip.IsValid() {
			return "", "", fmt.Errorf("kubelet serving certificate for %s: invalid (zero) address", name)
		}
	}
	return b.ensureCertFiles(leaf{
		base: fmt.Sprintf(kubeletServingPattern, name), cn: NodeUserPrefix + name, orgs: []string{NodesGroup},
		usage: x509.ExtKeyUsageServerAuth, dnsNames: []string{name}, ips: ips,
	})
}

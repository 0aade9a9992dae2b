package pki

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// leaf is one certificate the CA issues: who it names and what it is for.
type leaf struct {
	base     string // file name without .crt/.key; "" for kubeconfig-embedded ones
	cn       string
	orgs     []string
	usage    x509.ExtKeyUsage // ServerAuth or ClientAuth
	dnsNames []string
	ips      []netip.Addr
}

// ensureCertFiles keeps <base>.crt/.key when they still fit l, or issues a
// new pair, and returns their paths.
func (b *Bundle) ensureCertFiles(l leaf) (certFile, keyFile string, err error) {
	certFile, keyFile = b.Path(l.base+".crt"), b.Path(l.base+".key")
	certPEM, err := readOptional(certFile)
	if err != nil {
		return "", "", err
	}
	keyPEM, err := readOptional(keyFile)
	if err != nil {
		return "", "", err
	}
	if b.fits(certPEM, keyPEM, l) {
		if err := keepFile(keyFile, keyMode); err != nil {
			return "", "", err
		}
		return certFile, keyFile, keepFile(certFile, certMode)
	}
	certPEM, keyPEM, err = b.issue(l)
	if err != nil {
		return "", "", fmt.Errorf("issue %s: %w", certFile, err)
	}
	// Key first: a crash between the two leaves a mismatched pair, which
	// the next run notices and reissues.
	if err := writeFile(keyFile, keyPEM, keyMode); err != nil {
		return "", "", err
	}
	if err := writeFile(certFile, certPEM, certMode); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// issue makes a fresh key and a certificate for it signed by the CA.
func (b *Bundle) issue(l leaf) (certPEM, keyPEM []byte, err error) {
	key, err := newECKey()
	if err != nil {
		return nil, nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	now := b.now()
	notAfter := now.Add(CertValidity)
	if notAfter.After(b.ca.NotAfter) {
		notAfter = b.ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: l.cn, Organization: l.orgs},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{l.usage},
		BasicConstraintsValid: true,
		DNSNames:              l.dnsNames,
		IPAddresses:           netIPs(l.ips),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, b.ca, key.Public(), b.caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("sign certificate for %q: %w", l.cn, err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return encodeCert(der), keyPEM, nil
}

// fits reports whether an existing pair can be kept for l: both parse, the
// key is the certificate's, it was signed by the current CA, it names
// exactly what l asks for, and it has more than RenewBefore left.
func (b *Bundle) fits(certPEM, keyPEM []byte, l leaf) bool {
	if certPEM == nil || keyPEM == nil {
		return false
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return false
	}
	key, err := parseKey(keyPEM)
	if err != nil || !samePublicKey(cert.PublicKey, key) {
		return false
	}
	return b.certFits(cert, l)
}

func (b *Bundle) certFits(cert *x509.Certificate, l leaf) bool {
	if cert.CheckSignatureFrom(b.ca) != nil {
		return false
	}
	now := b.now()
	if now.Before(cert.NotBefore) || now.Add(RenewBefore).After(cert.NotAfter) {
		return false
	}
	if cert.Subject.CommonName != l.cn || !sameSet(cert.Subject.Organization, l.orgs) {
		return false
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{l.usage}) {
		return false
	}
	if !sameSet(cert.DNSNames, l.dnsNames) {
		return false
	}
	var have []netip.Addr
	for _, ip := range cert.IPAddresses {
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			return false
		}
		have = append(have, a.Unmap())
	}
	want := make([]netip.Addr, len(l.ips))
	for i, ip := range l.ips {
		want[i] = ip.Unmap()
	}
	return sameSet(have, want)
}

func netIPs(addrs []netip.Addr) []net.IP {
	if len(addrs) == 0 {
		return nil
	}
	out := make([]net.IP, len(addrs))
	for i, a := range addrs {
		out[i] = net.IP(a.Unmap().AsSlice())
	}
	return out
}

// sameSet compares two lists ignoring order and duplicates.
func sameSet[T comparable](a, b []T) bool {
	in := func(x T, s []T) bool { return slices.Contains(s, x) }
	for _, x := range a {
		if !in(x, b) {
			return false
		}
	}
	for _, x := range b {
		if !in(x, a) {
			return false
		}
	}
	return true
}

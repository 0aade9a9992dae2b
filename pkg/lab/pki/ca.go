package pki

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"time"
)

// clockSkew backdates NotBefore so a certificate is usable at once even if
// a clock lags a little.
const clockSkew = 5 * time.Minute

// loadOrCreateCA keeps a valid CA in the directory or, when there is none
// at all, creates one. Anything in between is an error: replacing a CA
// silently would break every kubeconfig already handed out.
func (b *Bundle) loadOrCreateCA() error {
	certPath, keyPath := b.Path(CACert), b.Path(CAKey)
	certPEM, err := readOptional(certPath)
	if err != nil {
		return err
	}
	keyPEM, err := readOptional(keyPath)
	if err != nil {
		return err
	}
	switch {
	case certPEM == nil && keyPEM == nil:
		return b.createCA()
	case certPEM == nil:
		return fmt.Errorf("load CA: %s exists without %s; remove %s to start over", keyPath, certPath, b.Dir)
	case keyPEM == nil:
		return fmt.Errorf("load CA: %s exists without %s; remove %s to start over", certPath, keyPath, b.Dir)
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return fmt.Errorf("load CA certificate %s: %w", certPath, err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return fmt.Errorf("load CA key %s: %w", keyPath, err)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("load CA certificate %s: not a CA certificate", certPath)
	}
	if !samePublicKey(cert.PublicKey, key) {
		return fmt.Errorf("load CA: %s does not match %s", keyPath, certPath)
	}
	if now := b.now(); now.After(cert.NotAfter) || now.Before(cert.NotBefore) {
		return fmt.Errorf("load CA certificate %s: not valid now (valid %s to %s); remove %s to start over",
			certPath, cert.NotBefore.Format(time.RFC3339), cert.NotAfter.Format(time.RFC3339), b.Dir)
	}
	if err := keepFile(keyPath, keyMode); err != nil {
		return err
	}
	if err := keepFile(certPath, certMode); err != nil {
		return err
	}
	b.ca, b.caKey, b.caPEM = cert, key, certPEM
	return nil
}

func (b *Bundle) createCA() error {
	key, err := newECKey()
	if err != nil {
		return fmt.Errorf("create CA: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return fmt.Errorf("create CA: %w", err)
	}
	now := b.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: CACommonName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("create CA certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return fmt.Errorf("create CA: %w", err)
	}
	// The key goes first: a crash after it leaves "key without cert",
	// which the next run reports instead of trusting a CA it cannot use.
	if err := writeFile(b.Path(CAKey), keyPEM, keyMode); err != nil {
		return fmt.Errorf("create CA: %w", err)
	}
	certPEM := encodeCert(der)
	if err := writeFile(b.Path(CACert), certPEM, certMode); err != nil {
		return fmt.Errorf("create CA: %w", err)
	}
	b.ca, b.caKey, b.caPEM = cert, key, certPEM
	return nil
}

// newSerial is a random positive 128-bit serial number (RFC 5280 allows up
// to 20 octets).
func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// ensureServiceAccountKey keeps a valid RSA sa.key (creating one if it is
// missing or unusable) and makes sa.pub its public half. The pair is not a
// certificate and does not depend on the CA, so it never expires; replacing
// it invalidates every service-account token already issued.
func (b *Bundle) ensureServiceAccountKey() error {
	keyPath, pubPath := b.Path(ServiceAccountKey), b.Path(ServiceAccountPub)
	keyPEM, err := readOptional(keyPath)
	if err != nil {
		return err
	}
	var key *rsa.PrivateKey
	if keyPEM != nil {
		if k, err := parseKey(keyPEM); err == nil {
			if rk, ok := k.(*rsa.PrivateKey); ok && rk.N.BitLen() >= 2048 && rk.Validate() == nil {
				key = rk
			}
		}
	}
	if key != nil {
		if err := keepFile(keyPath, keyMode); err != nil {
			return err
		}
	} else {
		if key, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			return fmt.Errorf("generate service-account key %s: %w", keyPath, err)
		}
		if keyPEM, err = encodeKey(key); err != nil {
			return fmt.Errorf("service-account key %s: %w", keyPath, err)
		}
		if err := writeFile(keyPath, keyPEM, keyMode); err != nil {
			return fmt.Errorf("service-account key: %w", err)
		}
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return fmt.Errorf("encode service-account public key %s: %w", pubPath, err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	old, err := readOptional(pubPath)
	if err != nil {
		return err
	}
	if string(old) == string(pubPEM) {
		return keepFile(pubPath, certMode)
	}
	if err := writeFile(pubPath, pubPEM, certMode); err != nil {
		return fmt.Errorf("service-account public key: %w", err)
	}
	return nil
}

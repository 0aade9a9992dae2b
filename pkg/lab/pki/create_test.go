package pki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Tests of what a second Create does with a directory that already exists.

func serial(t *testing.T, path string) *big.Int { t.Helper(); return readCert(t, path).SerialNumber }

func TestCreateReusesEverything(t *testing.T) {
	b := newBundle(t)
	if _, err := b.NodeKubeconfig("node-1"); err != nil {
		t.Fatal(err)
	}
	before := map[string][]byte{}
	for _, f := range []string{CACert, CAKey, APIServerCert, APIServerKey, ServiceAccountKey, ServiceAccountPub, AdminKubeconfig, "node-node-1.conf"} {
		before[f] = mustRead(t, b.Path(f))
	}
	if err := os.Chmod(b.Path(APIServerKey), 0o644); err != nil {
		t.Fatal(err)
	}
	b2, err := Create(b.Dir, DefaultSpec())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b2.NodeKubeconfig("node-1"); err != nil {
		t.Fatal(err)
	}
	for f, data := range before {
		if !bytes.Equal(data, mustRead(t, b.Path(f))) {
			t.Errorf("%s changed on second Create", f)
		}
	}
	if fi, _ := os.Stat(b.Path(APIServerKey)); fi.Mode().Perm() != 0o600 {
		t.Errorf("kept key has mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestCreateReissuesWhatNoLongerFits(t *testing.T) {
	b := newBundle(t)
	caSerial := serial(t, b.Path(CACert))
	apiSerial := serial(t, b.Path(APIServerCert))
	adminCert := decodeField(t, mustRead(t, b.Path(AdminKubeconfig)), "client-certificate-data")

	spec := DefaultSpec()
	spec.APIServerIPs = append(spec.APIServerIPs, netip.MustParseAddr("192.168.56.100"))
	spec.Server = "https://192.168.56.100:6443"
	if _, err := Create(b.Dir, spec); err != nil {
		t.Fatal(err)
	}
	if serial(t, b.Path(CACert)).Cmp(caSerial) != 0 {
		t.Error("CA regenerated")
	}
	if serial(t, b.Path(APIServerCert)).Cmp(apiSerial) == 0 {
		t.Error("apiserver certificate kept although its SANs changed")
	}
	if err := verify(readCert(t, b.Path(APIServerCert)), pool(t, b), x509.ExtKeyUsageServerAuth, "192.168.56.100"); err != nil {
		t.Error(err)
	}
	admin := mustRead(t, b.Path(AdminKubeconfig))
	if got := kubeconfigField(t, admin, "server"); got != `"https://192.168.56.100:6443"` {
		t.Errorf("admin.conf server %s after Server changed", got)
	}
	if !bytes.Equal(decodeField(t, admin, "client-certificate-data"), adminCert) {
		t.Error("admin credential reissued although only the server URL changed")
	}

	// A key that no longer matches its certificate gets a new pair.
	_, otherKey, err := b.NodeServingCert("other", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.Path(APIServerKey), mustRead(t, otherKey), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(b.Dir, spec); err != nil {
		t.Fatal(err)
	}
	if _, err := tls.LoadX509KeyPair(b.Path(APIServerCert), b.Path(APIServerKey)); err != nil {
		t.Errorf("mismatched pair not repaired: %v", err)
	}
}

func TestCreateRenewsExpiringLeaves(t *testing.T) {
	dir := t.TempDir()
	past := func() time.Time { return time.Now().Add(-CertValidity + RenewBefore/2) }
	if _, err := create(dir, DefaultSpec(), past); err != nil {
		t.Fatal(err)
	}
	caSerial := serial(t, filepath.Join(dir, CACert))
	old := readCert(t, filepath.Join(dir, APIServerCert))
	b, err := Create(dir, DefaultSpec())
	if err != nil {
		t.Fatal(err)
	}
	if serial(t, b.Path(CACert)).Cmp(caSerial) != 0 {
		t.Error("CA regenerated")
	}
	renewed := readCert(t, b.Path(APIServerCert))
	if !renewed.NotAfter.After(old.NotAfter) {
		t.Errorf("apiserver certificate not renewed: NotAfter %v", renewed.NotAfter)
	}
	admin := decodeField(t, mustRead(t, b.Path(AdminKubeconfig)), "client-certificate-data")
	if c, _ := parseCert(admin); c == nil || time.Until(c.NotAfter) < RenewBefore {
		t.Error("admin credential not renewed")
	}
}

func TestBrokenCAIsAnError(t *testing.T) {
	for _, tc := range []struct {
		name    string
		breakIt func(b *Bundle) error
		want    string
	}{
		{"key missing", func(b *Bundle) error { return os.Remove(b.Path(CAKey)) }, "ca.key"},
		{"cert missing", func(b *Bundle) error { return os.Remove(b.Path(CACert)) }, "ca.crt"},
		{"cert corrupt", func(b *Bundle) error { return os.WriteFile(b.Path(CACert), []byte("junk"), 0o644) }, "ca.crt"},
		{"key of another cert", func(b *Bundle) error {
			return os.WriteFile(b.Path(CAKey), mustRead(t, b.Path(APIServerKey)), 0o600)
		}, "does not match"},
		{"not a CA", func(b *Bundle) error {
			if err := os.WriteFile(b.Path(CAKey), mustRead(t, b.Path(APIServerKey)), 0o600); err != nil {
				return err
			}
			return os.WriteFile(b.Path(CACert), mustRead(t, b.Path(APIServerCert)), 0o644)
		}, "not a CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBundle(t)
			if err := tc.breakIt(b); err != nil {
				t.Fatal(err)
			}
			_, err := Create(b.Dir, DefaultSpec())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Create: %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

func TestSpecValidation(t *testing.T) {
	for name, mod := range map[string]func(*Spec){
		"http server":  func(s *Spec) { s.Server = "http://192.168.56.10:6443" },
		"no host":      func(s *Spec) { s.Server = "https://" },
		"path":         func(s *Spec) { s.Server = "https://x:6443/api" },
		"bad DNS name": func(s *Spec) { s.APIServerDNSNames = []string{"Bad_Name"} },
		"zero IP":      func(s *Spec) { s.APIServerIPs = []netip.Addr{{}} },
		"no SANs":      func(s *Spec) { s.APIServerDNSNames, s.APIServerIPs = nil, nil },
	} {
		spec := DefaultSpec()
		mod(&spec)
		dir := filepath.Join(t.TempDir(), "pki")
		if _, err := Create(dir, spec); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("%s: directory created for an invalid spec", name)
		}
	}
}

func TestFirstServiceIP(t *testing.T) {
	for cidr, want := range map[string]string{
		"10.96.0.0/12": "10.96.0.1", "10.96.5.7/12": "10.96.0.1", "fd00:10:96::/112": "fd00:10:96::1",
	} {
		got, err := FirstServiceIP(cidr)
		if err != nil || got.String() != want {
			t.Errorf("FirstServiceIP(%s) = %v, %v; want %s", cidr, got, err, want)
		}
	}
	for _, bad := range []string{"10.96.0.1", "10.0.0.0/32", "junk"} {
		if _, err := FirstServiceIP(bad); err == nil {
			t.Errorf("FirstServiceIP(%s) accepted", bad)
		}
	}
	if ip, _ := FirstServiceIP("10.96.0.0/12"); !slices.Contains(DefaultSpec().APIServerIPs, ip) {
		t.Error("DefaultSpec lacks the first Service IP")
	}
}

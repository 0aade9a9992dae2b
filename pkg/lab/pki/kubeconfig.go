package pki

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"text/template"
)

// kubeconfigTemplate is the whole kubeconfig: one cluster, one user, one
// context, all named KubeconfigName, with every credential embedded so the
// file is self-contained. Values are base64 or quoted, so no YAML escaping
// is needed beyond strconv.Quote (a subset of YAML's double-quoted style).
var kubeconfigTemplate = template.Must(template.New("kubeconfig").Funcs(template.FuncMap{
	"quote": strconv.Quote,
	"b64":   base64.StdEncoding.EncodeToString,
}).Parse(`apiVersion: v1
kind: Config
clusters:
- name: {{.Name}}
  cluster:
    server: {{quote .Server}}
    certificate-authority-data: {{b64 .CA}}
users:
- name: {{.Name}}
  user:
    client-certificate-data: {{b64 .Cert}}
    client-key-data: {{b64 .Key}}
contexts:
- name: {{.Name}}
  context:
    cluster: {{.Name}}
    user: {{.Name}}
current-context: {{.Name}}
preferences: {}
`))

type kubeconfig struct {
	Name, Server  string
	CA, Cert, Key []byte // PEM
}

func (k kubeconfig) render() ([]byte, error) {
	var buf bytes.Buffer
	if err := kubeconfigTemplate.Execute(&buf, k); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// embeddedCredentials reads back the client certificate and key of a
// kubeconfig this package wrote. It is no YAML parser: anything it does not
// recognise yields nil, and the caller issues a new credential.
func embeddedCredentials(data []byte) (certPEM, keyPEM []byte) {
	for line := range strings.Lines(string(data)) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		dec, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v))
		if err != nil {
			continue
		}
		switch k {
		case "client-certificate-data":
			certPEM = dec
		case "client-key-data":
			keyPEM = dec
		}
	}
	return certPEM, keyPEM
}

// ensureKubeconfig keeps or writes the kubeconfig file for the client
// identity cn/orgs and returns its path. A still-fitting embedded credential
// is kept; the server URL and CA are always those of the current Spec, so a
// changed Server rewrites the file without reissuing the certificate.
func (b *Bundle) ensureKubeconfig(file, cn string, orgs []string) (string, error) {
	path := b.Path(file)
	l := leaf{cn: cn, orgs: orgs, usage: x509.ExtKeyUsageClientAuth}
	old, err := readOptional(path)
	if err != nil {
		return "", err
	}
	certPEM, keyPEM := embeddedCredentials(old)
	if !b.fits(certPEM, keyPEM, l) {
		if certPEM, keyPEM, err = b.issue(l); err != nil {
			return "", fmt.Errorf("issue client certificate for %s: %w", path, err)
		}
	}
	data, err := kubeconfig{Name: KubeconfigName, Server: b.spec.Server, CA: b.caPEM, Cert: certPEM, Key: keyPEM}.render()
	if err != nil {
		return "", fmt.Errorf("render kubeconfig %s: %w", path, err)
	}
	if bytes.Equal(old, data) {
		return path, keepFile(path, keyMode)
	}
	if err := writeFile(path, data, keyMode); err != nil {
		return "", fmt.Errorf("kubeconfig: %w", err)
	}
	return path, nil
}

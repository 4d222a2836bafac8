package server_test

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/wire"
)

// pkiCA is a CA certificate with its key, for building an organisation's
// PKI around the server's upstream CA.
type pkiCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newPKICA(t *testing.T, name string, parent *pkiCA, maxPathLen int) *pkiCA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{Organization: []string{"Example Org"}, CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLen: maxPathLen, MaxPathLenZero: maxPathLen == 0,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, key.Public(), signerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &pkiCA{cert: c, key: key}
}

// forge signs a leaf for id with the given serial (hex, as the server
// reports serials) and returns it with its chain as a TLS certificate.
func (ca *pkiCA) forge(t *testing.T, id, serialHex string) *tls.Certificate {
	t.Helper()
	serial, ok := new(big.Int).SetString(serialHex, 16)
	if !ok {
		t.Fatalf("serial %q is not hex", serialHex)
	}
	u, _ := url.Parse(id)
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: key}
}

func writePEM(t *testing.T, path, typ string, der ...[]byte) {
	t.Helper()
	var b []byte
	for _, d := range der {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestSiblingCACannotPassAsThisServersCredential: under an upstream CA
// the trust bundle is the organisation's root, so a certificate another
// CA under that root signed verifies as an X509-SVID of the trust domain.
// The agent and admin APIs serve only credentials this server issued as a
// node SVID or admin certificate. A sibling CA that copies the SPIFFE ID
// and the serial of one (serials are in audit records, node listings and
// every TLS 1.2 handshake) must not pass for it: with a node's it would
// renew into a genuine node SVID for a key of its own, with an admin's it
// would run the admin API.
func TestSiblingCACannotPassAsThisServersCredential(t *testing.T) {
	pki := t.TempDir()
	root := newPKICA(t, "Example Root CA", nil, -1)
	upstream := newPKICA(t, "Moatless upstream CA", root, 1)
	sibling := newPKICA(t, "Another team's CA", root, 0)
	keyDER, err := x509.MarshalPKCS8PrivateKey(upstream.key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(pki, "upstream.pem"), "CERTIFICATE", upstream.cert.Raw)
	writePEM(t, filepath.Join(pki, "upstream.key"), "PRIVATE KEY", keyDER)
	writePEM(t, filepath.Join(pki, "root.pem"), "CERTIFICATE", root.cert.Raw)
	const adminID = "spiffe://example.org/ops/alice"
	e := start(t, "", func(s *config.Server) {
		s.UpstreamCA = &config.UpstreamCA{Cert: filepath.Join(pki, "upstream.pem"), Key: filepath.Join(pki, "upstream.key"), Bundle: filepath.Join(pki, "root.pem")}
		s.AdminIDs = []string{adminID}
	})

	n := e.attest("spiffe://example.org/agent/node1")
	akey := newKey(t)
	var ac server.AdminCertResponse
	e.admin("POST", server.PathAdminCerts, server.AdminCertRequest{SPIFFEID: adminID, CSR: csr(t, akey)}, &ac)
	admin := &tls.Certificate{Certificate: ac.SVID.CertChain, PrivateKey: akey}

	// The genuine credentials work: the test would pass vacuously otherwise.
	if st, body := e.do(n.http, "POST", wire.PathRenew, "", wire.RenewRequest{CSR: csr(t, newKey(t))}); st != 200 {
		t.Fatalf("renew with the genuine node SVID: %d %s", st, body)
	}
	if st, body := e.do(e.client(admin), "GET", server.PathAdminCA, "", nil); st != 200 {
		t.Fatalf("admin API with the genuine admin certificate: %d %s", st, body)
	}

	tests := []struct {
		name, method, path string
		cert               *tls.Certificate
		body               any
	}{
		{"node_renew", "POST", wire.PathRenew, sibling.forge(t, n.id, n.svid.Serial), wire.RenewRequest{CSR: csr(t, newKey(t))}},
		{"admin_api", "GET", server.PathAdminCA, sibling.forge(t, adminID, ac.SVID.Serial), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, body := e.do(e.client(tt.cert), tt.method, tt.path, "", tt.body)
			if st != 403 && st != 401 {
				t.Fatalf("%s %s with a sibling CA's copy of the credential: %d %s, want 401 or 403", tt.method, tt.path, st, body)
			}
		})
	}
}

// Package testpki makes throwaway SPIFFE PKI for tests: a CA for a trust
// domain, X509-SVIDs and server certificates signed by it, and files in
// PEM for processes started by tests. Nothing here is for production: keys
// are generated without persistence and certificates are minimal but valid
// X509-SVIDs.
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var serial atomic.Int64

func nextSerial() *big.Int { return big.NewInt(time.Now().UnixNano() + serial.Add(1)) }

// CA is a test certificate authority for one trust domain.
type CA struct {
	TrustDomain spiffeid.TrustDomain
	Cert        *x509.Certificate
	Key         *ecdsa.PrivateKey
	// Now is the clock for NotBefore/NotAfter; time.Now when nil.
	Now func() time.Time
}

func (ca *CA) now() time.Time {
	if ca.Now != nil {
		return ca.Now()
	}
	return time.Now()
}

// NewCA returns a self-signed P-256 CA for the trust domain td
// ("example.org"), valid for a day.
func NewCA(t testing.TB, td string) *CA {
	t.Helper()
	trust, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	key := mustKey(t)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{Organization: []string{"testpki"}, CommonName: td + " test CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{trust.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &CA{TrustDomain: trust, Cert: cert, Key: key}
}

func mustKey(t testing.TB) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	return key
}

// SVID is a leaf certificate with its key.
type SVID struct {
	ID    spiffeid.ID
	Chain []*x509.Certificate
	Key   crypto.Signer
}

// X509SVID converts to go-spiffe's type.
func (s *SVID) X509SVID() *x509svid.SVID {
	return &x509svid.SVID{ID: s.ID, Certificates: s.Chain, PrivateKey: s.Key}
}

// TLSCertificate converts to a crypto/tls certificate.
func (s *SVID) TLSCertificate() tls.Certificate {
	c := tls.Certificate{PrivateKey: s.Key, Leaf: s.Chain[0]}
	for _, x := range s.Chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// Bundle returns the CA as a go-spiffe X.509 bundle.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.TrustDomain, []*x509.Certificate{ca.Cert})
}

// Pool returns a CertPool holding the CA certificate.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// SVID issues an X509-SVID for id (a full "spiffe://..." string) valid for
// ttl from now (an hour if ttl is 0).
func (ca *CA) SVID(t testing.TB, id string, ttl time.Duration) *SVID {
	t.Helper()
	sid, err := spiffeid.FromString(id)
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	if ttl == 0 {
		ttl = time.Hour
	}
	key := mustKey(t)
	now := ca.now()
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{Organization: []string{"testpki"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{sid.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &SVID{ID: sid, Chain: []*x509.Certificate{cert}, Key: key}
}

// ServerCert issues a TLS server certificate for the given DNS names and
// IPs (and optionally a SPIFFE ID URI SAN when id is non-empty).
func (ca *CA) ServerCert(t testing.TB, id string, hosts ...string) tls.Certificate {
	t.Helper()
	key := mustKey(t)
	now := ca.now()
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	if id != "" {
		u, err := url.Parse(id)
		if err != nil {
			t.Fatalf("testpki: %v", err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// Files holds the paths WriteFiles wrote.
type Files struct{ Cert, Key, Bundle string }

// WriteFiles writes s's chain, key (PKCS#8) and the CA bundle as PEM into
// dir, named by prefix, and returns the paths.
func (ca *CA) WriteFiles(t testing.TB, dir, prefix string, s *SVID) Files {
	t.Helper()
	f := Files{
		Cert:   filepath.Join(dir, prefix+"-cert.pem"),
		Key:    filepath.Join(dir, prefix+"-key.pem"),
		Bundle: filepath.Join(dir, prefix+"-bundle.pem"),
	}
	var chain []byte
	for _, c := range s.Chain {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(s.Key)
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	write := func(p string, b []byte) {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatalf("testpki: %v", err)
		}
	}
	write(f.Cert, chain)
	write(f.Key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	write(f.Bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}))
	return f
}

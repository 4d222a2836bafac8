package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Limits on what callers may ask for.
const (
	// MaxIDLength is the longest SPIFFE ID the CA issues (SPIFFE-ID §2.3).
	MaxIDLength = 2048
	// MaxCSRSize bounds a CSR's DER size; an honest CSR with an 8192-bit
	// RSA key is under 2 KiB.
	MaxCSRSize = 16 << 10
	// maxRSABits bounds RSA keys, so verifying a CSR's signature stays
	// cheap.
	maxRSABits = 8192
	// maxServerNames bounds DNS names plus IPs in a server certificate.
	maxServerNames = 100
	// svidBackdate is how far an SVID's NotBefore is set in the past, for
	// peers whose clocks run a little behind ours.
	svidBackdate = 30 * time.Second
)

// Issued is a signed X.509 certificate.
type Issued struct {
	// Chain is the leaf first, then every intermediate a validator that
	// holds only the bundle's roots needs (none for a self-signed root;
	// our intermediate and the upstream intermediates otherwise).
	Chain []*x509.Certificate
	// Serial is the leaf's serial number in lower-case hex without leading
	// zeros (big.Int.Text(16)), as revocation by serial expects it.
	Serial   string
	NotAfter time.Time
}

// SignX509SVID signs an X509-SVID for id. It verifies the CSR's
// self-signature (proof of possession) and takes NOTHING from the CSR but
// its public key (subject, SANs, extensions are ignored; the SPIFFE ID
// comes from the caller). Accepted keys: ECDSA P-256/P-384, RSA 2048–8192
// bits, Ed25519. ttl 0 = Options.X509SVIDTTL; NotAfter is capped at the
// signing CA's NotAfter.
//
// The certificate meets X509-SVID: exactly one URI SAN (id), CA=false, key
// usage critical with digitalSignature (plus keyEncipherment for RSA keys)
// and neither keyCertSign nor cRLSign, extended key usage serverAuth and
// clientAuth.
//
// Errors: ErrInvalidID, ErrInvalidCSR, ErrInvalidRequest (negative ttl),
// ErrNoAuthority.
func (c *CA) SignX509SVID(csrDER []byte, id spiffeid.ID, ttl time.Duration) (*Issued, error) {
	if err := c.checkWorkloadID(id); err != nil {
		return nil, err
	}
	if ttl < 0 {
		return nil, fmt.Errorf("%w: negative TTL %v", ErrInvalidRequest, ttl)
	}
	pub, spki, err := parseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	return c.signLeaf(pub, spki, id, nil, nil, ttl)
}

// SignServerCert issues the server's own TLS certificate: an X509-SVID for
// id (which must be in the trust domain, with a path) that also carries
// dnsNames and ips as SANs. pub is a key the server generated itself.
// ttl 0 = Options.X509SVIDTTL. Errors as SignX509SVID, ErrInvalidRequest
// for a bad key, DNS name or IP.
func (c *CA) SignServerCert(pub crypto.PublicKey, id spiffeid.ID, dnsNames []string, ips []net.IP, ttl time.Duration) (*Issued, error) {
	if err := c.checkWorkloadID(id); err != nil {
		return nil, err
	}
	if ttl < 0 {
		return nil, fmt.Errorf("%w: negative TTL %v", ErrInvalidRequest, ttl)
	}
	if err := checkPublicKey(pub); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	if len(dnsNames)+len(ips) > maxServerNames {
		return nil, fmt.Errorf("%w: more than %d DNS names and IPs", ErrInvalidRequest, maxServerNames)
	}
	for _, n := range dnsNames {
		if err := checkDNSName(n); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
		}
	}
	for _, ip := range ips {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			return nil, fmt.Errorf("%w: invalid IP address %v", ErrInvalidRequest, ip)
		}
	}
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	return c.signLeaf(pub, spki, id, dnsNames, ips, ttl)
}

// checkWorkloadID refuses IDs this CA must not issue: the zero ID, an ID of
// another trust domain (a compromised caller could otherwise impersonate
// workloads elsewhere), and the bare trust-domain ID (X509-SVID: a leaf's
// ID MUST have a path; the bare ID names signing certificates).
func (c *CA) checkWorkloadID(id spiffeid.ID) error {
	switch {
	case id.IsZero():
		return fmt.Errorf("%w: empty SPIFFE ID", ErrInvalidID)
	case id.TrustDomain() != c.o.TrustDomain:
		return fmt.Errorf("%w: %s is outside trust domain %s", ErrInvalidID, id, c.o.TrustDomain.Name())
	case id.Path() == "":
		return fmt.Errorf("%w: %s is the trust domain's own ID; a workload ID needs a path", ErrInvalidID, id)
	case len(id.String()) > MaxIDLength:
		// SPIFFE-ID §2.3: implementations SHOULD NOT generate longer IDs,
		// and validators need only support this much.
		return fmt.Errorf("%w: SPIFFE ID of %d bytes, at most %d", ErrInvalidID, len(id.String()), MaxIDLength)
	}
	return nil
}

// parseCSR checks a PKCS#10 request and returns its public key and the DER
// SubjectPublicKeyInfo. The key is checked before the signature so that an
// oversized key costs nothing to refuse.
func parseCSR(der []byte) (crypto.PublicKey, []byte, error) {
	if len(der) == 0 {
		return nil, nil, fmt.Errorf("%w: empty", ErrInvalidCSR)
	}
	if len(der) > MaxCSRSize {
		return nil, nil, fmt.Errorf("%w: %d bytes, over the %d limit", ErrInvalidCSR, len(der), MaxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: not a DER PKCS#10 request: %w", ErrInvalidCSR, err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrInvalidCSR, err)
	}
	switch csr.SignatureAlgorithm {
	case x509.SHA256WithRSA, x509.SHA384WithRSA, x509.SHA512WithRSA,
		x509.SHA256WithRSAPSS, x509.SHA384WithRSAPSS, x509.SHA512WithRSAPSS,
		x509.ECDSAWithSHA256, x509.ECDSAWithSHA384, x509.ECDSAWithSHA512,
		x509.PureEd25519:
	default:
		return nil, nil, fmt.Errorf("%w: signature algorithm %v not accepted", ErrInvalidCSR, csr.SignatureAlgorithm)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, nil, fmt.Errorf("%w: signature does not verify (no proof of possession of the key): %w", ErrInvalidCSR, err)
	}
	return csr.PublicKey, csr.RawSubjectPublicKeyInfo, nil
}

func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ECDSA curve %s not accepted (P-256 or P-384)", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if b := k.N.BitLen(); b < 2048 || b > maxRSABits {
			return fmt.Errorf("RSA key of %d bits not accepted (2048 to %d)", b, maxRSABits)
		}
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return errors.New("bad Ed25519 key")
		}
	default:
		return fmt.Errorf("key type %T not accepted (ECDSA P-256/P-384, RSA, Ed25519)", pub)
	}
	return nil
}

// checkDNSName accepts a lower-case host name (RFC 1123 labels), no
// wildcards.
func checkDNSName(n string) error {
	if n == "" || len(n) > 253 {
		return fmt.Errorf("invalid DNS name %q", n)
	}
	for _, label := range strings.Split(n, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("invalid DNS name %q", n)
		}
		for i := 0; i < len(label); i++ {
			ch := label[i]
			if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '-') {
				return fmt.Errorf("invalid DNS name %q (lower-case letters, digits, '-' and '.' only)", n)
			}
		}
	}
	return nil
}

func (c *CA) signLeaf(pub crypto.PublicKey, spki []byte, id spiffeid.ID, dnsNames []string, ips []net.IP, ttl time.Duration) (*Issued, error) {
	s := c.cur.Load().x509
	now := c.o.Now()
	if s == nil || !now.Before(s.notAfter) {
		return nil, fmt.Errorf("%w: the X.509 authority has expired (is the server's CA tick running?)", ErrNoAuthority)
	}
	if ttl == 0 {
		ttl = c.o.X509SVIDTTL
	}
	notAfter := now.Add(ttl)
	if notAfter.After(s.notAfter) {
		notAfter = s.notAfter
	}
	notBefore := now.Add(-svidBackdate)
	if notBefore.Before(s.cert.NotBefore) {
		notBefore = s.cert.NotBefore
	}
	skid, err := spkiKeyID(spki)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	serial, err := c.newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := svidTemplate(pub, serial, id, notBefore, notAfter)
	tmpl.SubjectKeyId = skid
	tmpl.DNSNames = dnsNames
	tmpl.IPAddresses = ips
	der, err := x509.CreateCertificate(c.o.Rand, tmpl, s.cert, pub, s.key)
	if err != nil {
		return nil, fmt.Errorf("ca: sign X509-SVID: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse signed X509-SVID: %w", err)
	}
	chain := make([]*x509.Certificate, 0, 1+len(s.chain))
	chain = append(chain, cert)
	chain = append(chain, s.chain...)
	return &Issued{Chain: chain, Serial: serial.Text(16), NotAfter: cert.NotAfter}, nil
}

// svidExtKeyUsages are the extended key usages of every X509-SVID; a
// validator checks each against the whole chain.
var svidExtKeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}

// svidTemplate is the X509-SVID profile: one URI SAN, CA=false, key usage
// digitalSignature (plus keyEncipherment for RSA keys), extended key usage
// serverAuth and clientAuth.
func svidTemplate(pub crypto.PublicKey, serial *big.Int, id spiffeid.ID, notBefore, notAfter time.Time) *x509.Certificate {
	ku := x509.KeyUsageDigitalSignature
	if _, ok := pub.(*rsa.PublicKey); ok {
		ku |= x509.KeyUsageKeyEncipherment // for TLS 1.2 RSA key exchange
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Moatless"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              ku,
		ExtKeyUsage:           slices.Clone(svidExtKeyUsages),
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{id.URL()},
	}
}

// newSerial returns a random positive 127-bit serial number.
func (c *CA) newSerial() (*big.Int, error) {
	var b [16]byte
	if _, err := io.ReadFull(c.o.Rand, b[:]); err != nil {
		return nil, fmt.Errorf("ca: serial number: %w", err)
	}
	b[0] &= 0x7f
	n := new(big.Int).SetBytes(b[:])
	if n.Sign() == 0 {
		n.SetInt64(1)
	}
	return n, nil
}

// subjectKeyID computes the key identifier of RFC 7093 section 2 method 1
// (the leftmost 160 bits of the SHA-256 of the subjectPublicKey bits), the
// same method crypto/x509 uses for CA certificates.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("ca: marshal public key: %w", err)
	}
	return spkiKeyID(spki)
}

func spkiKeyID(spki []byte) ([]byte, error) {
	in := cryptobyte.String(spki)
	var seq, alg cryptobyte.String
	var bits asn1.BitString
	if !in.ReadASN1(&seq, cbasn1.SEQUENCE) || !in.Empty() ||
		!seq.ReadASN1(&alg, cbasn1.SEQUENCE) || !seq.ReadASN1BitString(&bits) || !seq.Empty() {
		return nil, errors.New("malformed SubjectPublicKeyInfo")
	}
	sum := sha256.Sum256(bits.Bytes)
	return sum[:20], nil
}

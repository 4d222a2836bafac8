package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var (
	oidKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidSubjectAltName   = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
)

func extension(c *x509.Certificate, oid asn1.ObjectIdentifier) (pkix.Extension, bool) {
	for _, e := range c.Extensions {
		if e.Id.Equal(oid) {
			return e, true
		}
	}
	return pkix.Extension{}, false
}

// X509-SVID §3.2, §4.1, §4.3: the root is a signing certificate.
func TestRootIsSigningCertificate(t *testing.T) {
	e := newEnv(t, nil)
	roots := e.ca.Bundle().X509Authorities()
	if len(roots) != 1 {
		t.Fatalf("bundle has %d X.509 authorities, want 1", len(roots))
	}
	r := roots[0]
	pub, ok := r.PublicKey.(*ecdsa.PublicKey)
	checks := []struct {
		name string
		ok   bool
	}{
		{"p256_key", ok && pub.Curve == elliptic.P256()},
		{"self_signed", r.CheckSignatureFrom(r) == nil},
		{"ca_true", r.BasicConstraintsValid && r.IsCA},
		{"key_cert_sign", r.KeyUsage&x509.KeyUsageCertSign != 0},
		{"crl_sign", r.KeyUsage&x509.KeyUsageCRLSign != 0},
		{"no_digital_signature", r.KeyUsage&x509.KeyUsageDigitalSignature == 0},
		{"key_usage_critical", func() bool { x, ok := extension(r, oidKeyUsage); return ok && x.Critical }()},
		{"basic_constraints_critical", func() bool { x, ok := extension(r, oidBasicConstraints); return ok && x.Critical }()},
		{"subject_key_id", len(r.SubjectKeyId) == 20},
		{"uri_san_is_trust_domain_id_without_path", len(r.URIs) == 1 && r.URIs[0].String() == "spiffe://example.org"},
		{"path_len_zero", r.MaxPathLen == 0 && r.MaxPathLenZero},
		{"lifetime_is_ca_ttl", r.NotAfter.Sub(r.NotBefore) == DefaultCATTL},
		{"valid_now", !e.clock.Now().Before(r.NotBefore) && e.clock.Now().Before(r.NotAfter)},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			if !c.ok {
				t.Errorf("root certificate fails %s", c.name)
			}
		})
	}
}

// Every MUST of X509-SVID for a leaf, each as its own case.
func TestX509SVIDConformance(t *testing.T) {
	e := newEnv(t, nil)
	is := mustSign(t, e.ca, testID, 0)
	leaf := is.Chain[0]
	now := e.clock.Now()
	checks := []struct {
		name string
		ok   bool
	}{
		// §2: exactly one URI SAN, the SPIFFE ID.
		{"exactly_one_uri_san", len(leaf.URIs) == 1},
		{"uri_san_is_spiffe_id", len(leaf.URIs) == 1 && leaf.URIs[0].String() == testID.String()},
		// §3.1: a leaf's ID has a non-root path.
		{"id_has_path", len(leaf.URIs) == 1 && leaf.URIs[0].Path != ""},
		// §4.1: CA=false.
		{"basic_constraints_ca_false", leaf.BasicConstraintsValid && !leaf.IsCA},
		// §4.3: key usage set and critical; digitalSignature; no
		// keyCertSign, no cRLSign.
		{"key_usage_critical", func() bool { x, ok := extension(leaf, oidKeyUsage); return ok && x.Critical }()},
		{"digital_signature", leaf.KeyUsage&x509.KeyUsageDigitalSignature != 0},
		{"no_key_cert_sign", leaf.KeyUsage&x509.KeyUsageCertSign == 0},
		{"no_crl_sign", leaf.KeyUsage&x509.KeyUsageCRLSign == 0},
		// §4.4: EKU present with serverAuth and clientAuth.
		{"eku_server_and_client", cmp.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth})},
		// §3.1: SAN critical if the subject is empty; ours has a subject.
		{"subject_or_critical_san", len(leaf.RawSubject) > 2 || func() bool { x, ok := extension(leaf, oidSubjectAltName); return ok && x.Critical }()},
		{"no_other_sans", len(leaf.DNSNames) == 0 && len(leaf.IPAddresses) == 0 && len(leaf.EmailAddresses) == 0},
		{"authority_key_id_matches_root", string(leaf.AuthorityKeyId) == string(e.ca.Bundle().X509Authorities()[0].SubjectKeyId)},
		{"subject_key_id", len(leaf.SubjectKeyId) == 20},
		{"default_ttl_1h", leaf.NotAfter.Equal(now.Add(time.Hour))},
		{"backdated", leaf.NotBefore.Before(now)},
		{"serial_hex_matches", is.Serial == leaf.SerialNumber.Text(16) && is.Serial == strings.ToLower(is.Serial)},
		{"serial_positive_and_long", leaf.SerialNumber.Sign() > 0 && leaf.SerialNumber.BitLen() > 64},
		{"not_after_reported", is.NotAfter.Equal(leaf.NotAfter)},
		{"chain_is_leaf_only", len(is.Chain) == 1},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			if !c.ok {
				t.Errorf("X509-SVID fails %s", c.name)
			}
		})
	}
	t.Run("verifies_with_go_spiffe", func(t *testing.T) {
		id, _, err := x509svid.Verify(is.Chain, e.ca.Bundle(), x509svid.WithTime(now))
		if err != nil {
			t.Fatalf("x509svid.Verify: %v", err)
		}
		if id != testID {
			t.Errorf("verified ID %s, want %s", id, testID)
		}
	})
}

func TestSerialsAreUnique(t *testing.T) {
	e := newEnv(t, nil)
	key := newP256(t)
	csr := csrFor(t, key, nil)
	seen := map[string]bool{}
	for range 200 {
		is, err := e.ca.SignX509SVID(csr, testID, 0)
		if err != nil {
			t.Fatal(err)
		}
		if seen[is.Serial] {
			t.Fatalf("serial %s issued twice", is.Serial)
		}
		seen[is.Serial] = true
	}
}

// The CSR contributes its public key and nothing else.
func TestCSRContentIsIgnored(t *testing.T) {
	e := newEnv(t, nil)
	bcCA, _ := asn1.Marshal(struct {
		IsCA bool `asn1:"optional"`
	}{true})
	kuCertSign, _ := asn1.Marshal(asn1.BitString{Bytes: []byte{0x06}, BitLength: 7})
	tests := []struct {
		name string
		tmpl *x509.CertificateRequest
	}{
		{"different_spiffe_id", &x509.CertificateRequest{URIs: []*url.URL{mustURL(t, "spiffe://example.org/ns/kube-system/sa/admin")}}},
		{"foreign_trust_domain_id", &x509.CertificateRequest{URIs: []*url.URL{mustURL(t, "spiffe://evil.example/admin")}}},
		{"extra_uri_sans", &x509.CertificateRequest{URIs: []*url.URL{mustURL(t, "spiffe://example.org/a"), mustURL(t, "https://example.com/")}}},
		{"dns_ip_email_sans", &x509.CertificateRequest{DNSNames: []string{"admin.example.org", "*.example.org"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, EmailAddresses: []string{"root@example.org"}}},
		{"subject", &x509.CertificateRequest{Subject: pkix.Name{CommonName: "root", Organization: []string{"Evil"}}}},
		{"ca_basic_constraints_extension", &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{{Id: oidBasicConstraints, Critical: true, Value: bcCA}}}},
		{"key_cert_sign_usage_extension", &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{{Id: oidKeyUsage, Critical: true, Value: kuCertSign}}}},
		{"unknown_extension", &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 2, 3, 4, 5}, Critical: true, Value: []byte{5, 0}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is, err := e.ca.SignX509SVID(csrFor(t, newP256(t), tt.tmpl), testID, 0)
			if err != nil {
				t.Fatalf("SignX509SVID: %v", err)
			}
			leaf := is.Chain[0]
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != testID.String() {
				t.Errorf("URI SANs = %v, want only %s", leaf.URIs, testID)
			}
			if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
				t.Errorf("leaf carries SANs from the CSR: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
			}
			if leaf.IsCA || leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0 {
				t.Errorf("leaf took CA powers from the CSR")
			}
			if leaf.Subject.CommonName != "" || len(leaf.Subject.Organization) != 1 || leaf.Subject.Organization[0] != "Moatless" {
				t.Errorf("subject = %v, want O=Moatless only", leaf.Subject)
			}
			for _, x := range leaf.Extensions {
				if x.Id.Equal(asn1.ObjectIdentifier{1, 2, 3, 4, 5}) {
					t.Errorf("leaf carries the CSR's extension %v", x.Id)
				}
			}
			if _, _, err := x509svid.Verify(is.Chain, e.ca.Bundle(), x509svid.WithTime(e.clock.Now())); err != nil {
				t.Errorf("x509svid.Verify: %v", err)
			}
		})
	}
}

func TestAcceptedKeyTypes(t *testing.T) {
	e := newEnv(t, nil)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	tests := []struct {
		name   string
		key    crypto.Signer
		wantKU x509.KeyUsage
	}{
		{"ecdsa_p256", newP256(t), x509.KeyUsageDigitalSignature},
		{"ecdsa_p384", p384, x509.KeyUsageDigitalSignature},
		{"rsa_2048", rsa2048, x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment},
		{"ed25519", ed, x509.KeyUsageDigitalSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is, err := e.ca.SignX509SVID(csrFor(t, tt.key, nil), testID, 0)
			if err != nil {
				t.Fatalf("SignX509SVID: %v", err)
			}
			leaf := is.Chain[0]
			if !publicKeyEqual(tt.key.Public(), leaf.PublicKey) {
				t.Errorf("certificate is not for the CSR's key")
			}
			if leaf.KeyUsage != tt.wantKU {
				t.Errorf("key usage %b, want %b", leaf.KeyUsage, tt.wantKU)
			}
			if _, _, err := x509svid.Verify(is.Chain, e.ca.Bundle(), x509svid.WithTime(e.clock.Now())); err != nil {
				t.Errorf("x509svid.Verify: %v", err)
			}
		})
	}
}

func TestCSRRefused(t *testing.T) {
	e := newEnv(t, nil)
	good := csrFor(t, newP256(t), nil)
	badSig := append([]byte(nil), good...)
	badSig[len(badSig)-3] ^= 0xff // inside the signature value
	// A CSR whose signature is valid for a different public key: swap in
	// another key's SubjectPublicKeyInfo (the signature then fails).
	otherKey := newP256(t)
	csrA, _ := x509.ParseCertificateRequest(good)
	csrB, _ := x509.ParseCertificateRequest(csrFor(t, otherKey, nil))
	swapped := []byte(strings.Replace(string(good), string(csrA.RawSubjectPublicKeyInfo), string(csrB.RawSubjectPublicKeyInfo), 1))
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	rsa1024 := weakRSA(t)
	tests := []struct {
		name string
		csr  []byte
		want string
	}{
		{"empty", nil, "empty"},
		{"garbage", []byte("not a csr"), "not a DER PKCS#10 request"},
		{"trailing_data", append(append([]byte(nil), good...), 0), "trailing data"},
		{"too_large", make([]byte, MaxCSRSize+1), "over the"},
		{"bad_signature", badSig, "does not verify"},
		{"key_swapped", swapped, "does not verify"},
		{"p521_key", csrFor(t, p521, nil), "curve P-521 not accepted"},
		{"p224_key", csrFor(t, p224, nil), "curve P-224 not accepted"},
		{"rsa_1024_key", rsa1024, "RSA key of 1024 bits"},
		{"certificate_not_csr", e.ca.Bundle().X509Authorities()[0].Raw, ""},
		{"sha1_signature", csrFor(t, newP256(t), &x509.CertificateRequest{SignatureAlgorithm: x509.ECDSAWithSHA1}), "signature algorithm ECDSA-SHA1 not accepted"},
		// Proof of possession forged without any private key: with e = 1
		// the "signature" is the padded digest itself, and anyone could
		// then sign with the certified key.
		{"rsa_exponent_one_forged_proof_of_possession", exponentOneCSR(t), "public exponent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.ca.SignX509SVID(tt.csr, testID, 0)
			if !isErr(err, ErrInvalidCSR) {
				t.Fatalf("err = %v, want ErrInvalidCSR", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %q, want it to mention %q", err, tt.want)
			}
		})
	}
}

// exponentOneCSR forges a CSR for the RSA public key (N, e = 1) without
// any private key: the PKCS #1 v1.5 encoded digest of the request is its
// own e-th power, so it is its own "signature".
func exponentOneCSR(t *testing.T) []byte {
	t.Helper()
	k, _ := rsa.GenerateKey(rand.Reader, 2048)
	spki, err := x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: k.N, E: 1})
	if err != nil {
		t.Fatal(err)
	}
	outer := csrWithSPKI(t, csrFor(t, k, nil), spki)
	tbs, err := asn1.Marshal(outer.TBS)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(tbs)
	prefix := []byte{0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20} // SHA-256 DigestInfo
	n := k.Size()
	em := bytes.Repeat([]byte{0xff}, n)
	em[0], em[1] = 0, 1
	em[n-len(prefix)-len(digest)-1] = 0
	copy(em[n-len(prefix)-len(digest):], prefix)
	copy(em[n-len(digest):], digest[:])
	outer.Sig = asn1.BitString{Bytes: em, BitLength: 8 * n}
	der, err := asn1.Marshal(outer)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// rawCSR is a PKCS #10 request taken apart enough to replace its key.
type rawCSR struct {
	Raw asn1.RawContent
	TBS struct {
		Raw     asn1.RawContent
		Version int
		Subject asn1.RawValue
		SPKI    asn1.RawValue
		Attrs   asn1.RawValue `asn1:"tag:0"`
	}
	Alg asn1.RawValue
	Sig asn1.BitString
}

// csrWithSPKI returns der with its SubjectPublicKeyInfo replaced by spki
// (the signature is then the old one, over the old content).
func csrWithSPKI(t *testing.T, der, spki []byte) rawCSR {
	t.Helper()
	var outer rawCSR
	if _, err := asn1.Unmarshal(der, &outer); err != nil {
		t.Fatal(err)
	}
	// The replacement changes lengths, so the outer structures are
	// re-encoded.
	outer.TBS.Raw = nil
	outer.TBS.SPKI = asn1.RawValue{FullBytes: spki}
	outer.Raw = nil
	return outer
}

// weakRSA builds a CSR for a 1024-bit RSA key. crypto/rsa refuses to make
// such keys by default, so the CSR is signed by a 2048-bit key with its
// SubjectPublicKeyInfo replaced; the CA must refuse on the key size before
// it ever looks at the signature.
func weakRSA(t *testing.T) []byte {
	t.Helper()
	n, _ := new(big.Int).SetString(strings.Repeat("f", 256), 16)
	spki, err := x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: n, E: 65537})
	if err != nil {
		t.Fatal(err)
	}
	k, _ := rsa.GenerateKey(rand.Reader, 2048)
	der, err := asn1.Marshal(csrWithSPKI(t, csrFor(t, k, nil), spki))
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestWorkloadIDRefused(t *testing.T) {
	e := newEnv(t, nil)
	csr := csrFor(t, newP256(t), nil)
	tests := []struct {
		name string
		id   spiffeid.ID
	}{
		{"zero_id", spiffeid.ID{}},
		{"other_trust_domain", spiffeid.RequireFromString("spiffe://other.org/ns/default/sa/web")},
		{"sub_domain_trust_domain", spiffeid.RequireFromString("spiffe://sub.example.org/web")},
		{"bare_trust_domain_id", testTD.ID()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := e.ca.SignX509SVID(csr, tt.id, 0); !isErr(err, ErrInvalidID) {
				t.Errorf("SignX509SVID err = %v, want ErrInvalidID", err)
			}
			if _, _, err := e.ca.SignJWTSVID(tt.id, []string{"a"}, 0); !isErr(err, ErrInvalidID) {
				t.Errorf("SignJWTSVID err = %v, want ErrInvalidID", err)
			}
			if _, err := e.ca.SignServerCert(newP256(t).Public(), tt.id, nil, nil, 0); !isErr(err, ErrInvalidID) {
				t.Errorf("SignServerCert err = %v, want ErrInvalidID", err)
			}
		})
	}
}

func TestX509TTL(t *testing.T) {
	e := newEnv(t, nil)
	now := e.clock.Now()
	caNotAfter := e.ca.Bundle().X509Authorities()[0].NotAfter
	tests := []struct {
		name         string
		ttl          time.Duration
		wantNotAfter time.Time
		wantErr      error
	}{
		{"zero_means_default", 0, now.Add(DefaultX509SVIDTTL), nil},
		{"explicit", 10 * time.Minute, now.Add(10 * time.Minute), nil},
		{"capped_at_ca_not_after", 1000 * time.Hour, caNotAfter, nil},
		{"negative_refused", -time.Second, time.Time{}, ErrInvalidRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is, err := e.ca.SignX509SVID(csrFor(t, newP256(t), nil), testID, tt.ttl)
			if tt.wantErr != nil {
				if !isErr(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !is.NotAfter.Equal(tt.wantNotAfter) {
				t.Errorf("NotAfter = %v, want %v", is.NotAfter, tt.wantNotAfter)
			}
		})
	}
}

func TestSignServerCert(t *testing.T) {
	e := newEnv(t, nil)
	id := spiffeid.RequireFromString("spiffe://example.org/moatless/server")
	key := newP256(t)
	is, err := e.ca.SignServerCert(key.Public(), id, []string{"localhost", "moatless.example.org"}, []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}, 0)
	if err != nil {
		t.Fatal(err)
	}
	leaf := is.Chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Errorf("URIs = %v", leaf.URIs)
	}
	if !cmp.Equal(leaf.DNSNames, []string{"localhost", "moatless.example.org"}) || len(leaf.IPAddresses) != 2 {
		t.Errorf("SANs = %v %v", leaf.DNSNames, leaf.IPAddresses)
	}
	if leaf.IsCA || leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		t.Errorf("not a leaf")
	}
	pool := x509.NewCertPool()
	for _, r := range e.ca.Bundle().X509Authorities() {
		pool.AddCert(r)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "localhost", CurrentTime: e.clock.Now()}); err != nil {
		t.Errorf("TLS server verification: %v", err)
	}
	if _, _, err := x509svid.Verify(is.Chain, e.ca.Bundle(), x509svid.WithTime(e.clock.Now())); err != nil {
		t.Errorf("x509svid.Verify: %v", err)
	}

	bad := []struct {
		name  string
		pub   crypto.PublicKey
		dns   []string
		ips   []net.IP
		match string
	}{
		{"wildcard_dns", key.Public(), []string{"*.example.org"}, nil, "invalid DNS name"},
		{"upper_case_dns", key.Public(), []string{"Example.org"}, nil, "invalid DNS name"},
		{"empty_label", key.Public(), []string{"a..b"}, nil, "invalid DNS name"},
		{"empty_dns", key.Public(), []string{""}, nil, "invalid DNS name"},
		{"bad_ip", key.Public(), nil, []net.IP{{1, 2, 3}}, "invalid IP"},
		{"too_many_names", key.Public(), make([]string, maxServerNames+1), nil, "more than"},
		{"nil_key", nil, nil, nil, "key type"},
		{"p521_key", func() crypto.PublicKey { k, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader); return k.Public() }(), nil, nil, "P-521"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.ca.SignServerCert(tt.pub, id, tt.dns, tt.ips, 0)
			if !isErr(err, ErrInvalidRequest) || !strings.Contains(err.Error(), tt.match) {
				t.Errorf("err = %v, want ErrInvalidRequest mentioning %q", err, tt.match)
			}
		})
	}
}

// TestSigned: Signed recognises what this CA's authorities signed, before
// and after a rotation (the retired authority is still in the state), and
// nothing else: a certificate from another CA, even one that copies the
// issuer name, serial and SPIFFE ID of one of ours.
func TestSigned(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	activeCert := func() *x509.Certificate {
		for _, a := range e.ca.Status() {
			if a.Kind == KindX509 && a.State == StateActive {
				return a.Certificate
			}
		}
		t.Fatal("no active X.509 authority")
		return nil
	}
	before, authBefore := mustSign(t, e.ca, testID, 0), activeCert()
	e.clock.Advance(time.Hour)
	if err := e.ca.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(DefaultActivationDelay)
	tick(t, e, false)
	after := mustSign(t, e.ca, testID, 0)
	if authBefore.Equal(activeCert()) {
		t.Fatal("the rotation did not change the signing authority")
	}

	other := newEnv(t, nil)
	foreign := mustSign(t, other.ca, testID, 0)
	// A copy of ours made by a CA that took our authority's name.
	ours := before.Chain[0]
	impostorKey := newP256(t)
	impostorCA := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: authBefore.Subject, RawSubject: authBefore.RawSubject,
		NotBefore: ours.NotBefore, NotAfter: ours.NotAfter, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		SubjectKeyId: authBefore.SubjectKeyId}
	caDER, err := x509.CreateCertificate(rand.Reader, impostorCA, impostorCA, impostorKey.Public(), impostorKey)
	if err != nil {
		t.Fatal(err)
	}
	impostorCert, _ := x509.ParseCertificate(caDER)
	copyTmpl := &x509.Certificate{SerialNumber: ours.SerialNumber, URIs: ours.URIs, NotBefore: ours.NotBefore, NotAfter: ours.NotAfter,
		KeyUsage: ours.KeyUsage, ExtKeyUsage: ours.ExtKeyUsage, AuthorityKeyId: ours.AuthorityKeyId}
	copyDER, err := x509.CreateCertificate(rand.Reader, copyTmpl, impostorCert, newP256(t).Public(), impostorKey)
	if err != nil {
		t.Fatal(err)
	}
	copied, _ := x509.ParseCertificate(copyDER)
	if !bytes.Equal(copied.RawIssuer, ours.RawIssuer) || copied.SerialNumber.Cmp(ours.SerialNumber) != 0 {
		t.Fatal("the copy does not carry our issuer name and serial")
	}

	tests := []struct {
		name string
		leaf *x509.Certificate
		want bool
	}{
		{"signed_before_rotation", before.Chain[0], true},
		{"signed_after_rotation", after.Chain[0], true},
		{"another_ca", foreign.Chain[0], false},
		{"copy_under_our_issuer_name", copied, false},
		{"our_authority_itself", authBefore, false},
		{"nil", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := e.ca.Signed(tt.leaf); got != tt.want {
				t.Fatalf("Signed = %v, want %v", got, tt.want)
			}
		})
	}
}

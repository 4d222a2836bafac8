package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// orgPKI is an organisation's PKI: a root and an issuing intermediate.
type orgPKI struct {
	root, inter       *x509.Certificate
	rootKey, interKey crypto.Signer
}

type certSpec struct {
	cn           string
	ca           bool
	pathLenZero  bool
	maxPathLen   int
	notBefore    time.Time
	notAfter     time.Time
	keyUsage     x509.KeyUsage
	parent       *x509.Certificate
	parentSigner crypto.Signer
	// Constraints an organisation's CA may carry on what it signs below.
	permittedURIDomains []string
	permittedDNSDomains []string
	extKeyUsage         []x509.ExtKeyUsage
}

func makeCert(t testing.TB, s certSpec, key crypto.Signer) *x509.Certificate {
	t.Helper()
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: s.cn, Organization: []string{"Org"}},
		NotBefore:             s.notBefore,
		NotAfter:              s.notAfter,
		KeyUsage:              s.keyUsage,
		BasicConstraintsValid: true,
		IsCA:                  s.ca,
		MaxPathLen:            s.maxPathLen,
		MaxPathLenZero:        s.pathLenZero,
		PermittedURIDomains:   s.permittedURIDomains,
		PermittedDNSDomains:   s.permittedDNSDomains,
		ExtKeyUsage:           s.extKeyUsage,
	}
	parent, signer := tmpl, key
	if s.parent != nil {
		parent, signer = s.parent, s.parentSigner
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newOrgPKI(t testing.TB, now time.Time, life time.Duration) *orgPKI {
	t.Helper()
	p := &orgPKI{rootKey: newP256(t), interKey: newP256(t)}
	p.root = makeCert(t, certSpec{cn: "Org Root", ca: true, notBefore: now.Add(-time.Hour), notAfter: now.Add(10 * life), keyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}, p.rootKey)
	p.inter = makeCert(t, certSpec{cn: "Org Issuing CA", ca: true, maxPathLen: 1, notBefore: now.Add(-time.Hour), notAfter: now.Add(life), keyUsage: x509.KeyUsageCertSign, parent: p.root, parentSigner: p.rootKey}, p.interKey)
	return p
}

func pemCerts(certs ...*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}

func pemKey(t *testing.T, k crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUpstreamFromFiles(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	org := newOrgPKI(t, now, 30*24*time.Hour)
	dir := t.TempDir()
	up, err := LoadUpstream(
		writeFile(t, dir, "ca.pem", pemCerts(org.inter)),
		writeFile(t, dir, "ca.key", pemKey(t, org.interKey)),
		writeFile(t, dir, "roots.pem", pemCerts(org.root)),
	)
	if err != nil {
		t.Fatalf("LoadUpstream: %v", err)
	}
	e := newEnv(t, func(o *Options) { o.Upstream = up })

	// The bundle's X.509 authorities are the upstream roots, nothing else.
	roots := e.ca.Bundle().X509Authorities()
	if len(roots) != 1 || !roots[0].Equal(org.root) {
		t.Fatalf("bundle X.509 authorities = %d certs, want the org root", len(roots))
	}
	is := mustSign(t, e.ca, testID, 0)
	if len(is.Chain) != 3 {
		t.Fatalf("chain has %d certs, want leaf, Moatless intermediate, org intermediate", len(is.Chain))
	}
	ours := is.Chain[1]
	if ours.CheckSignatureFrom(org.inter) != nil || !is.Chain[2].Equal(org.inter) {
		t.Errorf("intermediate not signed by the upstream")
	}
	if !ours.IsCA || ours.KeyUsage&x509.KeyUsageCertSign == 0 || len(ours.URIs) != 1 || ours.URIs[0].String() != "spiffe://example.org" {
		t.Errorf("Moatless intermediate is not an SVID signing certificate")
	}
	if ours.NotAfter.Sub(ours.NotBefore) != DefaultCATTL {
		t.Errorf("intermediate life %v", ours.NotAfter.Sub(ours.NotBefore))
	}
	if _, _, err := x509svid.Verify(is.Chain, e.ca.Bundle(), x509svid.WithTime(now)); err != nil {
		t.Errorf("x509svid.Verify with only the org root: %v", err)
	}
	// Status reports the intermediate and its issuer.
	st := e.ca.Status()
	if st[0].Kind != KindX509 || !strings.Contains(st[0].Issuer, "Org Issuing CA") {
		t.Errorf("status = %+v", st[0])
	}

	// Rotation of the intermediate does not change the X.509 part of the
	// bundle, and new SVIDs still verify with the root alone.
	e.clock.Advance(12 * time.Hour)
	tick(t, e, true) // the JWT authority changes the bundle
	e.clock.Advance(8 * time.Hour)
	tick(t, e, false)
	is2 := mustSign(t, e.ca, testID, 0)
	if is2.Chain[1].Equal(ours) {
		t.Errorf("intermediate not rotated")
	}
	if n := len(e.ca.Bundle().X509Authorities()); n != 1 {
		t.Errorf("%d X.509 authorities after rotation, want 1", n)
	}
	if _, _, err := x509svid.Verify(is2.Chain, e.ca.Bundle(), x509svid.WithTime(e.clock.Now())); err != nil {
		t.Errorf("verify after rotation: %v", err)
	}
	checkPersisted(t, e)
}

// The root signs our intermediates itself (cert file = the root).
func TestUpstreamIsRoot(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	org := newOrgPKI(t, now, 30*24*time.Hour)
	dir := t.TempDir()
	up, err := LoadUpstream(writeFile(t, dir, "ca.pem", pemCerts(org.root)), writeFile(t, dir, "ca.key", pemKey(t, org.rootKey)), "")
	if err != nil {
		t.Fatalf("LoadUpstream: %v", err)
	}
	e := newEnv(t, func(o *Options) { o.Upstream = up })
	is := mustSign(t, e.ca, testID, 0)
	if len(is.Chain) != 2 {
		t.Errorf("chain has %d certs, want leaf and intermediate (the root is not sent)", len(is.Chain))
	}
	if _, _, err := x509svid.Verify(is.Chain, e.ca.Bundle(), x509svid.WithTime(now)); err != nil {
		t.Errorf("verify: %v", err)
	}
}

// The intermediate never outlives the upstream, and SVIDs never outlive
// the intermediate.
func TestUpstreamCapsLifetimes(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	org := newOrgPKI(t, now, 20*time.Hour)
	up, err := NewUpstream([]*x509.Certificate{org.inter}, org.interKey, []*x509.Certificate{org.root})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(o *Options) { o.Upstream = up })
	is := mustSign(t, e.ca, testID, 100*time.Hour)
	if !is.Chain[1].NotAfter.Equal(org.inter.NotAfter) || !is.NotAfter.Equal(org.inter.NotAfter) {
		t.Errorf("intermediate NotAfter %v, leaf %v; want both capped at the upstream's %v", is.Chain[1].NotAfter, is.NotAfter, org.inter.NotAfter)
	}
	// Once the upstream has expired the CA says what to do.
	e.clock.Set(org.inter.NotAfter.Add(time.Second))
	_, err = e.ca.Tick(context.Background())
	if err == nil || !strings.Contains(err.Error(), "upstream CA certificate expired") {
		t.Errorf("Tick after the upstream expired = %v", err)
	}
}

// Switching from self-signed roots to an upstream (or between upstreams) is
// a rotation: the old root stays in the bundle until it expires, the new
// intermediate activates after the publication delay.
func TestSwitchToUpstreamRotates(t *testing.T) {
	e := newEnv(t, nil)
	oldRoot := e.ca.Bundle().X509Authorities()[0]
	oldSVID := mustSign(t, e.ca, testID, 0)
	org := newOrgPKI(t, e.clock.Now(), 30*24*time.Hour)
	up, err := NewUpstream([]*x509.Certificate{org.inter}, org.interKey, []*x509.Certificate{org.root})
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Hour)
	e.opts.Upstream = up
	e.ca = e.reopen(t)
	b := e.ca.Bundle()
	if got := b.X509Authorities(); len(got) != 2 || !b.HasX509Authority(oldRoot) || !b.HasX509Authority(org.root) {
		t.Fatalf("bundle during switch has %d X.509 authorities, want the old root and the org root", len(got))
	}
	if got := statesOf(e.ca.Status(), KindX509); !slices.Equal(got, []AuthorityState{StateActive, StatePrepared}) {
		t.Fatalf("x509 states = %v", got)
	}
	// Until activation the self-signed root keeps signing.
	if is := mustSign(t, e.ca, testID, 0); len(is.Chain) != 1 {
		t.Errorf("upstream intermediate signed before its activation")
	}
	e.clock.Advance(DefaultActivationDelay - time.Second)
	oldSVID = mustSign(t, e.ca, testID, 0)
	e.clock.Advance(time.Second)
	tick(t, e, false)
	is := mustSign(t, e.ca, testID, 0)
	if len(is.Chain) != 3 {
		t.Fatalf("after activation the chain has %d certs, want 3", len(is.Chain))
	}
	at := e.clock.Now()
	for name, c := range map[string][]*x509.Certificate{"old": oldSVID.Chain, "new": is.Chain} {
		if _, _, err := x509svid.Verify(c, e.ca.Bundle(), x509svid.WithTime(at)); err != nil {
			t.Errorf("%s SVID during switch: %v", name, err)
		}
	}
	// The old root goes at its NotAfter.
	e.clock.Set(oldRoot.NotAfter)
	tick(t, e, true)
	if b := e.ca.Bundle(); b.HasX509Authority(oldRoot) || len(b.X509Authorities()) != 1 {
		t.Errorf("old root still in the bundle after its NotAfter")
	}
	checkPersisted(t, e)

	// And back to self-signed: again a rotation.
	e.opts.Upstream = nil
	e.ca = e.reopen(t)
	if got := statesOf(e.ca.Status(), KindX509); !slices.Equal(got, []AuthorityState{StateActive, StatePrepared}) {
		t.Errorf("x509 states after switching back = %v", got)
	}
	if n := len(e.ca.Bundle().X509Authorities()); n != 2 {
		t.Errorf("%d X.509 authorities, want the org root and the new self-signed root", n)
	}
}

func TestUpstreamRefused(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	org := newOrgPKI(t, now, 30*24*time.Hour)
	otherKey := newP256(t)
	leafKey := newP256(t)
	leaf := makeCert(t, certSpec{cn: "not a CA", notBefore: now.Add(-time.Hour), notAfter: now.Add(time.Hour), keyUsage: x509.KeyUsageDigitalSignature, parent: org.root, parentSigner: org.rootKey}, leafKey)
	pathZeroKey := newP256(t)
	pathZero := makeCert(t, certSpec{cn: "path 0", ca: true, pathLenZero: true, notBefore: now.Add(-time.Hour), notAfter: now.Add(time.Hour), keyUsage: x509.KeyUsageCertSign, parent: org.root, parentSigner: org.rootKey}, pathZeroKey)
	noSignKey := newP256(t)
	noSign := makeCert(t, certSpec{cn: "no keyCertSign", ca: true, notBefore: now.Add(-time.Hour), notAfter: now.Add(time.Hour), keyUsage: x509.KeyUsageDigitalSignature, parent: org.root, parentSigner: org.rootKey}, noSignKey)
	expiredKey := newP256(t)
	expired := makeCert(t, certSpec{cn: "expired", ca: true, notBefore: now.Add(-2 * time.Hour), notAfter: now.Add(-time.Hour), keyUsage: x509.KeyUsageCertSign, parent: org.root, parentSigner: org.rootKey}, expiredKey)
	otherRoot := makeCert(t, certSpec{cn: "Other Root", ca: true, notBefore: now.Add(-time.Hour), notAfter: now.Add(time.Hour), keyUsage: x509.KeyUsageCertSign}, otherKey)

	tests := []struct {
		name   string
		chain  []*x509.Certificate
		signer crypto.Signer
		roots  []*x509.Certificate
		want   string
	}{
		{"no_chain", nil, org.interKey, []*x509.Certificate{org.root}, "no signing certificate"},
		{"no_signer", []*x509.Certificate{org.inter}, nil, []*x509.Certificate{org.root}, "key are required"},
		{"no_roots", []*x509.Certificate{org.inter}, org.interKey, nil, "no root certificates"},
		{"key_mismatch", []*x509.Certificate{org.inter}, otherKey, []*x509.Certificate{org.root}, "does not match"},
		{"not_a_ca", []*x509.Certificate{leaf}, leafKey, []*x509.Certificate{org.root}, "not a CA certificate"},
		{"path_len_zero", []*x509.Certificate{pathZero}, pathZeroKey, []*x509.Certificate{org.root}, "path length 0"},
		{"no_key_cert_sign", []*x509.Certificate{noSign}, noSignKey, []*x509.Certificate{org.root}, "keyCertSign"},
		{"expired", []*x509.Certificate{expired}, expiredKey, []*x509.Certificate{org.root}, "expired"},
		{"wrong_roots", []*x509.Certificate{org.inter}, org.interKey, []*x509.Certificate{otherRoot}, "does not chain"},
		{"root_not_ca", []*x509.Certificate{org.inter}, org.interKey, []*x509.Certificate{leaf}, "not a CA certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewUpstream(tt.chain, tt.signer, tt.roots)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewUpstream = %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
}

// An upstream CA whose own constraints leave no room for the SVIDs it
// would anchor: the chain above our intermediate verifies (NewUpstream
// accepts it), but every X509-SVID signed below it is refused by every
// validator that applies RFC 5280 (crypto/x509 and so go-spiffe, OpenSSL
// and so Envoy): a path length that counts our intermediate, URI name
// constraints that exclude the trust domain, an extended key usage
// without clientAuth or serverAuth. Found only when the intermediate
// activates, that is a mesh-wide outage 10 minutes after start; the CA
// must refuse to prepare such an intermediate, naming the cause.
func TestUpstreamConstraintsLeaveNoRoom(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	org := newOrgPKI(t, now, 30*24*time.Hour)
	life := certSpec{notBefore: now.Add(-time.Hour), notAfter: now.Add(30 * 24 * time.Hour), keyUsage: x509.KeyUsageCertSign, ca: true}
	under := func(s certSpec, parent *x509.Certificate, parentKey crypto.Signer, key crypto.Signer) *x509.Certificate {
		s.notBefore, s.notAfter, s.keyUsage, s.ca = life.notBefore, life.notAfter, life.keyUsage, true
		s.parent, s.parentSigner = parent, parentKey
		return makeCert(t, s, key)
	}
	// org.inter has pathlen:1, so a CA below it has no room for ours.
	belowKey := newP256(t)
	below := under(certSpec{cn: "CA below a pathlen:1 CA"}, org.inter, org.interKey, belowKey)
	nameKey := newP256(t)
	named := under(certSpec{cn: "URI-constrained CA", maxPathLen: 1, permittedURIDomains: []string{"other.example"}}, org.root, org.rootKey, nameKey)
	ekuKey := newP256(t)
	serverOnly := under(certSpec{cn: "serverAuth-only CA", maxPathLen: 1, extKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, org.root, org.rootKey, ekuKey)
	clientOnlyKey := newP256(t)
	clientOnly := under(certSpec{cn: "clientAuth-only CA", maxPathLen: 1, extKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, org.root, org.rootKey, clientOnlyKey)
	goodKey := newP256(t)
	good := under(certSpec{cn: "URI-constrained to the trust domain", maxPathLen: 1, permittedURIDomains: []string{"example.org"},
		extKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}, org.root, org.rootKey, goodKey)

	tests := []struct {
		name  string
		chain []*x509.Certificate
		key   crypto.Signer
		want  string // "" = accepted
	}{
		{"parent_path_length_counts_our_intermediate", []*x509.Certificate{below, org.inter}, belowKey, "path length"},
		{"uri_name_constraints_exclude_trust_domain", []*x509.Certificate{named}, nameKey, "constraint"},
		{"extended_key_usage_server_auth_only", []*x509.Certificate{serverOnly}, ekuKey, "key usage"},
		{"extended_key_usage_client_auth_only", []*x509.Certificate{clientOnly}, clientOnlyKey, "key usage"},
		{"constrained_to_trust_domain_accepted", []*x509.Certificate{good}, goodKey, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up, err := NewUpstream(tt.chain, tt.key, []*x509.Certificate{org.root})
			if err != nil {
				t.Fatalf("NewUpstream: %v (the chain above our intermediate is valid)", err)
			}
			o := Options{TrustDomain: testTD, State: &memStore{}, KEK: testKEK, Now: func() time.Time { return now }, Upstream: up}
			c, err := Open(context.Background(), o)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				is := mustSign(t, c, testID, 0)
				if _, _, err := x509svid.Verify(is.Chain, c.Bundle(), x509svid.WithTime(now)); err != nil {
					t.Errorf("verify: %v", err)
				}
				return
			}
			if err == nil {
				is := mustSign(t, c, testID, 0)
				_, _, verr := x509svid.Verify(is.Chain, c.Bundle(), x509svid.WithTime(now))
				t.Fatalf("Open accepted the upstream; its SVIDs then fail verification: %v", verr)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "upstream") {
				t.Errorf("Open = %v, want an upstream error mentioning %q", err, tt.want)
			}
		})
	}
}

func TestLoadUpstreamFilesRefused(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	org := newOrgPKI(t, now, 30*24*time.Hour)
	dir := t.TempDir()
	certs := writeFile(t, dir, "ca.pem", pemCerts(org.inter))
	key := writeFile(t, dir, "ca.key", pemKey(t, org.interKey))
	roots := writeFile(t, dir, "roots.pem", pemCerts(org.root))
	ecDER, _ := x509.MarshalECPrivateKey(org.interKey.(*ecdsa.PrivateKey))
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	tests := []struct {
		name              string
		cert, key, bundle string
		want              string
	}{
		{"missing_cert_file", filepath.Join(dir, "nope"), key, roots, "no such file"},
		{"missing_key_file", certs, filepath.Join(dir, "nope"), roots, "no such file"},
		{"no_key_given", certs, "", roots, "are required"},
		{"cert_file_is_key", key, key, roots, `"PRIVATE KEY" block`},
		{"cert_file_empty", writeFile(t, dir, "empty.pem", nil), key, roots, "no CERTIFICATE block"},
		{"cert_file_junk", writeFile(t, dir, "junk.pem", append(pemCerts(org.inter), "junk"...)), key, roots, "not PEM"},
		{"key_file_is_cert", certs, certs, roots, `"CERTIFICATE" block`},
		{"two_keys", certs, writeFile(t, dir, "two.key", append(pemKey(t, org.interKey), pemKey(t, org.interKey)...)), roots, "exactly one"},
		{"encrypted_key", certs, writeFile(t, dir, "enc.key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: ecDER})), roots, "encrypted"},
		{"other_key", certs, writeFile(t, dir, "other.key", pemKey(t, newP256(t))), roots, "does not match"},
		{"rsa_key_for_ec_cert", certs, writeFile(t, dir, "rsa.key", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})), roots, "does not match"},
		{"ed25519_key_for_ec_cert", certs, writeFile(t, dir, "ed.key", pemKey(t, edKey)), roots, "does not match"},
		{"bundle_without_certs", certs, key, writeFile(t, dir, "nocerts.pem", []byte("\n")), "no CERTIFICATE block"},
		{"no_bundle_and_not_self_signed", certs, key, "", "no root certificates"},
		{"too_large", writeFile(t, dir, "big.pem", make([]byte, maxPEMFileSize+1)), key, roots, "over"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadUpstream(tt.cert, tt.key, tt.bundle)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("LoadUpstream = %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
	// SEC 1 keys are accepted.
	if _, err := LoadUpstream(certs, writeFile(t, dir, "sec1.key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})), roots); err != nil {
		t.Errorf("SEC 1 key: %v", err)
	}
}

// upstreamScript is the OpenSSL recipe docs/ca.md gives for an upstream CA
// (an organisation root and an issuing CA for Moatless).
const upstreamScript = `
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout root.key -out root.pem -days 3650 -subj "/O=Example Org/CN=Example Root CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout upstream.key -out upstream.csr -subj "/O=Example Org/CN=Moatless upstream CA"
printf 'basicConstraints=critical,CA:TRUE,pathlen:1\nkeyUsage=critical,keyCertSign,cRLSign\n' > upstream.ext
openssl x509 -req -in upstream.csr -CA root.pem -CAkey root.key -CAcreateserial \
  -days 365 -extfile upstream.ext -out upstream.pem
chmod 600 root.key upstream.key
`

// TestUpstreamMadeByOpenSSL checks interoperability both ways: an upstream
// CA made by OpenSSL loads, and OpenSSL verifies the SVIDs issued under it
// with only the root.
func TestUpstreamMadeByOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	run := func(script string) string {
		t.Helper()
		cmd := exec.Command("sh", "-ec", script)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", script, err, out)
		}
		return string(out)
	}
	run(upstreamScript)
	up, err := LoadUpstream(filepath.Join(dir, "upstream.pem"), filepath.Join(dir, "upstream.key"), filepath.Join(dir, "root.pem"))
	if err != nil {
		t.Fatalf("LoadUpstream: %v", err)
	}
	e := newEnv(t, func(o *Options) { o.Upstream = up })
	is := mustSign(t, e.ca, testID, 0)
	writeFile(t, dir, "leaf.pem", pemCerts(is.Chain[0]))
	writeFile(t, dir, "chain.pem", pemCerts(is.Chain[1:]...))
	out := run("openssl verify -x509_strict -purpose sslclient -CAfile root.pem -untrusted chain.pem leaf.pem")
	if !strings.Contains(out, "leaf.pem: OK") {
		t.Errorf("openssl verify: %s", out)
	}
	out = run("openssl x509 -in leaf.pem -noout -ext subjectAltName,basicConstraints,keyUsage,extendedKeyUsage")
	for _, want := range []string{"URI:" + testID.String(), "CA:FALSE", "Digital Signature", "TLS Web Client Authentication"} {
		if !strings.Contains(out, want) {
			t.Errorf("openssl x509 output lacks %q:\n%s", want, out)
		}
	}
}

// OpenSSL verifies a self-signed-mode SVID against the bundle root.
func TestSelfSignedVerifiedByOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	e := newEnv(t, nil)
	is := mustSign(t, e.ca, testID, 0)
	writeFile(t, dir, "bundle.pem", pemCerts(e.ca.Bundle().X509Authorities()...))
	writeFile(t, dir, "leaf.pem", pemCerts(is.Chain[0]))
	cmd := exec.Command("openssl", "verify", "-x509_strict", "-purpose", "sslserver", "-CAfile", "bundle.pem", "leaf.pem")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "leaf.pem: OK") {
		t.Errorf("openssl verify: %v\n%s", err, out)
	}
}

package extauthz

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/policy/policytest"
	"github.com/moatless/moatless/internal/testpki"
)

// envoyCertificate is a certificate as Envoy puts it in
// AttributeContext.Peer.certificate (include_peer_certificate): PEM,
// URL-encoded.
func envoyCertificate(der []byte) string {
	return url.PathEscape(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
}

// TestCertBoundTokenThroughEnvoy: a token bound to a client certificate
// (cnf x5t#S256, RFC 8705) is accepted through ext_authz when Envoy
// reports that certificate as the peer's (include_peer_certificate), as
// the sidecar accepts it on the connection that presented it, and
// refused (401) with another certificate, none, or one Envoy's encoding
// does not explain. Without it every bound token was refused.
func TestCertBoundTokenThroughEnvoy(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	certA := ca.SVID(t, "spiffe://example.org/ns/istio-system/sa/ingress", 0).Chain[0]
	certB := ca.SVID(t, "spiffe://example.org/ns/istio-system/sa/other", 0).Chain[0]
	s, sign := issuerServer(t, authn.Options{}, nil)
	now := time.Now()
	bound := sign(map[string]any{"iss": "https://idp.example", "sub": "alice", "exp": now.Add(time.Hour).Unix(),
		"cnf": map[string]any{"x5t#S256": policy.CertThumbprint(certA)}})
	unbound := sign(map[string]any{"iss": "https://idp.example", "sub": "alice", "exp": now.Add(time.Hour).Unix()})
	pemA := envoyCertificate(certA.Raw)
	cases := []struct {
		name  string
		token string
		cert  string
		code  codes.Code
	}{
		{"bound_same_certificate", bound, pemA, codes.OK},
		{"bound_same_certificate_plus_escaped", bound, strings.ReplaceAll(pemA, "+", "%2B"), codes.OK},
		{"bound_other_certificate", bound, envoyCertificate(certB.Raw), codes.Unauthenticated},
		{"bound_no_certificate", bound, "", codes.Unauthenticated},
		{"bound_certificate_not_pem", bound, url.PathEscape("not a certificate"), codes.Unauthenticated},
		{"bound_certificate_bad_escape", bound, pemA[:len(pemA)-1] + "%", codes.Unauthenticated},
		{"bound_certificate_trailing_data", bound, pemA + url.PathEscape("more"), codes.Unauthenticated},
		{"unbound_with_certificate", unbound, pemA, codes.OK},
		{"unbound_without_certificate", unbound, "", codes.OK},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := check("GET", "/", map[string]string{"authorization": "Bearer " + c.token}, "app=x", now)
			req.Attributes.Source.Certificate = c.cert
			resp, err := s.Check(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			if got := codes.Code(resp.GetStatus().GetCode()); got != c.code {
				t.Fatalf("status %v (%s), want %v", got, resp.GetStatus().GetMessage(), c.code)
			}
		})
	}
}

// FuzzCertThumbprint: any certificate field yields "" or the thumbprint
// of the one PEM CERTIFICATE block it encodes, never a panic.
func FuzzCertThumbprint(f *testing.F) {
	ca := testpki.NewCA(f, "example.org")
	der := ca.SVID(f, "spiffe://example.org/ns/a/sa/b", 0).Chain[0].Raw
	f.Add(envoyCertificate(der))
	f.Add(envoyCertificate(der) + envoyCertificate(der))
	f.Add("%ZZ")
	f.Add("-----BEGIN CERTIFICATE-----%0AAAAA%0A-----END CERTIFICATE-----%0A")
	f.Fuzz(func(t *testing.T, enc string) {
		got := certThumbprint(enc)
		if got == "" {
			return
		}
		text, err := url.PathUnescape(enc)
		if err != nil {
			t.Fatalf("%q: thumbprint of an undecodable field", enc)
		}
		b, _ := pem.Decode([]byte(text))
		if b == nil || b.Type != "CERTIFICATE" {
			t.Fatalf("%q: thumbprint without a certificate block", enc)
		}
		sum := sha256.Sum256(b.Bytes)
		if want := base64.RawURLEncoding.EncodeToString(sum[:]); got != want {
			t.Fatalf("%q: thumbprint %s, want %s", enc, got, want)
		}
	})
}

// issuerServer is a Server deciding for namespace prod under one
// RequestAuthentication rule that trusts a test issuer,
// https://idp.example, and the function that signs its tokens. vopts
// configure the verifier (its Logger is set), opts (when not nil) the
// Server.
func issuerServer(t *testing.T, vopts authn.Options, opts func(*Config)) (*Server, func(map[string]any) string) {
	t.Helper()
	jwks, sign := policytest.Issuer(t)
	set := compileSet(t, fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: prod}
spec:
  jwtRules:
  - issuer: https://idp.example
    jwks: '%s'
`, jwks))
	vopts.Logger = quiet()
	v := authn.NewVerifier(vopts)
	t.Cleanup(func() { v.Close() })
	cfg := Config{Policy: func() (*policy.Set, uint64) { return set, 1 }, Verifier: v, Destination: policy.Destination{Namespace: "prod"}, Logger: quiet()}
	if opts != nil {
		opts(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, sign
}

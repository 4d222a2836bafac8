package extauthz

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/policy/policytest"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// TestForgedHeaders is the attack of a caller who sends, through Envoy,
// the headers the app trusts because Moatless writes them: the
// RequestAuthentication output (outputClaimToHeaders) on a request
// without a token, under its own name or a "_" spelling, and a "_" twin of
// a header a policy reads. Envoy forwards whatever ext_authz does not
// remove, and WSGI, CGI, PHP and Rack read x_user as HTTP_X_USER, the
// same variable as x-user; the sidecar drops these (proxy/headers.go), so
// ext_authz must neither decide on them nor let them through.
func TestForgedHeaders(t *testing.T) {
	jwks, sign := policytest.Issuer(t)
	set := compileSet(t, fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: prod}
spec:
  jwtRules:
  - issuer: https://idp.example
    jwks: '%s'
    outputClaimToHeaders: [{header: x-user, claim: sub}, {header: x-tenant, claim: tenant}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: admin-only, namespace: prod}
spec:
  rules:
  - to: [{operation: {paths: [/admin]}}]
    when: [{key: "request.headers[x-user]", values: [admin]}]
  - to: [{operation: {paths: [/public]}}]
    when: [{key: "request.headers[x-plan]", values: [free]}]
`, jwks))
	v := authn.NewVerifier(authn.Options{Logger: quiet()})
	t.Cleanup(func() { v.Close() })
	s, err := New(Config{Policy: func() (*policy.Set, uint64) { return set, 1 }, Verifier: v, Destination: policy.Destination{Namespace: "prod"}, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	token := func(sub string) string {
		return "Bearer " + sign(map[string]any{"iss": "https://idp.example", "sub": sub, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()})
	}
	cases := []struct {
		name    string
		path    string
		headers map[string]string
		raw     bool // as Envoy's encode_raw_headers sends them (header_map)
		code    codes.Code
		remove  []string // headers Envoy must remove, at least
		set     map[string]string
	}{
		{"no_token_forged_output_header", "/admin", map[string]string{"x-user": "admin"}, false, codes.PermissionDenied, nil, nil},
		{"no_token_forged_output_header_raw", "/admin", map[string]string{"x-user": "admin"}, true, codes.PermissionDenied, nil, nil},
		{"no_token_forged_underscore_output_header", "/admin", map[string]string{"x_user": "admin"}, false, codes.PermissionDenied, nil, nil},
		{"forged_output_header_removed_on_allow", "/public", map[string]string{"x-plan": "free", "x-user": "admin", "x_user": "admin", "x-tenant": "other"}, false, codes.OK, []string{"x-user", "x_user", "x-tenant"}, nil},
		{"forged_output_header_removed_on_allow_raw", "/public", map[string]string{"x-plan": "free", "x_tenant": "other"}, true, codes.OK, []string{"x_tenant"}, nil},
		{"token_sets_header_removes_twin_and_unset_claim", "/admin", map[string]string{"authorization": token("admin"), "x_user": "root", "x-tenant": "other"}, false, codes.OK, []string{"x_user", "x-tenant"}, map[string]string{"x-user": "admin"}},
		{"token_overrides_forged_header", "/admin", map[string]string{"authorization": token("alice"), "x-user": "admin"}, false, codes.PermissionDenied, nil, nil},
		{"policy_header_twin_removed", "/public", map[string]string{"x-plan": "free", "x_plan": "enterprise"}, false, codes.OK, []string{"x_plan"}, nil},
		{"policy_header_twin_alone_not_read", "/public", map[string]string{"x_plan": "free"}, false, codes.PermissionDenied, nil, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := check("GET", c.path, c.headers, "app=x", now)
			if c.raw {
				h := req.Attributes.Request.Http
				for k, v := range h.Headers {
					h.HeaderMap = &corev3.HeaderMap{Headers: append(h.GetHeaderMap().GetHeaders(), &corev3.HeaderValue{Key: k, RawValue: []byte(v)})}
				}
				h.Headers = nil
			}
			resp, err := s.Check(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			if got := codes.Code(resp.GetStatus().GetCode()); got != c.code {
				t.Fatalf("status %v (%s), want %v", got, resp.GetStatus().GetMessage(), c.code)
			}
			if c.code != codes.OK {
				return
			}
			ok := resp.GetOkResponse()
			set := map[string]string{}
			for _, h := range ok.GetHeaders() {
				set[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
			}
			for _, k := range c.remove {
				if !slices.Contains(ok.GetHeadersToRemove(), k) {
					t.Errorf("Envoy is not told to remove %s: headers_to_remove %v", k, ok.GetHeadersToRemove())
				}
			}
			for k, v := range c.set {
				if set[k] != v {
					t.Errorf("header %s=%q, want %q", k, set[k], v)
				}
				if slices.Contains(ok.GetHeadersToRemove(), k) {
					t.Errorf("%s is set and removed: %v", k, ok.GetHeadersToRemove())
				}
			}
		})
	}
}

type panickyVerifier struct{}

func (panickyVerifier) Verify([]*securityv1beta1.JWTRule, *policy.Request) (*policy.Auth, error) {
	panic("verifier bug")
}

// TestCheckPanicDenies: a panic while deciding (here in the token
// verifier) answers a denial and keeps serving. gRPC does not recover a
// handler's panic: the process would exit, and an Envoy configured with
// failure_mode_allow reads an unreachable ext_authz server as an allow
// for every request until it is back.
func TestCheckPanicDenies(t *testing.T) {
	set, _ := regoSet(t)
	s, err := New(Config{Policy: func() (*policy.Set, uint64) { return set, 1 }, Verifier: panickyVerifier{}, Destination: policy.Destination{Namespace: "prod"}, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	client := serve(t, s, "unix:"+filepath.Join(t.TempDir(), "authz.sock"), nil, nil, grpc.WithTransportCredentials(insecure.NewCredentials()))
	for range 2 {
		resp, err := client.Check(context.Background(), check("GET", "/records/alice/7", map[string]string{"authorization": "Bearer x.y.z"}, "app=records", time.Now()))
		if err != nil {
			t.Fatal(err)
		}
		if got := codes.Code(resp.GetStatus().GetCode()); got != codes.PermissionDenied || resp.GetDeniedResponse().GetStatus().GetCode() != 403 {
			t.Fatalf("status %v %v, want PERMISSION_DENIED with 403", got, resp.GetDeniedResponse().GetStatus())
		}
	}
}

// TestForgedTwinOfRegoHeader: a Rego result's header (x-document-owner)
// is set on allow; the caller's x_document_owner, which a CGI-style app
// reads as the same variable, is removed.
func TestForgedTwinOfRegoHeader(t *testing.T) {
	set, token := regoSet(t)
	v := authn.NewVerifier(authn.Options{Logger: quiet()})
	t.Cleanup(func() { v.Close() })
	s, _ := New(Config{Policy: func() (*policy.Set, uint64) { return set, 1 }, Verifier: v, Destination: policy.Destination{Namespace: "prod"}, Logger: quiet()})
	alice := "Bearer " + token(map[string]any{"sub": "alice", "role": "user"})
	resp, err := s.Check(context.Background(), check("GET", "/documents/d1", map[string]string{"authorization": alice, "x_document_owner": "mallory"}, "app=documents", time.Now()))
	if err != nil || codes.Code(resp.GetStatus().GetCode()) != codes.OK {
		t.Fatalf("%v %v", resp, err)
	}
	if rm := resp.GetOkResponse().GetHeadersToRemove(); !slices.Contains(rm, "x_document_owner") || slices.Contains(rm, "x-document-owner") {
		t.Fatalf("headers_to_remove %v, want x_document_owner and not the header set", rm)
	}
}

// TestNonSPIFFEPrincipal: Envoy's source.principal is a certificate's URI
// SAN, else its DNS SAN, else its subject, so a client certificate of a
// CA that issues names of the requester's choosing (a partner or
// corporate CA at an ingress) can read "CN=x/ns/prod/sa/admin". Policies
// name SPIFFE IDs: anything else is no principal, as on a sidecar (which
// takes only SPIFFE certificates) and in "moatless policy check" (which
// refuses such a principal), never a name a pattern might match.
func TestNonSPIFFEPrincipal(t *testing.T) {
	set := compileSet(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: prod}
spec:
  rules:
  - from: [{source: {namespaces: [prod]}}]
    to: [{operation: {paths: [/ns]}}]
  - from: [{source: {principals: ["*/sa/admin"]}}]
    to: [{operation: {paths: [/suffix]}}]
  - from: [{source: {principals: ["*"]}}]
    to: [{operation: {paths: [/any]}}]
`)
	s, _ := New(Config{Policy: func() (*policy.Set, uint64) { return set, 1 }, Destination: policy.Destination{Namespace: "prod"}, Logger: quiet()})
	cases := []struct {
		name, principal, path string
		code                  codes.Code
	}{
		{"spiffe_namespace", "spiffe://example.org/ns/prod/sa/web", "/ns", codes.OK},
		{"spiffe_suffix", "spiffe://example.org/ns/dev/sa/admin", "/suffix", codes.OK},
		{"spiffe_any", "spiffe://example.org/ns/dev/sa/web", "/any", codes.OK},
		{"subject_namespace", "CN=x/ns/prod/sa/web,O=Partner", "/ns", codes.PermissionDenied},
		{"subject_suffix", "O=Partner,CN=x/ns/dev/sa/admin", "/suffix", codes.PermissionDenied},
		{"dns_san_any", "partner.example", "/any", codes.PermissionDenied},
		{"other_uri_san_suffix", "https://partner.example/ns/prod/sa/admin", "/suffix", codes.PermissionDenied},
		{"spiffe_uppercase_scheme", "SPIFFE://example.org/ns/prod/sa/admin", "/suffix", codes.PermissionDenied},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := check("GET", c.path, nil, "app=x", time.Now())
			req.Attributes.Source.Principal = c.principal
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

// TestListenKeepsNonSocket: --listen unix:PATH naming a file that is not a
// socket (a typo for a config file, a path another program owns) is an
// error, and the file is left as it was; only a stale socket is replaced.
func TestListenKeepsNonSocket(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if l, _, err := Listen("unix:"+file, nil, nil); err == nil {
		l.Close()
		t.Fatal("a regular file was replaced by the socket")
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep" {
		t.Fatalf("the file is gone or changed: %q %v", b, err)
	}
	sock := filepath.Join(dir, "authz.sock")
	for range 2 { // the second finds the first's socket file, stale
		l, _, err := Listen("unix:"+sock, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
	}
}

func FuzzFoldsTo(f *testing.F) {
	f.Add("X_User", "x-user")
	f.Add("x-user", "x-user")
	f.Add("X-Üser", "x-üser")
	f.Fuzz(func(t *testing.T, h, g string) {
		for _, want := range []string{g, foldHeaderName(h)} {
			if got := foldsTo(h, want); got != (foldHeaderName(h) == want) {
				t.Fatalf("foldsTo(%q, %q) = %v", h, want, got)
			}
		}
	})
}

// TestStalledHandshakeClosed is the attack of a network peer that opens
// TCP connections to the mutual-TLS listener and never completes a
// handshake, each holding a descriptor and a goroutine: the server closes
// them after Config.HandshakeTimeout (gRPC's own default is 120 s).
func TestStalledHandshakeClosed(t *testing.T) {
	set, _ := regoSet(t)
	s, _ := New(Config{Policy: func() (*policy.Set, uint64) { return set, 1 }, Logger: quiet(), HandshakeTimeout: 200 * time.Millisecond})
	ca := testpki.NewCA(t, "example.org")
	conf := &tls.Config{Certificates: []tls.Certificate{ca.ServerCert(t, "", "127.0.0.1")}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert}
	c, err := net.Dial("tcp", listen(t, s, "127.0.0.1:0", conf, nil).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the stalled connection is still open: %v", err)
	}
}

// TestConnectWithoutPath: Envoy sends a CONNECT tunnel's check with no
// path (its target is an authority); policy refuses CONNECT, as a sidecar
// does. Any other HTTP check without a path was read as "/", which an
// ALLOW on paths ["/*"] admits: it is now a bad check request, denied.
func TestConnectWithoutPath(t *testing.T) {
	set := compileSet(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: prod}
spec:
  rules: [{to: [{operation: {paths: ["/*"]}}]}]
`)
	s, _ := New(Config{Policy: func() (*policy.Set, uint64) { return set, 1 }, Destination: policy.Destination{Namespace: "prod"}, Logger: quiet()})
	for _, c := range []struct {
		method, path string
		code         codes.Code
	}{
		{"GET", "/x", codes.OK},
		{"CONNECT", "", codes.PermissionDenied},
		{"GET", "", codes.PermissionDenied},
	} {
		req := check(c.method, c.path, nil, "app=x", time.Now())
		req.Attributes.Request.Http.Host = "internal.example:22"
		resp, err := s.Check(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if got := codes.Code(resp.GetStatus().GetCode()); got != c.code {
			t.Errorf("%s %q: %v, want %v", c.method, c.path, got, c.code)
		}
	}
}

// compileSet compiles one YAML document set of policies.
func compileSet(t *testing.T, yaml string) *policy.Set {
	t.Helper()
	var b policy.Bundle
	if err := b.Add("p.yaml", []byte(yaml)); err != nil {
		t.Fatal(err)
	}
	set, err := b.Compile(policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// TestForgedTokenHeaderTwin is the attack of a caller who sends, through
// Envoy, a token the mesh never verified under a "_" spelling of the
// header a RequestAuthentication rule reads tokens from (x_jwt_assertion
// for x-jwt-assertion). The verifier reads x-jwt-assertion only, so the
// request passes as tokenless wherever anonymous requests are allowed;
// a CGI-style app reads x_jwt_assertion as HTTP_X_JWT_ASSERTION, the
// variable it takes for the token the mesh verified (forwardOriginalToken),
// and decodes the forged claims. The sidecar drops such twins
// (proxy/headers.go, authn.TokenHeaders); ext_authz must have Envoy drop
// them too, on requests with a token and without.
func TestForgedTokenHeaderTwin(t *testing.T) {
	jwks, sign := policytest.Issuer(t)
	set := compileSet(t, fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: prod}
spec:
  jwtRules:
  - issuer: https://idp.example
    jwks: '%s'
    fromHeaders: [{name: x-jwt-assertion}]
    forwardOriginalToken: true
`, jwks))
	v := authn.NewVerifier(authn.Options{Logger: quiet()})
	t.Cleanup(func() { v.Close() })
	s, err := New(Config{Policy: func() (*policy.Set, uint64) { return set, 1 }, Verifier: v, Destination: policy.Destination{Namespace: "prod"}, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	good := sign(map[string]any{"iss": "https://idp.example", "sub": "alice", "exp": now.Add(time.Hour).Unix()})
	forged := "eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlIiwic3ViIjoiYWRtaW4ifQ."
	cases := []struct {
		name    string
		headers map[string]string
		remove  []string
		keep    []string
	}{
		{"twin_alone", map[string]string{"x_jwt_assertion": forged}, []string{"x_jwt_assertion"}, nil},
		{"twin_mixed_case", map[string]string{"X_Jwt-Assertion": forged}, []string{"x_jwt-assertion"}, nil},
		{"twin_beside_verified_token", map[string]string{"x-jwt-assertion": good, "x_jwt_assertion": forged}, []string{"x_jwt_assertion"}, []string{"x-jwt-assertion"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, err := s.Check(context.Background(), check("GET", "/", c.headers, "app=x", now))
			if err != nil {
				t.Fatal(err)
			}
			if got := codes.Code(resp.GetStatus().GetCode()); got != codes.OK {
				t.Fatalf("status %v (%s), want OK", got, resp.GetStatus().GetMessage())
			}
			rm := resp.GetOkResponse().GetHeadersToRemove()
			for _, k := range c.remove {
				if !slices.Contains(rm, k) {
					t.Errorf("Envoy is not told to remove %s: headers_to_remove %v", k, rm)
				}
			}
			for _, k := range c.keep {
				if slices.Contains(rm, k) {
					t.Errorf("the verified, forwarded %s is removed: %v", k, rm)
				}
			}
		})
	}
}

// TestUnauthenticatedRecordNamesVerifiedToken: the record and the
// decision log of a 401 name the token's issuer and subject when its
// signature verified before it was refused (revoked, another audience):
// whose credential was presented, perhaps relayed by the caller. A token
// whose signature does not verify names nobody, whatever its claims say.
func TestUnauthenticatedRecordNamesVerifiedToken(t *testing.T) {
	jwks, sign := policytest.Issuer(t)
	_, forge := policytest.Issuer(t) // another key under the same kid
	set := compileSet(t, fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: prod}
spec:
  jwtRules:
  - issuer: https://idp.example
    jwks: '%s'
    audiences: [records]
`, jwks))
	v := authn.NewVerifier(authn.Options{Logger: quiet()})
	t.Cleanup(func() { v.Close() })
	v.SetRevokedTokens([]wire.RevokedTokenID{{JTI: "stolen"}})
	var mu sync.Mutex
	var recs []Record
	var logBuf bytes.Buffer
	s, err := New(Config{Policy: func() (*policy.Set, uint64) { return set, 1 }, Verifier: v, Destination: policy.Destination{Namespace: "prod"},
		Logger: quiet(), DecisionLog: slog.New(slog.NewJSONHandler(&logBuf, nil)),
		OnDecision: func(_ context.Context, r Record) { mu.Lock(); recs = append(recs, r); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cl := func(aud, jti string) map[string]any {
		return map[string]any{"iss": "https://idp.example", "sub": "spiffe://example.org/ns/prod/sa/reports", "aud": aud, "jti": jti, "exp": now.Add(time.Hour).Unix()}
	}
	cases := []struct {
		name  string
		token string
		named bool
	}{
		{"revoked", sign(cl("records", "stolen")), true},
		{"another_audience", sign(cl("billing", "j2")), true},
		{"forged_signature", forge(cl("records", "j3")), false},
		{"forged_signature_another_audience", forge(cl("billing", "j4")), false},
		{"forged_signature_revoked", forge(cl("records", "stolen")), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mu.Lock()
			recs = nil
			mu.Unlock()
			logBuf.Reset()
			resp, err := s.Check(context.Background(), check("GET", "/", map[string]string{"authorization": "Bearer " + c.token}, "app=x", now))
			if err != nil {
				t.Fatal(err)
			}
			if got := codes.Code(resp.GetStatus().GetCode()); got != codes.Unauthenticated {
				t.Fatalf("status %v (%s), want Unauthenticated", got, resp.GetStatus().GetMessage())
			}
			mu.Lock()
			defer mu.Unlock()
			if len(recs) != 1 {
				t.Fatalf("%d records", len(recs))
			}
			r := recs[0]
			logged := logBuf.String()
			if c.named {
				if r.TokenIssuer != "https://idp.example" || r.TokenSubject != "spiffe://example.org/ns/prod/sa/reports" {
					t.Fatalf("record names %q of %q", r.TokenSubject, r.TokenIssuer)
				}
				if !strings.Contains(logged, `"token_subject":"spiffe://example.org/ns/prod/sa/reports"`) {
					t.Fatalf("decision log lacks the token's subject: %s", logged)
				}
				return
			}
			if r.TokenIssuer != "" || r.TokenSubject != "" || strings.Contains(logged, "token_subject") {
				t.Fatalf("a token that did not verify names %q of %q; log %s", r.TokenSubject, r.TokenIssuer, logged)
			}
		})
	}
}

// TestTokenQueryParameterRemoved: a token verified from a query
// parameter (access_token, a rule's default location, or fromParams) is
// removed from the request Envoy forwards unless the rule forwards the
// original token, as the sidecar removes it: a bearer token left in the
// URL reaches the app, its access logs and every Referer it sends.
func TestTokenQueryParameterRemoved(t *testing.T) {
	jwks, sign := policytest.Issuer(t)
	set := compileSet(t, fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: prod}
spec:
  jwtRules:
  - issuer: https://idp.example
    jwks: '%s'
  - issuer: https://fwd.example
    jwks: '%s'
    fromParams: [t]
    forwardOriginalToken: true
`, jwks, jwks))
	v := authn.NewVerifier(authn.Options{Logger: quiet()})
	t.Cleanup(func() { v.Close() })
	s, err := New(Config{Policy: func() (*policy.Set, uint64) { return set, 1 }, Verifier: v, Destination: policy.Destination{Namespace: "prod"}, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tok := func(iss string) string {
		return sign(map[string]any{"iss": iss, "sub": "alice", "exp": now.Add(time.Hour).Unix()})
	}
	cases := []struct {
		name    string
		path    string
		headers map[string]string
		want    []string
	}{
		{"default_param", "/r?x=1&access_token=" + tok("https://idp.example"), nil, []string{"access_token"}},
		{"forwarded_param_kept", "/r?t=" + tok("https://fwd.example"), nil, nil},
		{"header_token", "/r?x=1", map[string]string{"authorization": "Bearer " + tok("https://idp.example")}, nil},
		{"no_token", "/r?access_token=", nil, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, err := s.Check(context.Background(), check("GET", c.path, c.headers, "app=x", now))
			if err != nil {
				t.Fatal(err)
			}
			if got := codes.Code(resp.GetStatus().GetCode()); got != codes.OK {
				t.Fatalf("status %v (%s), want OK", got, resp.GetStatus().GetMessage())
			}
			if got := resp.GetOkResponse().GetQueryParametersToRemove(); !slices.Equal(got, c.want) {
				t.Fatalf("query_parameters_to_remove %v, want %v", got, c.want)
			}
		})
	}
}

// TestDeniedRecordNamesVerifiedToken: the record of a request denied by
// policy although its token verified names that token's issuer and
// subject, as a sidecar's and the gateway's records do, so that audit
// and detection can attribute it. Fails on the parent (only a 401's
// record named a token).
func TestDeniedRecordNamesVerifiedToken(t *testing.T) {
	jwks, sign := policytest.Issuer(t)
	set := compileSet(t, fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: prod}
spec:
  jwtRules:
  - issuer: https://idp.example
    jwks: '%s'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: prod}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
`, jwks))
	v := authn.NewVerifier(authn.Options{Logger: quiet()})
	t.Cleanup(func() { v.Close() })
	var mu sync.Mutex
	var recs []Record
	s, err := New(Config{Policy: func() (*policy.Set, uint64) { return set, 1 }, Verifier: v, Destination: policy.Destination{Namespace: "prod"},
		Logger: quiet(), DecisionLog: quiet(),
		OnDecision: func(_ context.Context, r Record) { mu.Lock(); recs = append(recs, r); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tok := sign(map[string]any{"iss": "https://idp.example", "sub": "spiffe://example.org/ns/prod/sa/reports", "exp": now.Add(time.Hour).Unix()})
	resp, err := s.Check(context.Background(), check("DELETE", "/", map[string]string{"authorization": "Bearer " + tok}, "app=x", now))
	if err != nil {
		t.Fatal(err)
	}
	if got := codes.Code(resp.GetStatus().GetCode()); got != codes.PermissionDenied {
		t.Fatalf("status %v (%s), want PermissionDenied", got, resp.GetStatus().GetMessage())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(recs) != 1 || recs[0].TokenIssuer != "https://idp.example" || recs[0].TokenSubject != "spiffe://example.org/ns/prod/sa/reports" {
		t.Fatalf("records %+v", recs)
	}
}

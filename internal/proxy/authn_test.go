package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/policy/policytest"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// TestRequestAuthenticationWithRealEngine runs the inbound path with the
// real policy engine and the real JWT verifier: an invalid token is 401
// with WWW-Authenticate, a valid one reaches the app with the claim header
// RequestAuthentication asks for, no token is decided by policy, and a
// revoked jti is refused.
func TestRequestAuthenticationWithRealEngine(t *testing.T) {
	for _, v := range clientPaths {
		t.Run(v.name, func(t *testing.T) { testRequestAuthenticationWithRealEngine(t, v) })
	}
}

func testRequestAuthenticationWithRealEngine(t *testing.T, v clientPath) {
	jwks, token := newTestIssuer(t)
	set := compileSet(t, fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: prod}
spec:
  jwtRules:
  - issuer: https://issuer.example
    jwks: '%s'
    outputClaimToHeaders: [{header: x-user, claim: sub}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: need-user, namespace: prod}
spec:
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ["https://issuer.example/*"]}}]
`, jwks))

	seen := make(chan string, 8)
	l := listen(t)
	streaming := make(chan struct{}, 1)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stream" {
			// A long response: one chunk, then wait until the caller is gone.
			io.WriteString(w, "first chunk\n")
			w.(http.Flusher).Flush()
			streaming <- struct{}{}
			<-r.Context().Done()
			return
		}
		seen <- r.Header.Get("X-User")
		io.WriteString(w, "ok")
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	ca := testpki.NewCA(t, "example.org")
	s, inL := startEngineSidecar(t, ca, set, l.Addr().String(), false, v.server.edit)
	c := v.client(t, ca, frontendID, ordersID)
	now := time.Now().Unix()
	valid := token(map[string]any{"iss": "https://issuer.example", "sub": "alice", "exp": now + 300, "jti": "j-1"})
	tests := []struct {
		name     string
		auth     string
		wantCode int
		wantUser string
		wantAuth string
	}{
		{"valid_token_allowed_with_claim_header", "Bearer " + valid, 200, "alice", ""},
		{"tampered_token_is_401", "Bearer " + valid[:len(valid)-4] + "AAAA", 401, "", `Bearer error="invalid_token"`},
		{"expired_token_is_401", "Bearer " + token(map[string]any{"iss": "https://issuer.example", "sub": "bob", "exp": now - 3600}), 401, "", `Bearer error="invalid_token"`},
		{"no_token_denied_by_policy", "", 403, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "https://"+inL.Addr().String()+"/", nil)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			req.Header.Set("X-User", "forged")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.wantCode || resp.Header.Get("Www-Authenticate") != tc.wantAuth {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, resp.Header.Get("Www-Authenticate"), tc.wantCode, tc.wantAuth)
			}
			if tc.wantCode == 200 {
				if got := <-seen; got != tc.wantUser {
					t.Fatalf("app saw x-user %q, want %q", got, tc.wantUser)
				}
			}
		})
	}
	t.Run("revoking_the_jti_cuts_a_streaming_request", func(t *testing.T) {
		live := token(map[string]any{"iss": "https://issuer.example", "sub": "carol", "exp": now + 300, "jti": "j-stream"})
		req, _ := http.NewRequest("GET", "https://"+inL.Addr().String()+"/stream", nil)
		req.Header.Set("Authorization", "Bearer "+live)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		<-streaming
		buf := make([]byte, 12)
		if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first chunk\n" {
			t.Fatalf("first chunk: %q %v", buf, err)
		}
		if n := s.SetRevocations(&wire.Revocations{TokenIDs: []wire.RevokedTokenID{{JTI: "j-stream", ExpiresAt: time.Now().Add(time.Hour)}}}); n < 1 {
			t.Fatalf("closed %d, want the streaming request", n)
		}
		done := make(chan error, 1)
		go func() { _, err := io.ReadAll(resp.Body); done <- err }()
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("stream ended cleanly; want it cut off")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("streaming request still open after its token was revoked")
		}
	})
	t.Run("revoked_jti_is_401", func(t *testing.T) {
		s.SetRevocations(&wire.Revocations{TokenIDs: []wire.RevokedTokenID{{JTI: "j-1", ExpiresAt: time.Now().Add(time.Hour)}}})
		req, _ := http.NewRequest("GET", "https://"+inL.Addr().String()+"/", nil)
		req.Header.Set("Authorization", "Bearer "+valid)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Fatalf("revoked token: %d", resp.StatusCode)
		}
	})
	t.Run("token_of_a_revoked_identity_is_401", func(t *testing.T) {
		// Issued to a workload since revoked: refused however valid, while
		// the caller's own connection (another identity) stays allowed.
		const reportsID = "spiffe://example.org/ns/prod/sa/reports"
		stolen := token(map[string]any{"iss": "https://issuer.example", "sub": "dave", "azp": reportsID, "exp": now + 300, "jti": "j-azp"})
		for _, tc := range []struct {
			name string
			rev  *wire.Revocations
			want int
		}{
			{"before_the_revocation", &wire.Revocations{}, 200},
			{"after_the_revocation", &wire.Revocations{SPIFFEIDs: []string{reportsID}}, 401},
		} {
			s.SetRevocations(tc.rev)
			req, _ := http.NewRequest("GET", "https://"+inL.Addr().String()+"/", nil)
			req.Header.Set("Authorization", "Bearer "+stolen)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("%s: %d, want %d", tc.name, resp.StatusCode, tc.want)
			}
			if tc.want == 200 {
				<-seen
			}
		}
	})
}

// TestCertBoundTokenThroughInbound: the sidecar hands the peer's
// certificate thumbprint to the verifier, so a token bound to a client
// certificate (RFC 8705 cnf x5t#S256) is accepted only on a connection
// that presented that certificate — not from another certificate of the
// same SPIFFE ID.
func TestCertBoundTokenThroughInbound(t *testing.T) {
	jwks, token := newTestIssuer(t)
	set := compileSet(t, fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: prod}
spec:
  jwtRules: [{issuer: "https://issuer.example", jwks: '%s'}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: need-token, namespace: prod}
spec:
  action: ALLOW
  rules: [{from: [{source: {requestPrincipals: ["https://issuer.example/*"]}}]}]
`, jwks))
	ca := testpki.NewCA(t, "example.org")
	_, inL := startEngineSidecar(t, ca, set, echoApp(t), false)

	client := func(svid *testpki.SVID) *http.Client {
		ti := &tlsIdentity{src: newStaticIdentity(ca, svid), now: time.Now, revoked: func() *revocationSet { return nil }}
		tr := &http.Transport{TLSClientConfig: ti.clientConfig(spiffeid.RequireFromString(ordersID), "", nil)}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr}
	}
	holder := ca.SVID(t, frontendID, 0)
	other := ca.SVID(t, frontendID, 0) // same SPIFFE ID, another certificate
	bound := token(map[string]any{
		"iss": "https://issuer.example", "sub": "svc", "exp": time.Now().Unix() + 300,
		"cnf": map[string]any{"x5t#S256": policy.CertThumbprint(holder.Chain[0])},
	})

	tests := []struct {
		name     string
		c        *http.Client
		wantCode int
	}{
		{"from_the_bound_certificate", client(holder), 200},
		{"from_another_certificate_of_the_same_id", client(other), 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Twice: the second request hits the verifier's cache, which
			// must still check the binding against this connection.
			for range 2 {
				req, _ := http.NewRequest("GET", "https://"+inL.Addr().String()+"/", nil)
				req.Header.Set("Authorization", "Bearer "+bound)
				resp, err := tc.c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != tc.wantCode {
					t.Fatalf("got %d, want %d", resp.StatusCode, tc.wantCode)
				}
			}
		})
	}
}

// newTestIssuer makes a fresh ES256 key: jwks publishes it (key ID "k1")
// and token signs claims with it as a compact JWT.
func newTestIssuer(t testing.TB) (jwks string, token func(claims map[string]any) string) {
	return policytest.Issuer(t)
}

// compileSet compiles policy documents with the default options.
func compileSet(t testing.TB, docs string) *policy.Set {
	t.Helper()
	parsed, err := policy.Parse(strings.NewReader(docs))
	if err != nil {
		t.Fatal(err)
	}
	set, err := policy.Compile(parsed, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// startEngineSidecar starts the orders sidecar (SVID from ca) with one
// inbound listener forwarding to app, enforcing set with the real JWT
// verifier: given in Config when viaConfig, else pushed with
// SetAuthorizerContext as version 1.
// edit, when given, changes the config before the sidecar starts.
func startEngineSidecar(t testing.TB, ca *testpki.CA, set *policy.Set, app string, viaConfig bool, edit ...func(*Config)) (*Sidecar, net.Listener) {
	t.Helper()
	v := authn.NewVerifier(authn.Options{Logger: discardLogger()})
	t.Cleanup(func() { v.Close() })
	inL := listen(t)
	cfg := Config{
		Identity: newStaticIdentity(ca, ca.SVID(t, ordersID, 0)), Namespace: "prod",
		Inbound:  []Inbound{{Listener: inL, App: app}},
		Verifier: v,
	}
	if viaConfig {
		cfg.Authorizer = set
	}
	for _, e := range edit {
		e(&cfg)
	}
	s := startSidecar(t, cfg)
	if !viaConfig {
		s.SetAuthorizerContext(context.Background(), 1, set)
	}
	return s, inL
}

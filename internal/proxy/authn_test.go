package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
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
	set := userPolicies(t, jwks)

	seen := make(chan string, 8)
	l := listen(t)
	streaming := make(chan struct{}, 1)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" && r.Header.Get("Upgrade") != "" {
			// A WebSocket-style echo after a 101.
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			brw.Flush()
			io.Copy(conn, brw)
			return
		}
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
	t.Run("revoking_the_token_s_workload_cuts_a_streaming_request", func(t *testing.T) {
		// A token issued to a workload (its SPIFFE ID the authorized
		// party), relayed by another caller: isolating that workload cuts
		// the request off, as revoking the token's jti does.
		const owner = "spiffe://example.org/ns/prod/sa/reports"
		live := token(map[string]any{"iss": "https://issuer.example", "sub": "erin", "azp": owner, "exp": now + 300, "jti": "j-owned"})
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
		if n := s.SetRevocations(&wire.Revocations{SPIFFEIDs: []string{owner}}); n < 1 {
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
			t.Fatal("streaming request still open after its token's workload was revoked")
		}
		s.SetRevocations(nil)
	})
	t.Run("revoking_the_jti_cuts_an_upgraded_stream", func(t *testing.T) {
		live := token(map[string]any{"iss": "https://issuer.example", "sub": "dave", "exp": now + 300, "jti": "j-ws"})
		ti := &tlsIdentity{src: newStaticIdentity(ca, ca.SVID(t, frontendID, 0)), now: time.Now, revoked: func() *revocationSet { return nil }}
		conn, err := tls.Dial("tcp", inL.Addr().String(), ti.clientConfig(spiffeid.RequireFromString(ordersID), "", []string{"http/1.1"}))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: orders\r\nAuthorization: Bearer "+live+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		buf := make([]byte, 4)
		if _, err := io.WriteString(conn, "ping"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("echo before the revocation: %q %v", buf, err)
		}
		if n := s.SetRevocations(&wire.Revocations{TokenIDs: []wire.RevokedTokenID{{JTI: "j-ws", ExpiresAt: time.Now().Add(time.Hour)}}}); n < 1 {
			t.Fatalf("closed %d, want the upgraded stream", n)
		}
		io.WriteString(conn, "pong")
		if n, err := io.ReadFull(br, buf); err == nil {
			t.Fatalf("the upgraded stream of a revoked token still echoes %q", buf[:n])
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

// TestTokenMemoOnOneConnection: requests on one keep-alive connection,
// where the fast path remembers the token it accepted last (authn.Memo),
// are decided as on a new connection each: the same token again is
// allowed with its own identity, one byte changed is 401, another valid
// token gets its own identity, a token past its exp by the verifier's
// clock is 401, a rotated key set (the policy's JWKS replaced) refuses the
// old key's token, and revoking the token's jti closes the connection.
// On both server paths.
func TestTokenMemoOnOneConnection(t *testing.T) { forServerPaths(t, testTokenMemoOnOneConnection) }

func testTokenMemoOnOneConnection(t *testing.T, sp serverPath) {
	jwks, token := newTestIssuer(t)
	jwks2, token2 := newTestIssuer(t) // the issuer's next key
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	v := authn.NewVerifier(authn.Options{Logger: discardLogger(), Now: func() time.Time { return time.Unix(0, now.Load()) }})
	t.Cleanup(func() { v.Close() })
	ca := testpki.NewCA(t, "example.org")
	s, inL := startEngineSidecar(t, ca, userPolicies(t, jwks), userApp(t), false, sp.edit, func(c *Config) { c.Verifier = v })

	c, err := tls.Dial("tcp", inL.Addr().String(), &tls.Config{Certificates: []tls.Certificate{ca.SVID(t, frontendID, 0).TLSCertificate()},
		RootCAs: ca.Pool(), InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	send := func(tok string) (int, string, error) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: orders\r\nAuthorization: Bearer "+tok+"\r\n\r\n"); err != nil {
			return 0, "", err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return 0, "", err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b), nil
	}
	exp := time.Unix(0, now.Load()).Add(5 * time.Minute).Unix()
	alice := token(map[string]any{"iss": "https://issuer.example", "sub": "alice", "exp": exp, "jti": "j-alice"})
	bob := token(map[string]any{"iss": "https://issuer.example", "sub": "bob", "exp": exp + 600, "jti": "j-bob"})
	i := len(alice) - 10
	b := byte('A')
	if alice[i] == 'A' {
		b = 'B'
	}
	tampered := alice[:i] + string(b) + alice[i+1:]
	carol := token2(map[string]any{"iss": "https://issuer.example", "sub": "carol", "exp": exp + 60, "jti": "j-carol"})
	steps := []struct {
		name   string
		before func()
		tok    string
		code   int
		user   string
	}{
		{"first", nil, alice, 200, "alice"},
		{"same_token_again", nil, alice, 200, "alice"},
		{"one_byte_changed", nil, tampered, 401, ""},
		{"another_token", nil, bob, 200, "bob"},
		{"back_to_the_first", nil, alice, 200, "alice"},
		{"past_its_exp", func() { now.Add(int64(5*time.Minute + authn.DefaultLeeway + time.Second)) }, alice, 401, ""},
		{"still_valid_other", nil, bob, 200, "bob"},
		{"key_rotated", func() { s.SetAuthorizerContext(context.Background(), 2, userPolicies(t, jwks2)) }, bob, 401, ""},
		{"new_key", nil, carol, 200, "carol"},
	}
	for _, st := range steps {
		if st.before != nil {
			st.before()
		}
		code, user, err := send(st.tok)
		if err != nil {
			t.Fatalf("%s: the connection failed: %v", st.name, err)
		}
		if code != st.code || (code == 200 && user != st.user) {
			t.Fatalf("%s: %d %q, want %d %q", st.name, code, user, st.code, st.user)
		}
	}
	// Revoking the token the connection carries closes it.
	if n := s.SetRevocations(&wire.Revocations{TokenIDs: []wire.RevokedTokenID{{JTI: "j-carol", ExpiresAt: time.Now().Add(time.Hour)}}}); n < 1 && !sp.disable {
		t.Fatalf("revocation closed %d connections, want the one carrying the token", n)
	}
	if code, _, err := send(carol); err == nil && code != 401 {
		t.Fatalf("after revocation: %d on the same connection", code)
	}
}

// userPolicies are a RequestAuthentication of https://issuer.example
// with the keys jwks, its sub forwarded as x-user, and an ALLOW policy
// that wants a token of that issuer.
func userPolicies(t testing.TB, jwks string) *policy.Set {
	return compileSet(t, fmt.Sprintf(`apiVersion: security.istio.io/v1
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
}

// userApp answers each request with its x-user header.
func userApp(t testing.TB) string {
	t.Helper()
	l := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Header.Get("X-User")) })}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

package authn_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// issuer is a minimal OIDC-style issuer on loopback: a P-256 key, its
// JWKS at /jwks, and a way to mint tokens.
type issuer struct {
	srv *httptest.Server
	key *ecdsa.PrivateKey
	kid string
}

// startIssuer starts the issuer; the caller closes is.srv. Test helper:
// it panics on errors that cannot happen with the standard library.
func startIssuer() *issuer {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	is := &issuer{key: key, kid: "k1"}
	is.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: is.kid, Algorithm: "ES256", Use: "sig"}}}
		_ = json.NewEncoder(w).Encode(set)
	}))
	return is
}

func (is *issuer) token(claims map[string]any) string {
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: is.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", is.kid))
	if err != nil {
		panic(err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		panic(err)
	}
	obj, err := s.Sign(payload)
	if err != nil {
		panic(err)
	}
	tok, err := obj.CompactSerialize()
	if err != nil {
		panic(err)
	}
	return tok
}

// policyYAML is the example from docs/authn.md, with the JWKS URL
// filled in: tokens from the issuer are verified for app=orders, and only
// a caller in group "buyers" may POST.
const policyYAML = `
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: orders-jwt
  namespace: prod
spec:
  selector:
    matchLabels:
      app: orders
  jwtRules:
  - issuer: https://login.example.com
    jwksUri: JWKS_URI
    audiences: ["orders"]
    outputClaimToHeaders:
    - header: x-user
      claim: sub
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: orders-buyers
  namespace: prod
spec:
  selector:
    matchLabels:
      app: orders
  action: ALLOW
  rules:
  - from:
    - source:
        requestPrincipals: ["https://login.example.com/*"]
    to:
    - operation:
        methods: ["POST"]
    when:
    - key: request.auth.claims[groups]
      values: ["buyers"]
`

// TestWithPolicyEngine runs RequestAuthentication and AuthorizationPolicy
// through the real policy engine with this verifier: the contract of
// policy.JWTVerifier end to end.
func TestWithPolicyEngine(t *testing.T) {
	is := startIssuer()
	defer is.srv.Close()
	docs, err := policy.Parse(strings.NewReader(strings.Replace(policyYAML, "JWKS_URI", is.srv.URL+"/jwks", 1)))
	if err != nil {
		t.Fatal(err)
	}
	set, err := policy.Compile(docs, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dst := policy.Destination{Namespace: "prod", Labels: map[string]string{"app": "orders"}, Port: 8080}
	v := authn.NewVerifier(authn.Options{Logger: slog.New(slog.DiscardHandler)})
	defer v.Close()
	if err := v.Prepare(context.Background(), set.JWTRules(dst)); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	base := func(o map[string]any) map[string]any {
		c := map[string]any{"iss": "https://login.example.com", "sub": "alice", "aud": "orders",
			"exp": now.Add(5 * time.Minute).Unix(), "iat": now.Unix(), "jti": "j-1", "groups": []string{"buyers"}}
		for k, x := range o {
			c[k] = x
		}
		return c
	}
	buyer := is.token(base(nil))
	tests := []struct {
		name   string
		authz  string
		want   policy.Outcome
		revoke bool
	}{
		{"buyer_allowed", "Bearer " + buyer, policy.Allow, false},
		{"no_token_denied_by_policy", "", policy.Deny, false},
		{"other_group_denied", "Bearer " + is.token(base(map[string]any{"groups": []string{"viewers"}, "jti": "j-2"})), policy.Deny, false},
		{"wrong_audience_unauthenticated", "Bearer " + is.token(base(map[string]any{"aud": "payments"})), policy.Unauthenticated, false},
		{"expired_unauthenticated", "Bearer " + is.token(base(map[string]any{"exp": now.Add(-time.Hour).Unix()})), policy.Unauthenticated, false},
		{"forged_unauthenticated", "Bearer " + buyer[:len(buyer)-4] + "AAAA", policy.Unauthenticated, false},
		{"revoked_unauthenticated", "Bearer " + buyer, policy.Unauthenticated, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.revoke {
				v.SetRevokedTokens([]wire.RevokedTokenID{{JTI: "j-1", ExpiresAt: now.Add(5 * time.Minute)}})
			}
			req := &policy.Request{Protocol: policy.HTTP, Destination: dst, Method: "POST", Path: "/orders", Host: "orders.prod",
				Source: policy.Source{Principal: "td/ns/prod/sa/frontend"}, Headers: http.Header{}}
			if tc.authz != "" {
				req.Headers.Set("Authorization", tc.authz)
			}
			d := set.Evaluate(req, v)
			if d.Outcome != tc.want {
				t.Fatalf("outcome = %v (%s), want %v", d.Outcome, d.Reason, tc.want)
			}
			if d.Outcome == policy.Allow && (req.Auth == nil || req.Auth.SetHeaders["X-User"] != "alice") {
				t.Fatalf("auth = %+v", req.Auth)
			}
		})
	}
}

// ExampleVerifier shows the lifecycle a sidecar follows: prepare the rules
// (fetching their key sets), verify requests, push revocations.
func ExampleVerifier() {
	is := startIssuer()
	defer is.srv.Close()
	docs, _ := policy.Parse(strings.NewReader(strings.Replace(policyYAML, "JWKS_URI", is.srv.URL+"/jwks", 1)))
	set, _ := policy.Compile(docs, policy.Options{})
	rules := set.JWTRules(policy.Destination{Namespace: "prod", Labels: map[string]string{"app": "orders"}})

	v := authn.NewVerifier(authn.Options{Logger: slog.New(slog.DiscardHandler)})
	defer v.Close()
	ctx := context.Background()
	v.Start(ctx) // background refresh every 20 minutes
	if err := v.Prepare(ctx, rules); err != nil {
		fmt.Println("prepare:", err)
	}

	tok := is.token(map[string]any{"iss": "https://login.example.com", "sub": "alice", "aud": "orders",
		"exp": time.Now().Add(time.Minute).Unix(), "jti": "j-1"})
	req := &policy.Request{Path: "/orders", Headers: http.Header{"Authorization": {"Bearer " + tok}}}

	auth, err := v.Verify(rules, req)
	fmt.Println(auth.Principal, auth.SetHeaders, auth.RemoveHeaders, err)

	forged := tok[:len(tok)-4] + "AAAA" // another signature
	_, err = v.Verify(rules, &policy.Request{Path: "/orders", Headers: http.Header{"Authorization": {"Bearer " + forged}}})
	fmt.Println(authn.Reason(err))

	auth, err = v.Verify(rules, &policy.Request{Path: "/orders"})
	fmt.Println(auth, err)

	v.SetRevokedTokens([]wire.RevokedTokenID{{JTI: "j-1"}})
	_, err = v.Verify(rules, req)
	fmt.Println(err)
	// Output:
	// https://login.example.com/alice map[X-User:alice] [Authorization] <nil>
	// signature
	// <nil> <nil>
	// authn: invalid token: token revoked
}

// spaceDelimitedYAML: orders names "roles" in spaceDelimitedClaims,
// billing does not, payments names "scope" (which the engine would split
// anyway). One AuthorizationPolicy admits role admin or scope
// orders.write; another denies role suspended.
const spaceDelimitedYAML = `
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: orders-jwt, namespace: prod}
spec:
  selector: {matchLabels: {app: orders}}
  jwtRules:
  - issuer: https://login.example.com
    jwksUri: JWKS_URI
    spaceDelimitedClaims: ["roles"]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: billing-jwt, namespace: prod}
spec:
  selector: {matchLabels: {app: billing}}
  jwtRules:
  - issuer: https://login.example.com
    jwksUri: JWKS_URI
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: payments-jwt, namespace: prod}
spec:
  selector: {matchLabels: {app: payments}}
  jwtRules:
  - issuer: https://login.example.com
    jwksUri: JWKS_URI
    spaceDelimitedClaims: ["scope", "roles"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: admins-or-writers, namespace: prod}
spec:
  action: ALLOW
  rules:
  - when:
    - key: request.auth.claims[roles]
      values: ["admin"]
  - when:
    - key: request.auth.claims[scope]
      values: ["orders.write"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-suspended, namespace: prod}
spec:
  action: DENY
  rules:
  - when:
    - key: request.auth.claims[roles]
      values: ["suspended"]
`

// TestSpaceDelimitedClaimsWithPolicyEngine: spaceDelimitedClaims decide
// request.auth.claims[…] matching through the real policy engine, for the
// first verification and for cache hits alike; scope works whether the
// rule pre-splits it or the engine splits it.
func TestSpaceDelimitedClaimsWithPolicyEngine(t *testing.T) {
	is := startIssuer()
	defer is.srv.Close()
	docs, err := policy.Parse(strings.NewReader(strings.ReplaceAll(spaceDelimitedYAML, "JWKS_URI", is.srv.URL+"/jwks")))
	if err != nil {
		t.Fatal(err)
	}
	set, err := policy.Compile(docs, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	v := authn.NewVerifier(authn.Options{Logger: slog.New(slog.DiscardHandler)})
	defer v.Close()
	dst := func(app string) policy.Destination {
		return policy.Destination{Namespace: "prod", Labels: map[string]string{"app": app}, Port: 8080}
	}
	var all []*securityv1beta1.JWTRule
	for _, app := range []string{"orders", "billing", "payments"} {
		all = append(all, set.JWTRules(dst(app))...)
	}
	if err := v.Prepare(context.Background(), all); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tests := []struct {
		name   string
		app    string
		claims map[string]any
		want   policy.Outcome
		policy string // deciding policy, "" when none
	}{
		{"named_claim_matches_one_word", "orders", map[string]any{"roles": "editor admin"}, policy.Allow, "prod/admins-or-writers"},
		{"named_claim_no_partial_word", "orders", map[string]any{"roles": "administrator"}, policy.Deny, ""},
		{"named_claim_deny_on_one_word", "orders", map[string]any{"roles": "admin suspended"}, policy.Deny, "prod/no-suspended"},
		{"unnamed_claim_is_one_opaque_string", "billing", map[string]any{"roles": "editor admin"}, policy.Deny, ""},
		{"unnamed_claim_whole_value_matches", "billing", map[string]any{"roles": "admin"}, policy.Allow, "prod/admins-or-writers"},
		{"unnamed_claim_deny_needs_whole_value", "billing", map[string]any{"roles": "admin suspended"}, policy.Deny, ""},
		{"scope_split_by_engine", "orders", map[string]any{"scope": "orders.read orders.write"}, policy.Allow, "prod/admins-or-writers"},
		{"scope_split_by_engine_unnamed_rule", "billing", map[string]any{"scope": "orders.read orders.write"}, policy.Allow, "prod/admins-or-writers"},
		{"scope_presplit_by_rule", "payments", map[string]any{"scope": "orders.read orders.write"}, policy.Allow, "prod/admins-or-writers"},
		{"scope_presplit_no_partial_word", "payments", map[string]any{"scope": "orders.writer"}, policy.Deny, ""},
		{"array_claim_unchanged", "orders", map[string]any{"roles": []string{"admin"}}, policy.Allow, "prod/admins-or-writers"},
		{"array_element_not_split", "orders", map[string]any{"roles": []string{"editor admin"}}, policy.Deny, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := map[string]any{"iss": "https://login.example.com", "sub": "alice", "exp": now.Add(5 * time.Minute).Unix()}
			maps.Copy(c, tc.claims)
			tok := is.token(c)
			for _, kind := range []string{"miss", "hit"} {
				req := &policy.Request{Protocol: policy.HTTP, Destination: dst(tc.app), Method: "GET", Path: "/", Host: tc.app + ".prod",
					Source: policy.Source{Principal: "td/ns/prod/sa/frontend"}, Headers: http.Header{"Authorization": {"Bearer " + tok}}}
				d := set.Evaluate(req, v)
				if d.Outcome != tc.want || d.Policy != tc.policy {
					t.Fatalf("%s: outcome = %v by %q (%s), want %v by %q", kind, d.Outcome, d.Policy, d.Reason, tc.want, tc.policy)
				}
			}
		})
	}
	if s := v.Stats(); s.CacheHits != uint64(len(tests)) {
		t.Fatalf("cache hits = %d, want one per case (%d)", s.CacheHits, len(tests))
	}
}

// TestCertBoundTokenWithPolicyEngine: a token bound to a client
// certificate (cnf x5t#S256, as the token service issues to tls_client_auth
// clients) is allowed through the real policy engine only when the
// request's Source.CertSHA256, computed from the peer's certificate the
// way the sidecar does, matches; from another workload's certificate or
// over plaintext it is Unauthenticated (401), on cache hits too. A token
// without cnf is unaffected.
func TestCertBoundTokenWithPolicyEngine(t *testing.T) {
	is := startIssuer()
	defer is.srv.Close()
	docs, err := policy.Parse(strings.NewReader(strings.Replace(policyYAML, "JWKS_URI", is.srv.URL+"/jwks", 1)))
	if err != nil {
		t.Fatal(err)
	}
	set, err := policy.Compile(docs, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dst := policy.Destination{Namespace: "prod", Labels: map[string]string{"app": "orders"}, Port: 8080}
	v := authn.NewVerifier(authn.Options{Logger: slog.New(slog.DiscardHandler)})
	defer v.Close()
	if err := v.Prepare(context.Background(), set.JWTRules(dst)); err != nil {
		t.Fatal(err)
	}
	ca := testpki.NewCA(t, "td")
	owner := ca.SVID(t, "spiffe://td/ns/prod/sa/frontend", 0)
	thief := ca.SVID(t, "spiffe://td/ns/prod/sa/frontend", 0) // same identity, another key and certificate
	now := time.Now()
	mint := func(jti string, cnf map[string]any) string {
		c := map[string]any{"iss": "https://login.example.com", "sub": "alice", "aud": "orders",
			"exp": now.Add(5 * time.Minute).Unix(), "jti": jti, "groups": []string{"buyers"}}
		if cnf != nil {
			c["cnf"] = cnf
		}
		return is.token(c)
	}
	bound := mint("bound", map[string]any{"x5t#S256": policy.CertThumbprint(owner.Chain[0])})
	unbound := mint("unbound", nil)
	for _, tc := range []struct {
		name   string
		token  string
		peer   *testpki.SVID // nil: plaintext
		want   policy.Outcome
		reason string
	}{
		{"bound_from_its_certificate", bound, owner, policy.Allow, ""},
		{"bound_from_another_certificate", bound, thief, policy.Unauthenticated, "cert_binding"},
		{"bound_over_plaintext", bound, nil, policy.Unauthenticated, "cert_binding"},
		{"unbound_from_any_certificate", unbound, thief, policy.Allow, ""},
		{"unbound_over_plaintext", unbound, nil, policy.Allow, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, kind := range []string{"first", "again"} {
				req := &policy.Request{Protocol: policy.HTTP, Destination: dst, Method: "POST", Path: "/orders", Host: "orders.prod",
					Headers: http.Header{"Authorization": {"Bearer " + tc.token}}}
				if tc.peer != nil {
					req.Source = policy.Source{Principal: "td/ns/prod/sa/frontend", CertSHA256: policy.CertThumbprint(tc.peer.Chain[0])}
				}
				before := v.Stats().Rejected["cert_binding"]
				d := set.Evaluate(req, v)
				if d.Outcome != tc.want {
					t.Fatalf("%s: outcome = %v (%s), want %v", kind, d.Outcome, d.Reason, tc.want)
				}
				if tc.reason != "" && v.Stats().Rejected[tc.reason] != before+1 {
					t.Fatalf("%s: refusal not counted as %s: %+v", kind, tc.reason, v.Stats().Rejected)
				}
			}
		})
	}
}

package authn

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/durationpb"
	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/wire"
)

func TestVerifyAccepts(t *testing.T) {
	keys(t)
	type want struct {
		principal string
		audiences []string
		presenter string
		setHdr    map[string]string
		rmHdr     []string
		rmParam   []string
	}
	std := want{principal: testIssuer + "/alice", audiences: []string{"orders"}, presenter: "web-app", rmHdr: []string{"Authorization"}}
	noKIDKey := &testKey{alg: jose.ES256, priv: keyES256.priv}
	tests := []struct {
		name  string
		rule  func() *securityv1beta1.JWTRule
		token func() string
		req   func(tok string) *policy.Request
		want  want
	}{
		{
			name:  "es256_bearer",
			rule:  func() *securityv1beta1.JWTRule { return inlineRule(t, keyES256) },
			token: func() string { return sign(t, keyES256, claims(nil)) },
			req:   bearer,
			want:  std,
		},
		{
			name:  "es384",
			rule:  func() *securityv1beta1.JWTRule { return inlineRule(t, keyES384) },
			token: func() string { return sign(t, keyES384, claims(nil)) },
			req:   bearer,
			want:  std,
		},
		{
			name:  "es512",
			rule:  func() *securityv1beta1.JWTRule { return inlineRule(t, keyES512) },
			token: func() string { return sign(t, keyES512, claims(nil)) },
			req:   bearer,
			want:  std,
		},
		{
			name:  "rs256",
			rule:  func() *securityv1beta1.JWTRule { return inlineRule(t, keyRSA, keyRSA2) },
			token: func() string { return sign(t, keyRSA2, claims(nil)) },
			req:   bearer,
			want:  std,
		},
		{
			name: "ps256_with_rsa_key_without_alg",
			rule: func() *securityv1beta1.JWTRule {
				return &securityv1beta1.JWTRule{Issuer: testIssuer, Jwks: `{"keys":[` + string(keyRSA.jwk(t, "rsa1", "")) + `]}`}
			},
			token: func() string { return sign(t, &testKey{kid: "rsa1", alg: jose.PS256, priv: keyRSA.priv}, claims(nil)) },
			req:   bearer,
			want:  std,
		},
		{
			name:  "eddsa",
			rule:  func() *securityv1beta1.JWTRule { return inlineRule(t, keyEd) },
			token: func() string { return sign(t, keyEd, claims(nil)) },
			req:   bearer,
			want:  std,
		},
		{
			name:  "token_without_kid_tries_fitting_keys",
			rule:  func() *securityv1beta1.JWTRule { return inlineRule(t, keyRSA, keyES256) },
			token: func() string { return sign(t, noKIDKey, claims(nil)) },
			req:   bearer,
			want:  std,
		},
		{
			name: "key_without_kid_accepts_token_with_kid",
			rule: func() *securityv1beta1.JWTRule {
				return &securityv1beta1.JWTRule{Issuer: testIssuer, Jwks: `{"keys":[` + string(keyES256.jwk(t, "", "")) + `]}`}
			},
			token: func() string { return sign(t, keyES256, claims(nil)) },
			req:   bearer,
			want:  std,
		},
		{
			name: "audience_from_list",
			rule: func() *securityv1beta1.JWTRule {
				r := inlineRule(t, keyES256)
				r.Audiences = []string{"payments", "orders"}
				return r
			},
			token: func() string {
				return sign(t, keyES256, claims(map[string]any{"aud": []string{"frontend", "orders"}}))
			},
			req:  bearer,
			want: want{principal: std.principal, audiences: []string{"frontend", "orders"}, presenter: "web-app", rmHdr: std.rmHdr},
		},
		{
			name:  "no_sub_no_principal",
			rule:  func() *securityv1beta1.JWTRule { return inlineRule(t, keyES256) },
			token: func() string { return sign(t, keyES256, claims(map[string]any{"sub": nil, "azp": nil})) },
			req:   bearer,
			want:  want{audiences: []string{"orders"}, rmHdr: std.rmHdr},
		},
		{
			name:  "lowercase_scheme_and_extra_spaces",
			rule:  func() *securityv1beta1.JWTRule { return inlineRule(t, keyES256) },
			token: func() string { return sign(t, keyES256, claims(nil)) },
			req: func(tok string) *policy.Request {
				return &policy.Request{Path: "/", Headers: http.Header{"Authorization": {"bearer   " + tok}}}
			},
			want: std,
		},
		{
			name:  "default_access_token_parameter",
			rule:  func() *securityv1beta1.JWTRule { return inlineRule(t, keyES256) },
			token: func() string { return sign(t, keyES256, claims(nil)) },
			req: func(tok string) *policy.Request {
				return &policy.Request{Path: "/a?x=1&access_token=" + tok + "&y=2"}
			},
			want: want{principal: std.principal, audiences: std.audiences, presenter: std.presenter, rmParam: []string{"access_token"}},
		},
		{
			name:  "same_token_in_header_and_parameter",
			rule:  func() *securityv1beta1.JWTRule { return inlineRule(t, keyES256) },
			token: func() string { return sign(t, keyES256, claims(nil)) },
			req: func(tok string) *policy.Request {
				return &policy.Request{Path: "/a?access_token=" + tok, Headers: http.Header{"Authorization": {"Bearer " + tok}}}
			},
			want: want{principal: std.principal, audiences: std.audiences, presenter: std.presenter, rmHdr: []string{"Authorization"}, rmParam: []string{"access_token"}},
		},
		{
			name: "from_headers_with_prefix",
			rule: func() *securityv1beta1.JWTRule {
				r := inlineRule(t, keyES256)
				r.FromHeaders = []*securityv1beta1.JWTHeader{{Name: "x-jwt-assertion", Prefix: "JWT "}}
				return r
			},
			token: func() string { return sign(t, keyES256, claims(nil)) },
			req: func(tok string) *policy.Request {
				return &policy.Request{Path: "/", Headers: http.Header{"X-Jwt-Assertion": {"JWT " + tok}, "Authorization": {"Basic Zm9vOmJhcg=="}}}
			},
			want: want{principal: std.principal, audiences: std.audiences, presenter: std.presenter, rmHdr: []string{"X-Jwt-Assertion"}},
		},
		{
			name: "from_params",
			rule: func() *securityv1beta1.JWTRule {
				r := inlineRule(t, keyES256)
				r.FromParams = []string{"my_token"}
				return r
			},
			token: func() string { return sign(t, keyES256, claims(nil)) },
			req:   func(tok string) *policy.Request { return &policy.Request{Path: "/?my_token=" + tok} },
			want:  want{principal: std.principal, audiences: std.audiences, presenter: std.presenter, rmParam: []string{"my_token"}},
		},
		{
			name: "from_cookies_quoted",
			rule: func() *securityv1beta1.JWTRule {
				r := inlineRule(t, keyES256)
				r.FromCookies = []string{"auth-token"}
				return r
			},
			token: func() string { return sign(t, keyES256, claims(nil)) },
			req: func(tok string) *policy.Request {
				return &policy.Request{Path: "/", Headers: http.Header{"Cookie": {`theme=dark; auth-token="` + tok + `"`}}}
			},
			want: want{principal: std.principal, audiences: std.audiences, presenter: std.presenter},
		},
		{
			name: "forward_original_token",
			rule: func() *securityv1beta1.JWTRule {
				r := inlineRule(t, keyES256)
				r.ForwardOriginalToken = true
				return r
			},
			token: func() string { return sign(t, keyES256, claims(nil)) },
			req:   bearer,
			want:  want{principal: std.principal, audiences: std.audiences, presenter: std.presenter},
		},
		{
			name: "output_claims_and_payload",
			rule: func() *securityv1beta1.JWTRule {
				r := inlineRule(t, keyES256)
				r.OutputPayloadToHeader = "x-jwt-payload"
				r.OutputClaimToHeaders = []*securityv1beta1.ClaimToHeader{
					{Header: "x-sub", Claim: "sub"},
					{Header: "x-group", Claim: "realm.group"},
					{Header: "x-level", Claim: "level"},
					{Header: "x-big", Claim: "big"},
					{Header: "x-admin", Claim: "admin"},
					{Header: "x-object", Claim: "realm"},
					{Header: "x-missing", Claim: "nope"},
					{Header: "x-injected", Claim: "evil"},
				}
				return r
			},
			token: func() string {
				return sign(t, keyES256, claims(map[string]any{
					"realm": map[string]any{"group": "eng"}, "level": 3, "big": 1.5,
					"admin": true, "evil": "x\r\nX-Admin: true",
				}))
			},
			req: bearer,
			want: want{principal: std.principal, audiences: std.audiences, presenter: std.presenter, rmHdr: std.rmHdr, setHdr: map[string]string{
				"X-Jwt-Payload": "PAYLOAD", "X-Sub": "alice", "X-Group": "eng", "X-Level": "3", "X-Big": "1.5", "X-Admin": "true",
			}},
		},
		{
			name: "exp_within_leeway",
			rule: func() *securityv1beta1.JWTRule { return inlineRule(t, keyES256) },
			token: func() string {
				return sign(t, keyES256, claims(map[string]any{"exp": testNow.Add(-30 * time.Second).Unix()}))
			},
			req:  bearer,
			want: std,
		},
		{
			name: "nbf_within_leeway",
			rule: func() *securityv1beta1.JWTRule { return inlineRule(t, keyES256) },
			token: func() string {
				return sign(t, keyES256, claims(map[string]any{"nbf": testNow.Add(30 * time.Second).Unix()}))
			},
			req:  bearer,
			want: std,
		},
		{
			name:  "fractional_times",
			rule:  func() *securityv1beta1.JWTRule { return inlineRule(t, keyES256) },
			token: func() string { return sign(t, keyES256, claims(map[string]any{"exp": float64(testNow.Unix()) + 0.5})) },
			req:   bearer,
			want:  std,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, logs := newTestVerifier(t, Options{})
			tok := tc.token()
			auth, err := v.Verify(ruleList(tc.rule()), tc.req(tok))
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if auth == nil {
				t.Fatal("no auth")
			}
			w := tc.want
			if p, ok := w.setHdr["X-Jwt-Payload"]; ok && p == "PAYLOAD" {
				w.setHdr["X-Jwt-Payload"] = strings.Split(tok, ".")[1]
			}
			got := want{auth.Principal, auth.Audiences, auth.Presenter, auth.SetHeaders, auth.RemoveHeaders, auth.RemoveQueryParams}
			if diff := cmp.Diff(w, got, cmp.AllowUnexported(want{})); diff != "" {
				t.Errorf("auth (-want +got):\n%s", diff)
			}
			if auth.Claims["iss"] != testIssuer {
				t.Errorf("claims iss = %v", auth.Claims["iss"])
			}
			assertNoLeak(t, logs.String(), tok)
		})
	}
}

func TestVerifyNoToken(t *testing.T) {
	keys(t)
	v, _ := newTestVerifier(t, Options{})
	rule := inlineRule(t, keyES256)
	for _, req := range []*policy.Request{
		{Path: "/"},
		{Path: "/?access_token="},
		{Path: "/?other=1", Headers: http.Header{"Authorization": {"Bearer"}}},
		{Path: "/", Headers: http.Header{"Authorization": {"Basic Zm9vOmJhcg=="}}},
	} {
		auth, err := v.Verify(ruleList(rule), req)
		if auth != nil || err != nil {
			t.Errorf("Verify(%+v) = %v, %v; want nil, nil", req, auth, err)
		}
	}
	if auth, err := v.Verify(nil, bearer("x")); auth != nil || err != nil {
		t.Errorf("no rules: %v, %v", auth, err)
	}
}

// TestVerifyIssuerSelection: the rule is chosen by iss among the rules
// that look where the token was found.
func TestVerifyIssuerSelection(t *testing.T) {
	keys(t)
	ruleA := &securityv1beta1.JWTRule{Issuer: "https://a.example", Jwks: jwksOf(t, keyES256), Audiences: []string{"x"}}
	ruleA2 := &securityv1beta1.JWTRule{Issuer: "https://a.example", Jwks: jwksOf(t, keyES256), Audiences: []string{"orders"}, OutputClaimToHeaders: []*securityv1beta1.ClaimToHeader{{Header: "x-rule", Claim: "sub"}}}
	ruleB := &securityv1beta1.JWTRule{Issuer: "https://b.example", Jwks: jwksOf(t, keyRSA), FromHeaders: []*securityv1beta1.JWTHeader{{Name: "X-B-Token"}}}
	rules := ruleList(ruleA, ruleA2, ruleB)
	tests := []struct {
		name      string
		req       *policy.Request
		principal string
		want      error
	}{
		{"second_rule_same_issuer_accepts", bearer(sign(t, keyES256, claims(map[string]any{"iss": "https://a.example"}))), "https://a.example/alice", nil},
		{"issuer_b_in_its_header", &policy.Request{Headers: http.Header{"X-B-Token": {sign(t, keyRSA, claims(map[string]any{"iss": "https://b.example"}))}}}, "https://b.example/alice", nil},
		{"issuer_b_in_authorization_is_unknown_there", bearer(sign(t, keyRSA, claims(map[string]any{"iss": "https://b.example"}))), "", ErrUnknownIssuer},
		{"issuer_a_in_b_header_is_unknown_there", &policy.Request{Headers: http.Header{"X-B-Token": {sign(t, keyES256, claims(map[string]any{"iss": "https://a.example"}))}}}, "", ErrUnknownIssuer},
		{"issuer_a_wrong_audience_for_both_rules", bearer(sign(t, keyES256, claims(map[string]any{"iss": "https://a.example", "aud": "y"}))), "", ErrAudience},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, _ := newTestVerifier(t, Options{})
			auth, err := v.Verify(rules, tc.req)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if tc.want == nil && auth.Principal != tc.principal {
				t.Fatalf("principal = %q, want %q", auth.Principal, tc.principal)
			}
		})
	}
}

func TestVerifyInvalidRuleFailsClosed(t *testing.T) {
	keys(t)
	bad := &securityv1beta1.JWTRule{Issuer: testIssuer, Jwks: jwksOf(t, keyES256), JwksUri: "https://issuer.example/jwks"}
	v, _ := newTestVerifier(t, Options{})
	_, err := v.Verify(ruleList(bad), bearer(sign(t, keyES256, claims(nil))))
	if !errors.Is(err, ErrRuleInvalid) || !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("err = %v, want ErrRuleInvalid", err)
	}
	if err := v.Prepare(context.Background(), ruleList(bad)); !errors.Is(err, ErrInvalidRule) {
		t.Fatalf("Prepare err = %v, want ErrInvalidRule", err)
	}
}

func TestValidateRule(t *testing.T) {
	keys(t)
	jwks := jwksOf(t, keyES256)
	tests := []struct {
		name    string
		rule    *securityv1beta1.JWTRule
		wantErr string // substring; "" means valid
	}{
		{"inline_jwks", &securityv1beta1.JWTRule{Issuer: "issuer-foo", Jwks: jwks}, ""},
		{"jwks_uri_https", &securityv1beta1.JWTRule{Issuer: "issuer-foo", JwksUri: "https://example.com/.well-known/jwks.json"}, ""},
		{"jwks_uri_http_loopback", &securityv1beta1.JWTRule{Issuer: "issuer-foo", JwksUri: "http://127.0.0.1:8080/jwks"}, ""},
		{"jwks_uri_http_ipv6_loopback", &securityv1beta1.JWTRule{Issuer: "issuer-foo", JwksUri: "http://[::1]:8080/jwks"}, ""},
		{"discovery_from_https_issuer", &securityv1beta1.JWTRule{Issuer: "https://accounts.example"}, ""},
		{"full_featured", &securityv1beta1.JWTRule{
			Issuer: "https://a.example", Audiences: []string{"a", "b"}, Jwks: jwks,
			FromHeaders:           []*securityv1beta1.JWTHeader{{Name: "x-jwt", Prefix: "Bearer "}},
			FromParams:            []string{"tok"},
			FromCookies:           []string{"session"},
			OutputPayloadToHeader: "x-payload",
			OutputClaimToHeaders:  []*securityv1beta1.ClaimToHeader{{Header: "x-group", Claim: "a.b"}},
			Timeout:               durationpb.New(2 * time.Second),
		}, ""},
		{"nil_rule", nil, "rule is nil"},
		{"no_issuer_nor_keys", &securityv1beta1.JWTRule{FromParams: []string{"t"}}, "issuer is required"},
		{"no_issuer_with_jwks", &securityv1beta1.JWTRule{Jwks: jwks}, ""},
		{"no_issuer_with_jwks_uri", &securityv1beta1.JWTRule{JwksUri: "https://example.com/jwks"}, ""},
		{"jwks_and_jwks_uri", &securityv1beta1.JWTRule{Issuer: "i", Jwks: jwks, JwksUri: "https://x/jwks"}, "only one of jwks and jwksUri"},
		{"jwks_invalid", &securityv1beta1.JWTRule{Issuer: "i", Jwks: `{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`}, "no usable signing key"},
		{"jwks_not_json", &securityv1beta1.JWTRule{Issuer: "i", Jwks: `keys`}, "jwks"},
		{"jwks_uri_http_remote", &securityv1beta1.JWTRule{Issuer: "i", JwksUri: "http://example.com/jwks"}, "use https"},
		{"jwks_uri_http_localhost_name", &securityv1beta1.JWTRule{Issuer: "i", JwksUri: "http://localhost/jwks"}, "use https"},
		{"jwks_uri_file", &securityv1beta1.JWTRule{Issuer: "i", JwksUri: "file:///etc/passwd"}, "host"},
		{"jwks_uri_credentials", &securityv1beta1.JWTRule{Issuer: "i", JwksUri: "https://user:pw@example.com/jwks"}, "credentials"},
		{"jwks_uri_relative", &securityv1beta1.JWTRule{Issuer: "i", JwksUri: "/jwks"}, "absolute"},
		{"jwks_uri_too_long", &securityv1beta1.JWTRule{Issuer: "i", JwksUri: "https://x/" + strings.Repeat("a", 2100)}, "2048"},
		{"no_keys_and_issuer_not_url", &securityv1beta1.JWTRule{Issuer: "issuer-foo"}, "discovery"},
		{"empty_audience", &securityv1beta1.JWTRule{Issuer: "i", Jwks: jwks, Audiences: []string{""}}, "audiences[0]"},
		{"bad_header_name", &securityv1beta1.JWTRule{Issuer: "i", Jwks: jwks, FromHeaders: []*securityv1beta1.JWTHeader{{Name: "x jwt"}}}, "fromHeaders[0].name"},
		{"bad_prefix", &securityv1beta1.JWTRule{Issuer: "i", Jwks: jwks, FromHeaders: []*securityv1beta1.JWTHeader{{Name: "x", Prefix: "B\n"}}}, "fromHeaders[0].prefix"},
		{"bad_param", &securityv1beta1.JWTRule{Issuer: "i", Jwks: jwks, FromParams: []string{"a&b"}}, "fromParams[0]"},
		{"bad_cookie", &securityv1beta1.JWTRule{Issuer: "i", Jwks: jwks, FromCookies: []string{"a;b"}}, "fromCookies[0]"},
		{"output_header_pattern", &securityv1beta1.JWTRule{Issuer: "i", Jwks: jwks, OutputPayloadToHeader: "x:y"}, "must match"},
		{"output_header_xfcc", &securityv1beta1.JWTRule{Issuer: "i", Jwks: jwks, OutputClaimToHeaders: []*securityv1beta1.ClaimToHeader{{Header: "X-Forwarded-Client-Cert", Claim: "sub"}}}, "reserved"},
		{"output_header_host", &securityv1beta1.JWTRule{Issuer: "i", Jwks: jwks, OutputPayloadToHeader: "host"}, "reserved"},
		{"output_header_duplicate", &securityv1beta1.JWTRule{Issuer: "i", Jwks: jwks, OutputClaimToHeaders: []*securityv1beta1.ClaimToHeader{{Header: "x-a", Claim: "sub"}, {Header: "X-A", Claim: "iss"}}}, "used twice"},
		// Apps that fold "_" into "-" (WSGI, CGI) would read these as the
		// reserved header, or the two outputs as one.
		{"output_header_xfcc_underscored", &securityv1beta1.JWTRule{Issuer: "i", Jwks: jwks, OutputClaimToHeaders: []*securityv1beta1.ClaimToHeader{{Header: "x_forwarded_client_cert", Claim: "sub"}}}, "reserved"},
		{"output_header_transfer_encoding_underscored", &securityv1beta1.JWTRule{Issuer: "i", Jwks: jwks, OutputPayloadToHeader: "Transfer_Encoding"}, "reserved"},
		{"output_header_method_override", &securityv1beta1.JWTRule{Issuer: "i", Jwks: jwks, OutputClaimToHeaders: []*securityv1beta1.ClaimToHeader{{Header: "x_http_method_override", Claim: "m"}}}, "reserved"},
		{"output_header_moatless_namespace", &securityv1beta1.JWTRule{Issuer: "i", Jwks: jwks, OutputPayloadToHeader: "x-moatless-user"}, "reserved"},
		{"output_header_duplicate_folded", &securityv1beta1.JWTRule{Issuer: "i", Jwks: jwks, OutputClaimToHeaders: []*securityv1beta1.ClaimToHeader{{Header: "x-a", Claim: "sub"}, {Header: "X_A", Claim: "iss"}}}, "used twice"},
		{"output_header_payload_folded", &securityv1beta1.JWTRule{Issuer: "i", Jwks: jwks, OutputPayloadToHeader: "x_payload", OutputClaimToHeaders: []*securityv1beta1.ClaimToHeader{{Header: "x-payload", Claim: "sub"}}}, "used twice"},
		{"output_claim_empty_segment", &securityv1beta1.JWTRule{Issuer: "i", Jwks: jwks, OutputClaimToHeaders: []*securityv1beta1.ClaimToHeader{{Header: "x-a", Claim: "a..b"}}}, "empty path segment"},
		{"timeout_zero", &securityv1beta1.JWTRule{Issuer: "i", Jwks: jwks, Timeout: durationpb.New(0)}, "timeout"},
		{"timeout_huge", &securityv1beta1.JWTRule{Issuer: "i", Jwks: jwks, Timeout: durationpb.New(time.Hour)}, "timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateRule(tc.rule)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("ValidateRule: %v", err)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrInvalidRule) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want ErrInvalidRule containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestOutputHeaders(t *testing.T) {
	rules := ruleList(
		&securityv1beta1.JWTRule{OutputPayloadToHeader: "x-payload", OutputClaimToHeaders: []*securityv1beta1.ClaimToHeader{{Header: "x-group", Claim: "g"}}},
		&securityv1beta1.JWTRule{OutputClaimToHeaders: []*securityv1beta1.ClaimToHeader{{Header: "X-GROUP", Claim: "h"}, {Header: "bad header", Claim: "h"}}},
	)
	if diff := cmp.Diff([]string{"X-Payload", "X-Group"}, OutputHeaders(rules)); diff != "" {
		t.Fatal(diff)
	}
}

func TestTokenHeaders(t *testing.T) {
	rules := ruleList(
		&securityv1beta1.JWTRule{}, // no location: Istio's default, Authorization (and access_token)
		&securityv1beta1.JWTRule{FromHeaders: []*securityv1beta1.JWTHeader{{Name: "x-auth-token"}, {Name: "AUTHORIZATION"}, {Name: "bad header"}}},
		&securityv1beta1.JWTRule{FromParams: []string{"tok"}}, // a query parameter only: no header
	)
	if diff := cmp.Diff([]string{"Authorization", "X-Auth-Token"}, TokenHeaders(rules)); diff != "" {
		t.Fatal(diff)
	}
}

// TestCacheAndRevocation: a cache hit costs no verification, yet expiry,
// revocation and key changes are checked on every use.
func TestCacheAndRevocation(t *testing.T) {
	keys(t)
	var now atomic.Int64
	now.Store(testNow.UnixNano())
	var hookRevoked sync.Map
	v, _ := newTestVerifier(t, Options{
		Now:     func() time.Time { return time.Unix(0, now.Load()) },
		Revoked: func(jti string) bool { _, ok := hookRevoked.Load(jti); return ok },
	})
	rule := inlineRule(t, keyES256)
	tok := sign(t, keyES256, claims(map[string]any{"jti": "t1"}))
	tok2 := sign(t, keyES256, claims(map[string]any{"jti": "t2"}))
	tok3 := sign(t, keyES256, claims(map[string]any{"jti": "t3"}))
	for i := range 3 {
		if _, err := v.Verify(ruleList(rule), bearer(tok)); err != nil {
			t.Fatalf("verify %d: %v", i, err)
		}
	}
	if s := v.Stats(); s.CacheHits != 2 || s.CacheMisses != 1 || s.CacheEntries != 1 || s.Accepted != 3 {
		t.Fatalf("stats = %+v", s)
	}

	// Revocation pushed from the watch stream reaches cached tokens.
	v.SetRevokedTokens([]wire.RevokedTokenID{{JTI: "t1", ExpiresAt: testNow.Add(time.Hour)}, {JTI: "old", ExpiresAt: testNow.Add(-time.Hour)}})
	if _, err := v.Verify(ruleList(rule), bearer(tok)); !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked cached token: err = %v", err)
	}
	if v.revoked.Load().contains("old") {
		t.Error("revocation of a long-expired token kept")
	}
	// And uncached ones.
	v.SetRevokedTokens([]wire.RevokedTokenID{{JTI: "t2"}})
	if _, err := v.Verify(ruleList(rule), bearer(tok2)); !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked fresh token: err = %v", err)
	}
	// Lifting a revocation (a full replacement without it) restores t1.
	if _, err := v.Verify(ruleList(rule), bearer(tok)); err != nil {
		t.Fatalf("t1 after replacement: %v", err)
	}
	// The Revoked hook is consulted on hits too.
	if _, err := v.Verify(ruleList(rule), bearer(tok3)); err != nil {
		t.Fatal(err)
	}
	hookRevoked.Store("t3", true)
	if _, err := v.Verify(ruleList(rule), bearer(tok3)); !errors.Is(err, ErrRevoked) {
		t.Fatalf("hook-revoked cached token: err = %v", err)
	}

	// Past exp the cache entry is dead and the full check refuses it.
	now.Store(testNow.Add(10*time.Minute + DefaultLeeway).UnixNano())
	if _, err := v.Verify(ruleList(rule), bearer(tok)); !errors.Is(err, ErrExpired) {
		t.Fatalf("expired cached token: err = %v", err)
	}

	// A cached token is only good for the rule it was verified under.
	now.Store(testNow.UnixNano())
	other := &securityv1beta1.JWTRule{Issuer: testIssuer, Jwks: jwksOf(t, keyRSA)}
	if _, err := v.Verify(ruleList(other), bearer(tok)); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("cached token under another rule: err = %v", err)
	}
}

func TestCacheBounded(t *testing.T) {
	keys(t)
	v, _ := newTestVerifier(t, Options{CacheSize: 32})
	rule := inlineRule(t, keyEd)
	first := sign(t, keyEd, claims(map[string]any{"jti": "first"}))
	if _, err := v.Verify(ruleList(rule), bearer(first)); err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		tok := sign(t, keyEd, claims(map[string]any{"jti": "j" + string(rune('a'+i%26)) + strings.Repeat("x", i)}))
		if _, err := v.Verify(ruleList(rule), bearer(tok)); err != nil {
			t.Fatal(err)
		}
		if n := v.Stats().CacheEntries; n > 32 {
			t.Fatalf("cache holds %d entries, limit 32", n)
		}
	}
	// Still correct after eviction.
	if _, err := v.Verify(ruleList(rule), bearer(first)); err != nil {
		t.Fatal(err)
	}
}

func TestCacheDisabled(t *testing.T) {
	keys(t)
	v, _ := newTestVerifier(t, Options{CacheSize: -1})
	rule := inlineRule(t, keyES256)
	tok := sign(t, keyES256, claims(nil))
	for range 2 {
		if _, err := v.Verify(ruleList(rule), bearer(tok)); err != nil {
			t.Fatal(err)
		}
	}
	if s := v.Stats(); s.CacheHits != 0 || s.CacheEntries != 0 || s.Accepted != 2 {
		t.Fatalf("stats = %+v", s)
	}
}

// TestVerifyConcurrent runs hits, misses, revocation swaps and Prepare
// together under -race.
func TestVerifyConcurrent(t *testing.T) {
	keys(t)
	v, _ := newTestVerifier(t, Options{CacheSize: 64})
	rule := inlineRule(t, keyES256)
	toks := make([]string, 16)
	for i := range toks {
		toks[i] = sign(t, keyES256, claims(map[string]any{"jti": string(rune('a' + i))}))
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				tok := toks[(i+g)%len(toks)]
				_, err := v.Verify(ruleList(rule), bearer(tok))
				if err != nil && !errors.Is(err, ErrRevoked) {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 50 {
			v.SetRevokedTokens([]wire.RevokedTokenID{{JTI: string(rune('a' + i%16))}})
			_ = v.Prepare(context.Background(), ruleList(rule))
		}
	})
	wg.Wait()
}

func TestLifecycle(t *testing.T) {
	v := NewVerifier(Options{})
	v.Start(context.Background())
	v.Start(context.Background())
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if err := v.Prepare(context.Background(), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Prepare after Close: %v", err)
	}
	if err := v.Refresh(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Refresh after Close: %v", err)
	}
	// Close without Start, then Start: nothing runs, nothing hangs.
	w := NewVerifier(Options{})
	_ = w.Close()
	w.Start(context.Background())
}

func TestReason(t *testing.T) {
	if Reason(nil) != "" || Reason(errors.New("x")) != "other" {
		t.Fatal("Reason of non-token errors")
	}
	seen := map[string]bool{}
	for _, r := range reasonLabels {
		err := tokenErr(r.err, "")
		if Reason(err) != r.label || seen[r.label] {
			t.Fatalf("label %q", r.label)
		}
		seen[r.label] = true
		if !errors.Is(err, ErrInvalidToken) || !errors.Is(err, r.err) {
			t.Fatalf("%v does not match its sentinels", err)
		}
	}
}

// The claims handed out are the token's, decoded from JSON.
func TestClaimsDecoded(t *testing.T) {
	keys(t)
	v, _ := newTestVerifier(t, Options{})
	tok := sign(t, keyES256, claims(map[string]any{"scope": "read write", "groups": []string{"a", "b"}}))
	auth, err := v.Verify(ruleList(inlineRule(t, keyES256)), bearer(tok))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(map[string]any{"scope": auth.Claims["scope"], "groups": auth.Claims["groups"]})
	if string(got) != `{"groups":["a","b"],"scope":"read write"}` {
		t.Fatalf("claims = %s", got)
	}
}

// TestPrepareInstallsValidRules: one bad rule does not keep the others out.
func TestPrepareInstallsValidRules(t *testing.T) {
	keys(t)
	good := inlineRule(t, keyES256)
	bad := &securityv1beta1.JWTRule{Issuer: "https://other.example", JwksUri: "http://example.com/jwks"}
	v, _ := newTestVerifier(t, Options{})
	err := v.Prepare(context.Background(), ruleList(good, bad))
	if !errors.Is(err, ErrInvalidRule) || !strings.Contains(err.Error(), "jwksUri") {
		t.Fatalf("Prepare err = %v", err)
	}
	if _, err := v.Verify(ruleList(good, bad), bearer(sign(t, keyES256, claims(nil)))); err != nil {
		t.Fatalf("valid rule not installed: %v", err)
	}
	_, err = v.Verify(ruleList(good, bad), bearer(sign(t, keyES256, claims(map[string]any{"iss": "https://other.example"}))))
	if !errors.Is(err, ErrRuleInvalid) {
		t.Fatalf("token for the invalid rule: %v", err)
	}
	if strings.Count(err.Error(), "authn:") != 1 {
		t.Errorf("error repeats its prefix: %v", err)
	}
}

// TestRuleWithoutIssuer: Istio (and Envoy's jwt_authn) accept a JWT rule
// with keys and no issuer: a token of any iss is verified with those
// keys. A token signed by another key is still refused, and a rule with an
// issuer beside it still only takes its own issuer's tokens, and alone
// decides for them.
func TestRuleWithoutIssuer(t *testing.T) {
	keys(t)
	v, _ := newTestVerifier(t, Options{})
	anyIss := &securityv1beta1.JWTRule{Jwks: jwksOf(t, keyES256), Audiences: []string{"orders"}}
	pinned := inlineRule(t, keyRSA)
	tests := []struct {
		name          string
		rules         []*securityv1beta1.JWTRule
		tok           string
		wantErr       error
		wantPrincipal string
	}{
		{"any_iss_signed_by_the_keys", []*securityv1beta1.JWTRule{anyIss}, sign(t, keyES256, claims(map[string]any{"iss": "https://elsewhere.example"})), nil, "https://elsewhere.example/alice"},
		{"the_usual_iss_too", []*securityv1beta1.JWTRule{anyIss}, sign(t, keyES256, claims(nil)), nil, testIssuer + "/alice"},
		{"other_key_refused", []*securityv1beta1.JWTRule{anyIss}, sign(t, keyEvil, claims(map[string]any{"iss": "https://elsewhere.example"})), ErrSignature, ""},
		{"audience_still_checked", []*securityv1beta1.JWTRule{anyIss}, sign(t, keyES256, claims(map[string]any{"aud": "payments"})), ErrAudience, ""},
		// The issuer's own rule decides for its tokens: the rule without
		// issuer does not get a second try (Envoy would give it one).
		{"own_rule_decides_for_its_issuer", []*securityv1beta1.JWTRule{pinned, anyIss}, sign(t, keyES256, claims(nil)), ErrUnknownKey, ""},
		{"own_rule_decides_after_any", []*securityv1beta1.JWTRule{anyIss, pinned}, sign(t, keyES256, claims(nil)), ErrUnknownKey, ""},
		{"any_rule_beside_a_rule_of_another_issuer", []*securityv1beta1.JWTRule{pinned, anyIss}, sign(t, keyES256, claims(map[string]any{"iss": "https://elsewhere.example"})), nil, "https://elsewhere.example/alice"},
		{"own_rule_accepts_its_own", []*securityv1beta1.JWTRule{anyIss, pinned}, sign(t, keyRSA, claims(nil)), nil, testIssuer + "/alice"},
		{"pinned_rule_alone_refuses_other_iss", []*securityv1beta1.JWTRule{pinned}, sign(t, keyES256, claims(map[string]any{"iss": "https://elsewhere.example"})), ErrUnknownIssuer, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Twice: the second answer comes from the cache and must be the same.
			for range 2 {
				auth, err := v.Verify(tc.rules, bearer(tc.tok))
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err %v, want %v", err, tc.wantErr)
				}
				if tc.wantErr == nil && auth.Principal != tc.wantPrincipal {
					t.Fatalf("principal %q, want %q", auth.Principal, tc.wantPrincipal)
				}
			}
		})
	}
}

// TestPresenceRequired: Istio's presence: REQUIRED refuses a request
// without a token the rule accepts, even when another rule accepted the
// request's token; OPTIONAL (the default) lets a request without a token
// through unauthenticated.
func TestPresenceRequired(t *testing.T) {
	keys(t)
	v, _ := newTestVerifier(t, Options{})
	optional := inlineRule(t, keyES256)
	required := inlineRule(t, keyES256)
	required.Presence = securityv1beta1.JWTRule_REQUIRED
	otherRequired := &securityv1beta1.JWTRule{Issuer: "https://other.example", Jwks: jwksOf(t, keyRSA), Presence: securityv1beta1.JWTRule_REQUIRED}
	otherOptional := &securityv1beta1.JWTRule{Issuer: "https://other.example", Jwks: jwksOf(t, keyRSA)}
	inParam := &securityv1beta1.JWTRule{Issuer: testIssuer, Jwks: jwksOf(t, keyES256), FromParams: []string{"t"}, Presence: securityv1beta1.JWTRule_REQUIRED}
	good := sign(t, keyES256, claims(nil))
	other := sign(t, keyRSA, claims(map[string]any{"iss": "https://other.example"}))
	tests := []struct {
		name    string
		rules   []*securityv1beta1.JWTRule
		req     *policy.Request
		wantErr error
		wantOK  bool // an identity is returned
	}{
		{"optional_without_token", []*securityv1beta1.JWTRule{optional}, &policy.Request{Path: "/"}, nil, false},
		{"required_without_token", []*securityv1beta1.JWTRule{required}, &policy.Request{Path: "/"}, ErrTokenRequired, false},
		{"required_with_token", []*securityv1beta1.JWTRule{required}, bearer(good), nil, true},
		{"required_other_rule_accepted", []*securityv1beta1.JWTRule{otherOptional, required}, bearer(other), ErrTokenRequired, false},
		{"required_other_issuer_required_too", []*securityv1beta1.JWTRule{required, otherRequired}, bearer(good), ErrTokenRequired, false},
		{"required_where_no_token_is", []*securityv1beta1.JWTRule{optional, inParam}, bearer(good), ErrTokenRequired, false},
		{"required_bad_token_refused", []*securityv1beta1.JWTRule{required}, bearer(sign(t, keyEvil, claims(nil))), ErrSignature, false},
		{"two_required_rules_same_issuer", []*securityv1beta1.JWTRule{required, inlineRuleRequired(t)}, bearer(good), nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for range 2 { // the second time from the cache
				auth, err := v.Verify(tc.rules, tc.req)
				if !errors.Is(err, tc.wantErr) || (auth != nil) != tc.wantOK {
					t.Fatalf("auth %v err %v; want err %v, identity %v", auth, err, tc.wantErr, tc.wantOK)
				}
			}
		})
	}
}

func inlineRuleRequired(t *testing.T) *securityv1beta1.JWTRule {
	r := inlineRule(t, keyES256)
	r.Presence = securityv1beta1.JWTRule_REQUIRED
	return r
}

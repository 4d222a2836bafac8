package authn

import (
	"context"
	"errors"
	"net/http"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	securityv1beta1 "istio.io/api/security/v1beta1"
)

// TestCachedTokenFollowsKeyAndRuleChanges: a token served from the cache
// or a connection's memo is refused from the refresh that changed what
// it was verified with: its key removed from the issuer's set, its kid
// reused for another key, or its rule replaced by one with narrower
// audiences. A failed refresh keeps the last good set.
func TestCachedTokenFollowsKeyAndRuleChanges(t *testing.T) {
	keys(t)
	k2 := &testKey{kid: "ec2", alg: jose.ES256, priv: keyEvil.priv}
	reused := &testKey{kid: keyES256.kid, alg: jose.ES256, priv: keyEvil.priv}
	for _, tc := range []struct {
		name    string
		change  func(srv *jwksServer) // the issuer's set after
		narrow  bool                  // the rule replaced by one with audiences [billing]
		wantErr error
	}{
		{"key_removed", func(s *jwksServer) { s.set(jwksOf(t, k2), http.StatusOK) }, false, ErrUnknownKey},
		{"kid_reused_for_another_key", func(s *jwksServer) { s.set(jwksOf(t, reused), http.StatusOK) }, false, ErrSignature},
		{"fetch_fails", func(s *jwksServer) { s.set("", http.StatusInternalServerError) }, false, nil},
		{"set_without_usable_key", func(s *jwksServer) { s.set(`{"keys":[{"kty":"oct","k":"AAAA"}]}`, http.StatusOK) }, false, nil},
		{"audiences_narrowed", nil, true, ErrAudience},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newJWKSServer(t, jwksOf(t, keyES256, k2))
			v, _ := newTestVerifier(t, Options{})
			rule := &securityv1beta1.JWTRule{Issuer: testIssuer, JwksUri: srv.URL + "/jwks"}
			if err := v.Prepare(context.Background(), ruleList(rule)); err != nil {
				t.Fatal(err)
			}
			tok := sign(t, keyES256, claims(nil))
			m := v.Memo()
			for _, ver := range []func([]*securityv1beta1.JWTRule) error{
				func(r []*securityv1beta1.JWTRule) error { _, err := v.Verify(r, bearer(tok)); return err },
				func(r []*securityv1beta1.JWTRule) error { _, err := m.Verify(r, bearer(tok)); return err },
			} {
				if err := ver(ruleList(rule)); err != nil {
					t.Fatal(err)
				}
			}
			if tc.change != nil {
				tc.change(srv)
				_ = v.Refresh(context.Background())
			}
			if tc.narrow {
				rule = &securityv1beta1.JWTRule{Issuer: testIssuer, JwksUri: srv.URL + "/jwks", Audiences: []string{"billing"}}
				if err := v.Prepare(context.Background(), ruleList(rule)); err != nil {
					t.Fatal(err)
				}
			}
			for i := range 2 {
				if _, err := v.Verify(ruleList(rule), bearer(tok)); !errors.Is(err, tc.wantErr) {
					t.Fatalf("verifier, try %d: %v, want %v", i, err, tc.wantErr)
				}
				if _, err := m.Verify(ruleList(rule), bearer(tok)); !errors.Is(err, tc.wantErr) {
					t.Fatalf("memo, try %d: %v, want %v", i, err, tc.wantErr)
				}
			}
		})
	}
}

package authn

import (
	"errors"
	"testing"
	"time"

	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/moatless/moatless/internal/wire"
)

// TestRefusalNamesVerifiedToken: a token refused although its signature
// verified (revoked, bound to another certificate, refused by a REQUIRED
// rule, signed for another audience) names its issuer and subject
// (VerifiedToken), on the full check and on a cache hit, for the audit
// record of the refusal; a token whose signature did not verify, or was
// never checked (expired), names nobody: its claims are the sender's word.
func TestRefusalNamesVerifiedToken(t *testing.T) {
	keys(t)
	forgedKey := &testKey{kid: keyES256.kid, alg: keyES256.alg, priv: keyEvil.priv}
	good := sign(t, keyES256, claims(nil))
	narrow := inlineRule(t, keyES256)
	narrow.Audiences = []string{"billing"}
	otherRequired := &securityv1beta1.JWTRule{Issuer: "https://other.example", Jwks: jwksOf(t, keyRSA), Presence: securityv1beta1.JWTRule_REQUIRED}
	bound := sign(t, keyES256, claims(map[string]any{"cnf": map[string]any{"x5t#S256": thumb("cert A")}}))
	tests := []struct {
		name     string
		rules    []*securityv1beta1.JWTRule
		tok      string
		revoked  bool
		wantErr  error
		verified bool
	}{
		{"revoked", ruleList(inlineRule(t, keyES256)), good, true, ErrRevoked, true},
		{"bound_to_another_certificate", ruleList(inlineRule(t, keyES256)), bound, false, ErrCertBinding, true},
		{"required_rule_of_another_issuer", []*securityv1beta1.JWTRule{inlineRule(t, keyES256), otherRequired}, good, false, ErrTokenRequired, true},
		{"another_audience", ruleList(narrow), good, false, ErrAudience, true},
		{"another_audience_forged_signature", ruleList(narrow), sign(t, forgedKey, claims(nil)), false, ErrAudience, false},
		{"forged_signature", ruleList(inlineRule(t, keyES256)), sign(t, forgedKey, claims(nil)), false, ErrSignature, false},
		{"forged_signature_revoked", ruleList(inlineRule(t, keyES256)), sign(t, forgedKey, claims(nil)), true, ErrSignature, false},
		{"expired", ruleList(inlineRule(t, keyES256)), sign(t, keyES256, claims(map[string]any{"exp": testNow.Add(-10 * time.Minute).Unix()})), false, ErrExpired, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, _ := newTestVerifier(t, Options{})
			if tc.revoked {
				v.SetRevokedTokens([]wire.RevokedTokenID{{JTI: "jti-1"}})
			}
			for _, lookup := range []string{"full check", "second check"} {
				req := bearer(tc.tok)
				req.Source.CertSHA256 = thumb("cert B")
				_, err := v.Verify(tc.rules, req)
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("%s: err %v, want %v", lookup, err, tc.wantErr)
				}
				var vt interface{ VerifiedToken() (string, string) }
				iss, sub := "", ""
				if errors.As(err, &vt) {
					iss, sub = vt.VerifiedToken()
				}
				switch {
				case tc.verified && (iss != testIssuer || sub != "alice"):
					t.Fatalf("%s: VerifiedToken %q %q, want %q %q", lookup, iss, sub, testIssuer, "alice")
				case !tc.verified && (iss != "" || sub != ""):
					t.Fatalf("%s: a token that did not verify names %q of %q", lookup, sub, iss)
				}
			}
		})
	}
}

package authn

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"hash"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	securityv1beta1 "istio.io/api/security/v1beta1"
)

// legacyIssuer signs HS256 with legacySecret.
const legacyIssuer = "https://legacy.example"

var legacySecret = []byte("0123456789abcdef0123456789abcdef-legacy")

func macWith(h func() hash.Hash, key []byte) func([]byte) []byte {
	return func(in []byte) []byte {
		m := hmac.New(h, key)
		m.Write(in)
		return m.Sum(nil)
	}
}

// TestSharedSecretIssuer: an issuer configured with a shared secret is
// verified with that secret and its one algorithm; every other issuer
// stays asymmetric-only, so the RS256 → HS256 confusion (the public key
// used as the HMAC secret) fails even while HMAC is enabled for another
// issuer, and the shared issuer cannot be switched to another algorithm.
func TestSharedSecretIssuer(t *testing.T) {
	keys(t)
	rsaPub, err := x509.MarshalPKIXPublicKey(keyRSA.public())
	if err != nil {
		t.Fatal(err)
	}
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaPub})
	v, logs := newTestVerifier(t, Options{SharedSecrets: []SharedSecret{{Issuer: legacyIssuer, Secret: legacySecret}}})
	rsaRule := inlineRule(t, keyRSA, keyES256)
	legacyRule := &securityv1beta1.JWTRule{Issuer: legacyIssuer, Audiences: []string{"orders"}}
	rules := []*securityv1beta1.JWTRule{rsaRule, legacyRule}

	legacy := func(o map[string]any) string {
		if o == nil {
			o = map[string]any{}
		}
		o["iss"] = legacyIssuer
		return mustJSON(t, claims(o))
	}
	victim := mustJSON(t, claims(nil))
	tests := []struct {
		name  string
		token string
		want  error // nil: accepted
		sub   string
	}{
		{"hs256_with_the_secret", rawToken(`{"alg":"HS256","typ":"JWT"}`, legacy(nil), macWith(sha256.New, legacySecret)), nil, "alice"},
		{"hs256_wrong_secret", rawToken(`{"alg":"HS256"}`, legacy(nil), macWith(sha256.New, []byte("0123456789abcdef0123456789abcdef-guess"))), ErrSignature, ""},
		{"hs256_empty_secret", rawToken(`{"alg":"HS256"}`, legacy(nil), macWith(sha256.New, nil)), ErrSignature, ""},
		{"hs256_truncated_mac", rawToken(`{"alg":"HS256"}`, legacy(nil), func(in []byte) []byte { return macWith(sha256.New, legacySecret)(in)[:16] }), ErrSignature, ""},
		{"shared_issuer_pinned_to_hs256_not_hs512", rawToken(`{"alg":"HS512"}`, legacy(nil), macWith(sha512.New, legacySecret)), ErrAlgorithm, ""},
		{"shared_issuer_refuses_rs256", rawToken(`{"alg":"RS256","kid":"rsa1"}`, legacy(nil), rsSign(keyRSA)), ErrAlgorithm, ""},
		{"shared_issuer_refuses_none", rawToken(`{"alg":"none"}`, legacy(nil), constSig([]byte("x"))), ErrAlgorithm, ""},
		{"shared_issuer_expired", rawToken(`{"alg":"HS256"}`, legacy(map[string]any{"exp": testNow.Add(-5 * 60e9).Unix()}), macWith(sha256.New, legacySecret)), ErrExpired, ""},
		{"shared_issuer_wrong_audience", rawToken(`{"alg":"HS256"}`, legacy(map[string]any{"aud": "payments"}), macWith(sha256.New, legacySecret)), ErrAudience, ""},
		// The downgrade: an RS256 issuer's token re-signed with HS256 and
		// the issuer's public key (PEM, or the raw DER) as the secret.
		{"rs256_issuer_downgraded_public_key_pem", rawToken(`{"alg":"HS256","kid":"rsa1"}`, victim, macWith(sha256.New, rsaPEM)), ErrAlgorithm, ""},
		{"rs256_issuer_downgraded_public_key_der", rawToken(`{"alg":"HS256"}`, victim, macWith(sha256.New, rsaPub)), ErrAlgorithm, ""},
		// Nor can the shared secret vouch for another issuer's tokens.
		{"other_issuer_signed_with_the_shared_secret", rawToken(`{"alg":"HS256"}`, victim, macWith(sha256.New, legacySecret)), ErrAlgorithm, ""},
		{"rs256_issuer_still_works", sign(t, keyRSA, claims(nil)), nil, "alice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			auth, err := v.Verify(rules, bearer(tt.token))
			if tt.want == nil {
				if err != nil || auth == nil {
					t.Fatalf("refused: %v", err)
				}
				if !strings.HasSuffix(auth.Principal, "/"+tt.sub) {
					t.Errorf("principal %q", auth.Principal)
				}
				return
			}
			if !errors.Is(err, tt.want) || auth != nil {
				t.Fatalf("got %v (auth %v), want %v", err, auth, tt.want)
			}
			assertNoLeak(t, err.Error(), tt.token)
		})
	}
	if strings.Contains(logs.String(), string(legacySecret)) {
		t.Error("the shared secret reached the log")
	}
}

// TestSharedSecretRefusedConfigs: a bad shared-secret configuration
// refuses every token of its issuer rather than accepting weakly.
func TestSharedSecretRefusedConfigs(t *testing.T) {
	tok := rawToken(`{"alg":"HS256"}`, mustJSON(t, claims(map[string]any{"iss": legacyIssuer})), macWith(sha256.New, []byte("short")))
	tests := []struct {
		name   string
		secret SharedSecret
		rule   *securityv1beta1.JWTRule
	}{
		{"secret_too_short", SharedSecret{Issuer: legacyIssuer, Secret: []byte("short")}, &securityv1beta1.JWTRule{Issuer: legacyIssuer}},
		{"hs512_secret_shorter_than_its_hash", SharedSecret{Issuer: legacyIssuer, Algorithm: jose.HS512, Secret: legacySecret}, &securityv1beta1.JWTRule{Issuer: legacyIssuer}},
		{"not_an_hmac_algorithm", SharedSecret{Issuer: legacyIssuer, Algorithm: jose.RS256, Secret: legacySecret}, &securityv1beta1.JWTRule{Issuer: legacyIssuer}},
		{"rule_names_a_key_set_too", SharedSecret{Issuer: legacyIssuer, Secret: legacySecret}, &securityv1beta1.JWTRule{Issuer: legacyIssuer, JwksUri: "https://legacy.example/jwks"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name != "rule_names_a_key_set_too" && tt.secret.Check() == nil {
				t.Error("Check accepted it")
			}
			v, _ := newTestVerifier(t, Options{SharedSecrets: []SharedSecret{tt.secret}})
			if _, err := v.Verify([]*securityv1beta1.JWTRule{tt.rule}, bearer(tok)); !errors.Is(err, ErrRuleInvalid) {
				t.Fatalf("err %v, want ErrRuleInvalid", err)
			}
		})
	}
}

package authn

import (
	"context"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/moatless/moatless/internal/policy"
)

// TestVerifyRefusesAttacks is the attack catalogue: RFC 8725's threats and
// jwt_tool's tampering and key-confusion tests. Every token here is
// presented as "Authorization: Bearer <token>" to a rule trusting keyES256
// (kid ec1), keyRSA (kid rsa1) and keyEd (kid ed1) for testIssuer with
// audience "orders". Each must be refused with the named reason, no Auth,
// and an error whose text holds no part of the token.
func TestVerifyRefusesAttacks(t *testing.T) {
	keys(t)
	valid := sign(t, keyES256, claims(nil))
	other := sign(t, keyES256, claims(map[string]any{"sub": "mallory"}))
	vh, vp, _ := strings.Cut(valid, ".")
	vp, vs, _ := strings.Cut(vp, ".")
	_, op, _ := strings.Cut(other, ".")
	op, os, _ := strings.Cut(op, ".")
	_ = op

	hdr := func(extra string) string { return `{"alg":"ES256","kid":"ec1","typ":"JWT"` + extra + `}` }
	body := mustJSON(t, claims(nil))
	bodyWith := func(o map[string]any) string { return mustJSON(t, claims(o)) }

	rsaPub, err := x509.MarshalPKIXPublicKey(keyRSA.public())
	if err != nil {
		t.Fatal(err)
	}
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaPub})
	hmacWith := func(key []byte) func([]byte) []byte {
		return func(in []byte) []byte {
			m := hmac.New(sha256.New, key)
			m.Write(in)
			return m.Sum(nil)
		}
	}
	evilJWK := string(keyEvil.jwk(t, "ec1", "ES256"))

	tests := []struct {
		name  string
		token string
		want  error
	}{
		// Algorithm attacks.
		{"alg_none", rawToken(`{"alg":"none","typ":"JWT"}`, body, constSig([]byte("x"))), ErrAlgorithm},
		{"alg_none_capitalized", rawToken(`{"alg":"None"}`, body, constSig([]byte("x"))), ErrAlgorithm},
		{"alg_none_upper", rawToken(`{"alg":"NONE"}`, body, constSig([]byte("x"))), ErrAlgorithm},
		{"alg_none_empty_signature", rawToken(`{"alg":"none"}`, body, constSig(nil)), ErrMalformed},
		{"alg_missing", rawToken(`{"kid":"ec1"}`, body, esSign(keyES256)), ErrAlgorithm},
		{"alg_not_string", rawToken(`{"alg":["ES256"],"kid":"ec1"}`, body, esSign(keyES256)), ErrAlgorithm},
		{"alg_switch_rs256_to_hs256_public_key_as_secret", rawToken(`{"alg":"HS256","kid":"rsa1"}`, body, hmacWith(rsaPEM)), ErrAlgorithm},
		{"hs256_blank_password", rawToken(`{"alg":"HS256","kid":"ec1"}`, body, hmacWith(nil)), ErrAlgorithm},
		{"hs512", rawToken(`{"alg":"HS512"}`, body, hmacWith([]byte("secret"))), ErrAlgorithm},
		{"alg_es256_with_rsa_kid", rawToken(`{"alg":"ES256","kid":"rsa1"}`, body, esSign(keyES256)), ErrKeyMismatch},
		{"alg_rs256_with_ec_kid", rawToken(`{"alg":"RS256","kid":"ec1"}`, body, rsSign(keyRSA)), ErrKeyMismatch},
		{"alg_es384_with_p256_kid", rawToken(`{"alg":"ES384","kid":"ec1"}`, body, esSign(keyES256)), ErrKeyMismatch},
		{"alg_eddsa_with_ec_kid", rawToken(`{"alg":"EdDSA","kid":"ec1"}`, body, constSig(make([]byte, 64))), ErrKeyMismatch},
		{"alg_ps256_with_key_published_for_rs256", rawToken(`{"alg":"PS256","kid":"rsa1"}`, body, rsSign(keyRSA)), ErrKeyMismatch},

		// Signature attacks.
		{"signature_stripped", vh + "." + vp + ".", ErrMalformed},
		{"signature_segment_missing", vh + "." + vp, ErrMalformed},
		{"signature_of_another_token", vh + "." + vp + "." + os, ErrSignature},
		{"payload_swapped_under_valid_signature", vh + "." + op + "." + vs, ErrSignature},
		{"null_signature_one_zero_byte", rawToken(hdr(""), body, constSig([]byte{0})), ErrSignature},
		{"psychic_signature_r_s_zero", rawToken(hdr(""), body, constSig(make([]byte, 64))), ErrSignature},
		{"psychic_signature_r_s_order", rawToken(hdr(""), body, constSig(append(keyES256Order(), keyES256Order()...))), ErrSignature},
		{"ecdsa_signature_der_encoded", rawToken(hdr(""), body, derSign(keyES256)), ErrSignature},
		{"signature_truncated", rawToken(hdr(""), body, func(in []byte) []byte { return esSign(keyES256)(in)[:63] }), ErrSignature},
		{"signed_by_attacker_key_with_victim_kid", rawToken(hdr(""), body, esSign(keyEvil)), ErrSignature},

		// Key injection: the token may not bring or point at its key.
		{"jwk_header_injection", rawToken(hdr(`,"jwk":`+evilJWK), body, esSign(keyEvil)), ErrHeader},
		{"jku_header_injection", rawToken(hdr(`,"jku":"https://evil.example/jwks.json"`), body, esSign(keyEvil)), ErrHeader},
		{"x5u_header_injection", rawToken(hdr(`,"x5u":"https://evil.example/cert.pem"`), body, esSign(keyEvil)), ErrHeader},
		{"x5c_header_injection", rawToken(hdr(`,"x5c":["MIIB"]`), body, esSign(keyEvil)), ErrHeader},
		{"jku_even_with_valid_signature", rawToken(hdr(`,"jku":"https://issuer.example/jwks.json"`), body, esSign(keyES256)), ErrHeader},
		{"kid_path_traversal", rawToken(`{"alg":"ES256","kid":"../../../../../../dev/null"}`, body, esSign(keyEvil)), ErrUnknownKey},
		{"kid_path_traversal_hs256", rawToken(`{"alg":"HS256","kid":"../../../../../../dev/null"}`, body, hmacWith(nil)), ErrAlgorithm},
		{"kid_sql_injection", rawToken(`{"alg":"ES256","kid":"x' UNION SELECT 'key';--"}`, body, esSign(keyEvil)), ErrUnknownKey},
		{"kid_unknown", rawToken(`{"alg":"ES256","kid":"nope"}`, body, esSign(keyES256)), ErrUnknownKey},
		{"kid_not_string", rawToken(`{"alg":"ES256","kid":7}`, body, esSign(keyES256)), ErrHeader},
		{"kid_too_long", rawToken(`{"alg":"ES256","kid":"`+strings.Repeat("k", 300)+`"}`, body, esSign(keyES256)), ErrHeader},

		// Processing-changing headers and other token kinds.
		{"crit_header", rawToken(hdr(`,"crit":["exp"],"exp":1`), body, esSign(keyES256)), ErrHeader},
		{"b64_false", rawToken(hdr(`,"b64":false,"crit":["b64"]`), body, esSign(keyES256)), ErrHeader},
		{"zip_header", rawToken(hdr(`,"zip":"DEF"`), body, esSign(keyES256)), ErrHeader},
		{"nested_jwt_cty", rawToken(hdr(`,"cty":"JWT"`), body, esSign(keyES256)), ErrEncrypted},
		{"nested_jwt_cty_lower", rawToken(hdr(`,"cty":"jwt"`), body, esSign(keyES256)), ErrEncrypted},
		{"nested_jwt_payload_is_token", rawToken(hdr(""), `"`+valid+`"`, esSign(keyES256)), ErrMalformed},
		{"jwe_five_segments", "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.a2V5.aXY.Y2lwaGVy.dGFn", ErrEncrypted},
		{"jwe_header_in_three_segments", rawToken(`{"alg":"ES256","enc":"A256GCM","kid":"ec1"}`, body, esSign(keyES256)), ErrEncrypted},
		{"json_serialization", `{"payload":"` + vp + `","signatures":[]}`, ErrMalformed},

		// Parser differentials.
		{"duplicate_claim_sub", rawToken(hdr(""), strings.TrimSuffix(body, "}")+`,"sub":"admin"}`, esSign(keyES256)), ErrDuplicateKey},
		{"duplicate_claim_nested", rawToken(hdr(""), strings.TrimSuffix(body, "}")+`,"realm":{"role":"user","role":"admin"}}`, esSign(keyES256)), ErrDuplicateKey},
		{"duplicate_header_alg", rawToken(`{"alg":"none","alg":"ES256","kid":"ec1"}`, body, esSign(keyES256)), ErrDuplicateKey},
		{"claims_invalid_utf8", rawToken(hdr(""), strings.TrimSuffix(body, "}")+`,"name":"`+"\xff"+`"}`, esSign(keyES256)), ErrMalformed},
		{"claims_nested_too_deep", rawToken(hdr(""), strings.TrimSuffix(body, "}")+`,"x":`+strings.Repeat("[", 40)+strings.Repeat("]", 40)+`}`, esSign(keyES256)), ErrMalformed},
		{"claims_array", rawToken(hdr(""), `[1]`, esSign(keyES256)), ErrMalformed},
		{"header_not_object", rawToken(`["ES256"]`, body, esSign(keyES256)), ErrMalformed},
		{"trailing_data_after_claims", rawToken(hdr(""), body+`{}`, esSign(keyES256)), ErrMalformed},
		{"base64_padding", vh + "=." + vp + "." + vs, ErrMalformed},
		{"base64_standard_alphabet", strings.Replace(valid, "-", "+", 1) + "+", ErrMalformed},
		{"base64_noncanonical_trailing_bits", vh + "." + vp + "." + noncanonical(vs), ErrMalformed},
		{"whitespace_inside_token", vh + " ." + vp + "." + vs, ErrMalformed},
		{"newline_inside_token", vh + "\n." + vp + "." + vs, ErrMalformed},

		// Size limits.
		{"oversized_header", rawToken(hdr(`,"pad":"`+strings.Repeat("a", 5000)+`"`), body, esSign(keyES256)), ErrTooLarge},
		{"oversized_token", rawToken(hdr(""), bodyWith(map[string]any{"pad": strings.Repeat("a", 20000)}), esSign(keyES256)), ErrTooLarge},

		// Claims.
		{"expired", sign(t, keyES256, claims(map[string]any{"exp": testNow.Add(-2 * time.Minute).Unix()})), ErrExpired},
		{"expired_at_leeway_edge", sign(t, keyES256, claims(map[string]any{"exp": testNow.Add(-DefaultLeeway).Unix()})), ErrExpired},
		{"missing_exp", sign(t, keyES256, claims(map[string]any{"exp": nil})), ErrMissingExpiry},
		{"exp_string", sign(t, keyES256, claims(map[string]any{"exp": "9999999999"})), ErrMalformed},
		{"exp_negative", sign(t, keyES256, claims(map[string]any{"exp": -1})), ErrMalformed},
		{"exp_beyond_year_9999", sign(t, keyES256, claims(map[string]any{"exp": 1e15})), ErrMalformed},
		{"not_yet_valid", sign(t, keyES256, claims(map[string]any{"nbf": testNow.Add(2 * time.Minute).Unix()})), ErrNotYetValid},
		{"issued_in_future", sign(t, keyES256, claims(map[string]any{"iat": testNow.Add(2 * time.Minute).Unix()})), ErrIssuedInFuture},
		{"wrong_issuer", sign(t, keyES256, claims(map[string]any{"iss": "https://evil.example"})), ErrUnknownIssuer},
		{"issuer_case_variant", sign(t, keyES256, claims(map[string]any{"iss": "https://ISSUER.example"})), ErrUnknownIssuer},
		{"issuer_trailing_slash", sign(t, keyES256, claims(map[string]any{"iss": testIssuer + "/"})), ErrUnknownIssuer},
		{"issuer_missing", sign(t, keyES256, claims(map[string]any{"iss": nil})), ErrMalformed},
		{"issuer_array", sign(t, keyES256, claims(map[string]any{"iss": []string{testIssuer}})), ErrMalformed},
		{"wrong_audience", sign(t, keyES256, claims(map[string]any{"aud": "payments"})), ErrAudience},
		{"audience_missing", sign(t, keyES256, claims(map[string]any{"aud": nil})), ErrAudience},
		{"audience_case_variant", sign(t, keyES256, claims(map[string]any{"aud": "Orders"})), ErrAudience},
		{"audience_not_strings", sign(t, keyES256, claims(map[string]any{"aud": []any{"orders", 1}})), ErrMalformed},
		{"sub_not_string", sign(t, keyES256, claims(map[string]any{"sub": 42})), ErrMalformed},
	}
	rule := inlineRule(t, keyES256, keyRSA, keyEd)
	rule.Audiences = []string{"orders"}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, logs := newTestVerifier(t, Options{})
			auth, err := v.Verify(ruleList(rule), bearer(tc.token))
			if err == nil {
				t.Fatalf("accepted: %+v", auth)
			}
			if auth != nil {
				t.Errorf("auth returned with error: %+v", auth)
			}
			if !errors.Is(err, ErrInvalidToken) {
				t.Errorf("error %v does not wrap ErrInvalidToken", err)
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("error = %v, want %v", err, tc.want)
			}
			if Reason(err) == "other" || Reason(err) == "" {
				t.Errorf("Reason(%v) = %q", err, Reason(err))
			}
			assertNoLeak(t, err.Error(), tc.token)
			assertNoLeak(t, logs.String(), tc.token)
			if got := v.Stats().Rejected[Reason(err)]; got != 1 {
				t.Errorf("Rejected[%q] = %d, want 1", Reason(err), got)
			}
		})
	}
}

// keyES256Order is the P-256 group order n, big-endian: r = s = n is the
// other classic "psychic" value (congruent to zero mod n).
func keyES256Order() []byte {
	return elliptic.P256().Params().N.FillBytes(make([]byte, 32))
}

// noncanonical flips the unused low bits of the last base64url character,
// giving a second encoding of the same bytes.
func noncanonical(seg string) string {
	dec, _ := base64.RawURLEncoding.DecodeString(seg)
	if len(dec)%3 == 0 {
		return seg + "" // no spare bits; cannot happen for 64-byte signatures
	}
	alphabet := "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, seg[len(seg)-1])
	return seg[:len(seg)-1] + string(alphabet[last|1])
}

func ruleList(r ...*securityv1beta1.JWTRule) []*securityv1beta1.JWTRule { return r }

// TestVerifyRequestShapeAttacks covers tricks in where and how the token
// is presented.
func TestVerifyRequestShapeAttacks(t *testing.T) {
	keys(t)
	tok := sign(t, keyES256, claims(nil))
	tok2 := sign(t, keyES256, claims(map[string]any{"sub": "bob"}))
	rule := inlineRule(t, keyES256)
	tests := []struct {
		name    string
		headers http.Header
		path    string
		want    error // nil: no token found, request passes unauthenticated
	}{
		{"two_authorization_headers_same_token", http.Header{"Authorization": {"Bearer " + tok, "Bearer " + tok}}, "/", ErrMultipleTokens},
		{"two_authorization_headers_different_tokens", http.Header{"Authorization": {"Bearer " + tok, "Bearer " + tok2}}, "/", ErrMultipleTokens},
		{"header_and_query_different_tokens", http.Header{"Authorization": {"Bearer " + tok}}, "/?access_token=" + tok2, ErrMultipleTokens},
		{"repeated_query_parameter", nil, "/?access_token=" + tok + "&access_token=" + tok, ErrMultipleTokens},
		{"query_parameter_name_percent_encoded", http.Header{"Authorization": {"Bearer " + tok}}, "/?access%5Ftoken=" + tok2, ErrMultipleTokens},
		{"two_tokens_comma_separated", http.Header{"Authorization": {"Bearer " + tok + ", Bearer " + tok2}}, "/", ErrMalformed},
		{"trailing_space", http.Header{"Authorization": {"Bearer " + tok + " "}}, "/", ErrMalformed},
		{"trailing_tab", http.Header{"Authorization": {"Bearer " + tok + "\t"}}, "/", ErrMalformed},
		{"bearer_garbage", http.Header{"Authorization": {"Bearer not-a-jwt"}}, "/", ErrMalformed},
		{"query_token_garbage", nil, "/?access_token=%ZZ", ErrMalformed},
		{"bearer_nbsp", http.Header{"Authorization": {"Bearer\u00a0" + tok}}, "/", nil},
		{"bearer_tab", http.Header{"Authorization": {"Bearer\t" + tok}}, "/", nil},
		{"bearer_no_space", http.Header{"Authorization": {"Bearer" + tok}}, "/", nil},
		{"bearer_fullwidth_b", http.Header{"Authorization": {"\uff22earer " + tok}}, "/", nil},
		{"bearer_cyrillic_e", http.Header{"Authorization": {"B\u0435arer " + tok}}, "/", nil},
		{"basic_credentials", http.Header{"Authorization": {"Basic YWxpY2U6cGFzcw=="}}, "/", nil},
		{"token_in_unconfigured_header", http.Header{"X-Jwt-Assertion": {tok}}, "/", nil},
		{"noncanonical_header_key_ignored", http.Header{"authorization": {"Bearer " + tok}}, "/", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, _ := newTestVerifier(t, Options{})
			auth, err := v.Verify(ruleList(rule), &policy.Request{Path: tc.path, Headers: tc.headers})
			if auth != nil {
				t.Fatalf("authenticated: %+v", auth)
			}
			if tc.want == nil {
				if err != nil {
					t.Fatalf("err = %v, want none (no token)", err)
				}
				return
			}
			if !errors.Is(err, tc.want) || !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			assertNoLeak(t, err.Error(), tok)
			assertNoLeak(t, err.Error(), tok2)
		})
	}
}

// TestIssuerlessRuleCannotSpeakForAnotherIssuer: a rule without issuer
// (Istio allows one with jwks or jwksUri) accepts any iss its keys sign,
// and the principal is <iss>/<sub>. Where a rule for issuer X applies to
// the request too, whoever holds the issuer-less rule's keys (a partner's
// IdP, a test key) could otherwise sign {iss: X, sub: admin} and be X's
// admin to every requestPrincipals policy. A token whose issuer has its own
// rule among the request's rules is verified by that rule alone, also on a
// cache hit of a token first accepted where X's rule did not apply.
func TestIssuerlessRuleCannotSpeakForAnotherIssuer(t *testing.T) {
	keys(t)
	own := inlineRule(t, keyES256)
	partner := &securityv1beta1.JWTRule{Jwks: jwksOf(t, keyEvil)}
	spoof := sign(t, keyEvil, claims(map[string]any{"sub": "admin"}))
	partnerTok := sign(t, keyEvil, claims(map[string]any{"iss": "https://partner.example", "sub": "p1"}))
	// X's rule reading another header still makes X's tokens its own: the
	// spoof put in Authorization, where only the issuer-less rule looks,
	// is refused too.
	ownElsewhere := &securityv1beta1.JWTRule{Issuer: testIssuer, Jwks: jwksOf(t, keyES256),
		FromHeaders: []*securityv1beta1.JWTHeader{{Name: "x-jwt"}}}
	for _, cacheSize := range []int{0, -1} {
		v, _ := newTestVerifier(t, Options{CacheSize: cacheSize})
		if err := v.Prepare(context.Background(), ruleList(own, partner, ownElsewhere)); err != nil {
			t.Fatal(err)
		}
		// Where only the issuer-less rule applies, it is the rule for
		// any issuer (Istio's and Envoy's reading).
		if a, err := v.Verify(ruleList(partner), bearer(spoof)); err != nil || a.Principal != testIssuer+"/admin" {
			t.Fatalf("cache %d: issuer-less rule alone: %v %v", cacheSize, a, err)
		}
		for _, rules := range [][]*securityv1beta1.JWTRule{{ownElsewhere, partner}, {partner, ownElsewhere}} {
			if a, err := v.Verify(rules, bearer(spoof)); err == nil {
				t.Errorf("cache %d: with the issuer's rule reading x-jwt, the spoof in Authorization became %s", cacheSize, a.Principal)
			}
			if a, err := v.Verify(rules, bearer(partnerTok)); err != nil || a.Principal != "https://partner.example/p1" {
				t.Errorf("cache %d: an issuer without its own rule, beside a rule reading x-jwt: %v %v", cacheSize, a, err)
			}
		}
		for _, rules := range [][]*securityv1beta1.JWTRule{{own, partner}, {partner, own}} {
			a, err := v.Verify(rules, bearer(spoof))
			if err == nil {
				t.Errorf("cache %d, rules %s first: a token signed by the issuer-less rule's key became %s", cacheSize, rules[0].GetIssuer(), a.Principal)
			} else if !errors.Is(err, ErrSignature) {
				t.Errorf("cache %d: err = %v, want the signature error of the issuer's own rule", cacheSize, err)
			}
			if a, err := v.Verify(rules, bearer(partnerTok)); err != nil || a.Principal != "https://partner.example/p1" {
				t.Errorf("cache %d: an issuer without its own rule: %v %v", cacheSize, a, err)
			}
			ownTok := sign(t, keyES256, claims(map[string]any{"jti": "own-" + rules[0].GetIssuer()}))
			before := v.Stats().CacheHits
			for range 2 {
				if a, err := v.Verify(rules, bearer(ownTok)); err != nil || a.Principal != testIssuer+"/alice" {
					t.Errorf("cache %d: the issuer's own token: %v %v", cacheSize, a, err)
				}
			}
			if hits := v.Stats().CacheHits - before; cacheSize == 0 && hits != 1 {
				t.Errorf("rules %q first: the issuer's own token is never a cache hit", rules[0].GetIssuer())
			}
		}
	}
}

package ca

import (
	"encoding/base64"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
)

// decodeJWTPart decodes one base64url part of a compact JWS into a map.
func decodeJWTPart(t *testing.T, tok string, i int) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts, want 3 (JWS compact serialization)", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[i])
	if err != nil {
		t.Fatalf("part %d: %v", i, err)
	}
	m := map[string]any{}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("part %d: %v", i, err)
	}
	return m
}

// Every MUST of JWT-SVID, each as its own case.
func TestJWTSVIDConformance(t *testing.T) {
	e := newEnv(t, nil)
	now := e.clock.Now()
	tok, exp, err := e.ca.SignJWTSVID(testID, []string{"spiffe://example.org/reports"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	hdr, claims := decodeJWTPart(t, tok, 0), decodeJWTPart(t, tok, 1)
	hdrKeys := make([]string, 0, len(hdr))
	for k := range hdr {
		hdrKeys = append(hdrKeys, k)
	}
	slices.Sort(hdrKeys)
	kid, _ := hdr["kid"].(string)
	allowedAlgs := []string{"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
	checks := []struct {
		name string
		ok   bool
	}{
		// §2: only registered headers described by the spec.
		{"header_only_alg_kid_typ", slices.Equal(hdrKeys, []string{"alg", "kid", "typ"})},
		// §2.1: alg among RS/ES/PS.
		{"alg_allowed", slices.Contains(allowedAlgs, hdr["alg"].(string))},
		{"alg_es256", hdr["alg"] == "ES256"},
		// §2.2: kid (optional in the spec, required by go-spiffe and us).
		{"kid_in_bundle", func() bool { _, ok := e.ca.Bundle().FindJWTAuthority(kid); return ok }()},
		// §2.3: typ JWT or JOSE.
		{"typ_jwt", hdr["typ"] == "JWT"},
		// §3.1: sub is the SPIFFE ID.
		{"sub_is_spiffe_id", claims["sub"] == testID.String()},
		// §3.2: aud present with one or more values.
		{"aud_present", claims["aud"] != nil},
		// §3.3: exp set.
		{"exp_present", claims["exp"] != nil},
		{"exp_default_5m", exp.Equal(now.Add(DefaultJWTSVIDTTL)) && claims["exp"] == float64(exp.Unix())},
		{"iat_present", claims["iat"] == float64(now.Unix())},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			if !c.ok {
				t.Errorf("JWT-SVID fails %s: header %v claims %v", c.name, hdr, claims)
			}
		})
	}
	t.Run("validates_with_go_spiffe", func(t *testing.T) {
		svid, err := jwtsvid.ParseAndValidate(tok, e.ca.Bundle(), []string{"spiffe://example.org/reports"})
		if err != nil {
			t.Fatalf("jwtsvid.ParseAndValidate: %v", err)
		}
		if svid.ID != testID || !svid.Expiry.Equal(exp) {
			t.Errorf("svid = %v %v", svid.ID, svid.Expiry)
		}
	})
	t.Run("wrong_audience_rejected_by_go_spiffe", func(t *testing.T) {
		if _, err := jwtsvid.ParseAndValidate(tok, e.ca.Bundle(), []string{"spiffe://example.org/other"}); err == nil {
			t.Error("token accepted for another audience")
		}
	})
	t.Run("other_trust_domain_bundle_rejects", func(t *testing.T) {
		other := newEnv(t, nil) // same trust domain name, different keys
		if _, err := jwtsvid.ParseAndValidate(tok, other.ca.Bundle(), []string{"spiffe://example.org/reports"}); err == nil {
			t.Error("token accepted by a bundle without its key")
		}
	})
}

func TestJWTSVIDRequests(t *testing.T) {
	e := newEnv(t, nil)
	now := e.clock.Now()
	jwtNotAfter := time.Time{}
	for _, a := range e.ca.Status() {
		if a.Kind == KindJWT {
			jwtNotAfter = a.NotAfter
		}
	}
	tests := []struct {
		name    string
		aud     []string
		ttl     time.Duration
		wantExp time.Time
		wantErr error
	}{
		{"single_audience", []string{"a"}, 0, now.Add(DefaultJWTSVIDTTL), nil},
		{"several_audiences", []string{"a", "b"}, 0, now.Add(DefaultJWTSVIDTTL), nil},
		{"explicit_ttl", []string{"a"}, time.Minute, now.Add(time.Minute), nil},
		{"capped_at_key_not_after", []string{"a"}, 1000 * time.Hour, jwtNotAfter, nil},
		{"no_audience", nil, 0, time.Time{}, ErrInvalidRequest},
		{"empty_audience", []string{""}, 0, time.Time{}, ErrInvalidRequest},
		{"duplicate_audience", []string{"a", "a"}, 0, time.Time{}, ErrInvalidRequest},
		{"too_many_audiences", strings.Split(strings.Repeat("x,", maxAudiences)+"y", ","), 0, time.Time{}, ErrInvalidRequest},
		{"audience_too_long", []string{strings.Repeat("a", maxAudienceBytes+1)}, 0, time.Time{}, ErrInvalidRequest},
		{"audience_bad_utf8", []string{"\xff"}, 0, time.Time{}, ErrInvalidRequest},
		{"negative_ttl", []string{"a"}, -time.Second, time.Time{}, ErrInvalidRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, exp, err := e.ca.SignJWTSVID(testID, tt.aud, tt.ttl)
			if tt.wantErr != nil {
				if !isErr(err, tt.wantErr) || tok != "" {
					t.Fatalf("err = %v, token %q; want %v", err, tok, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !exp.Equal(tt.wantExp) {
				t.Errorf("exp = %v, want %v", exp, tt.wantExp)
			}
			if _, err := verifyJWT(tok, e.ca.Bundle(), tt.aud[0], now); err != nil {
				t.Errorf("verify: %v", err)
			}
		})
	}
}

// verifyJWT checks a JWT-SVID against a bundle at time at (go-spiffe's
// jwtsvid reads the real clock, which tests that move a fake clock cannot
// use). It does what jwtsvid.ParseAndValidate does, with go-jose.
func verifyJWT(tok string, b *spiffebundle.Bundle, aud string, at time.Time) (*jwt.Claims, error) {
	parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return nil, err
	}
	key, ok := b.FindJWTAuthority(parsed.Headers[0].KeyID)
	if !ok {
		return nil, errNoKey
	}
	var c jwt.Claims
	if err := parsed.Claims(key, &c); err != nil {
		return nil, err
	}
	if err := c.ValidateWithLeeway(jwt.Expected{AnyAudience: jwt.Audience{aud}, Time: at}, 0); err != nil {
		return nil, err
	}
	if c.Expiry == nil {
		return nil, errNoKey
	}
	return &c, nil
}

var errNoKey = jose.ErrUnsupportedKeyType

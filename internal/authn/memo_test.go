package authn

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/moatless/moatless/internal/wire"
)

// TestMemoServesOnlyWhatTheCacheWould: after a connection's memo accepted
// a token, the next request on it is not served from the memo when the
// token expired, its key was rotated out, it was revoked (by the pushed
// set or the hook), the request carries another token (one byte changed,
// or another valid one), the rules changed, or the token is bound to
// another certificate. Each case fails if the memo skips that check.
func TestMemoServesOnlyWhatTheCacheWould(t *testing.T) {
	keys(t)
	k2 := &testKey{kid: "ec2", alg: jose.ES256, priv: keyEvil.priv}
	certA, certB := thumb("cert A"), thumb("cert B")
	type env struct {
		v       *Verifier
		now     *atomic.Int64
		srv     *jwksServer
		rule    *securityv1beta1.JWTRule
		revoked *atomic.Bool
	}
	tok := sign(t, keyES256, claims(map[string]any{"jti": "t1", "cnf": map[string]any{"x5t#S256": certA}}))
	other := sign(t, keyES256, claims(map[string]any{"jti": "t2", "sub": "bob", "cnf": map[string]any{"x5t#S256": certA}}))
	// The same length, one signature byte changed (not the last, whose
	// low bits base64url may not carry).
	i := len(tok) - 10
	c := byte('A')
	if tok[i] == 'A' {
		c = 'B'
	}
	tampered := tok[:i] + string(c) + tok[i+1:]
	tests := []struct {
		name      string
		change    func(t *testing.T, e *env)
		tok, cert string
		rule      func(e *env) *securityv1beta1.JWTRule // nil: e.rule
		wantErr   error
		wantSub   string // the principal's subject when accepted
	}{
		{"same_token_again", nil, tok, certA, nil, nil, "alice"},
		{"expired", func(t *testing.T, e *env) {
			e.now.Store(testNow.Add(10*time.Minute + DefaultLeeway).UnixNano())
		}, tok, certA, nil, ErrExpired, ""},
		{"key_rotated_out", func(t *testing.T, e *env) {
			e.srv.set(jwksOf(t, k2), http.StatusOK)
			if err := e.v.Refresh(context.Background()); err != nil {
				t.Fatal(err)
			}
		}, tok, certA, nil, ErrUnknownKey, ""},
		{"revoked_by_push", func(t *testing.T, e *env) {
			e.v.SetRevokedTokens([]wire.RevokedTokenID{{JTI: "t1", ExpiresAt: testNow.Add(time.Hour)}})
		}, tok, certA, nil, ErrRevoked, ""},
		{"revoked_by_hook", func(t *testing.T, e *env) { e.revoked.Store(true) }, tok, certA, nil, ErrRevoked, ""},
		{"one_byte_changed", nil, tampered, certA, nil, ErrSignature, ""},
		{"another_valid_token", nil, other, certA, nil, nil, "bob"},
		{"other_rules", nil, tok, certA, func(e *env) *securityv1beta1.JWTRule {
			return &securityv1beta1.JWTRule{Issuer: testIssuer, Jwks: jwksOf(t, keyRSA)}
		}, ErrUnknownKey, ""},
		{"bound_to_another_certificate", nil, tok, certB, nil, ErrCertBinding, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := &env{now: new(atomic.Int64), revoked: new(atomic.Bool), srv: newJWKSServer(t, jwksOf(t, keyES256))}
			e.now.Store(testNow.UnixNano())
			e.v, _ = newTestVerifier(t, Options{
				Now:     func() time.Time { return time.Unix(0, e.now.Load()) },
				Revoked: func(jti string) bool { return jti == "t1" && e.revoked.Load() },
			})
			e.rule = &securityv1beta1.JWTRule{Issuer: testIssuer, JwksUri: e.srv.URL + "/jwks"}
			if err := e.v.Prepare(context.Background(), ruleList(e.rule)); err != nil {
				t.Fatal(err)
			}
			m := e.v.Memo()
			req := bearer(tok)
			req.Source.CertSHA256 = certA
			if _, err := m.Verify(ruleList(e.rule), req); err != nil {
				t.Fatalf("first request: %v", err)
			}
			if m.e == nil {
				t.Fatal("the memo did not remember the accepted token")
			}
			if tc.change != nil {
				tc.change(t, e)
			}
			rule := e.rule
			if tc.rule != nil {
				rule = tc.rule(e)
			}
			req = bearer(tc.tok)
			req.Source.CertSHA256 = tc.cert
			auth, err := m.Verify(ruleList(rule), req)
			switch {
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			case tc.wantErr == nil && err != nil:
				t.Fatalf("err = %v, want accepted", err)
			case tc.wantErr == nil && auth.Principal != testIssuer+"/"+tc.wantSub:
				t.Fatalf("principal %q, want %s/%s", auth.Principal, testIssuer, tc.wantSub)
			}
			// The verifier without the memo agrees.
			auth2, err2 := e.v.Verify(ruleList(rule), req)
			if (err == nil) != (err2 == nil) || (err == nil && auth2.Principal != auth.Principal) {
				t.Fatalf("memo: %v, %v; verifier: %v, %v", auth, err, auth2, err2)
			}
		})
	}
}

// TestMemoHitsWithoutTheCache: a token the memo holds is served from it
// (counted as a cache hit) even after the cache evicted its entry, and a
// verifier without a cache remembers nothing.
func TestMemoHitsWithoutTheCache(t *testing.T) {
	keys(t)
	rule := inlineRule(t, keyEd)
	tok := sign(t, keyEd, claims(map[string]any{"jti": "kept"}))

	v, _ := newTestVerifier(t, Options{CacheSize: 16})
	m := v.Memo()
	if _, err := m.Verify(ruleList(rule), bearer(tok)); err != nil {
		t.Fatal(err)
	}
	for i := range 64 {
		if _, err := v.Verify(ruleList(rule), bearer(sign(t, keyEd, claims(map[string]any{"jti": strings.Repeat("x", i+1)})))); err != nil {
			t.Fatal(err)
		}
	}
	before := v.Stats()
	if _, err := m.Verify(ruleList(rule), bearer(tok)); err != nil {
		t.Fatal(err)
	}
	if s := v.Stats(); s.CacheHits != before.CacheHits+1 || s.CacheMisses != before.CacheMisses {
		t.Fatalf("after eviction: hits %d→%d, misses %d→%d; want one more hit", before.CacheHits, s.CacheHits, before.CacheMisses, s.CacheMisses)
	}

	off, _ := newTestVerifier(t, Options{CacheSize: -1})
	m = off.Memo()
	for range 2 {
		if _, err := m.Verify(ruleList(rule), bearer(tok)); err != nil {
			t.Fatal(err)
		}
	}
	if m.e != nil || len(m.tok) != 0 || off.Stats().CacheHits != 0 {
		t.Fatalf("the memo of a verifier without a cache remembered a token (hits %d)", off.Stats().CacheHits)
	}
}

// TestMemoZeroesItsCopy: the memo's copy of a token is overwritten with
// zeros when another token replaces it and on Forget.
func TestMemoZeroesItsCopy(t *testing.T) {
	keys(t)
	rule := inlineRule(t, keyEd)
	long := sign(t, keyEd, claims(map[string]any{"jti": strings.Repeat("l", 64)}))
	short := sign(t, keyEd, claims(map[string]any{"jti": "s"}))
	v, _ := newTestVerifier(t, Options{})
	m := v.Memo()
	if _, err := m.Verify(ruleList(rule), bearer(long)); err != nil {
		t.Fatal(err)
	}
	held := m.tok[:cap(m.tok)]
	if _, err := m.Verify(ruleList(rule), bearer(short)); err != nil {
		t.Fatal(err)
	}
	if string(m.tok) != short || !allZero(held[len(short):]) {
		t.Fatalf("after a shorter token the old one's tail is still held: %q", held[len(short):])
	}
	m.Forget()
	if !allZero(held) || m.e != nil || len(m.tok) != 0 {
		t.Fatal("Forget left the token's bytes")
	}
	if _, err := m.Verify(ruleList(rule), bearer(long)); err != nil {
		t.Fatalf("after Forget: %v", err)
	}
}

func allZero(b []byte) bool { return len(bytes.Trim(b, "\x00")) == 0 }

// TestEqualToken: equalToken is bytes.Equal, for every length around the
// word size and a difference at every position.
func TestEqualToken(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for n := range 40 {
		a := make([]byte, n)
		for i := range a {
			a[i] = byte(r.Uint32())
		}
		if !equalToken(a, string(a)) {
			t.Fatalf("len %d: equal bytes compared unequal", n)
		}
		if n > 0 && equalToken(a, string(a[:n-1])) {
			t.Fatalf("len %d: a prefix compared equal", n)
		}
		for i := range n {
			for _, bit := range []byte{1, 0x80} {
				b := bytes.Clone(a)
				b[i] ^= bit
				if equalToken(a, string(b)) {
					t.Fatalf("len %d: byte %d differs by %#x, compared equal", n, i, bit)
				}
			}
		}
	}
}

func FuzzEqualToken(f *testing.F) {
	f.Add([]byte("eyJhbGciOiJFUzI1NiJ9.e30.sig"), "eyJhbGciOiJFUzI1NiJ9.e30.sig")
	f.Add([]byte("abcdefgh1"), "abcdefgh2")
	f.Add([]byte{}, "")
	f.Fuzz(func(t *testing.T, a []byte, b string) {
		if got, want := equalToken(a, b), string(a) == b; got != want {
			t.Fatalf("equalToken(%q, %q) = %v", a, b, got)
		}
	})
}

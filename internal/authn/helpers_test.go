package authn

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/moatless/moatless/internal/policy"
)

// testNow is the fixed "now" of every test that does not move its clock.
var testNow = time.Unix(1_800_000_000, 0)

const testIssuer = "https://issuer.example"

// testKey is a signing key with the kid and alg it is published under.
type testKey struct {
	kid  string
	alg  jose.SignatureAlgorithm
	priv crypto.Signer
}

func (k *testKey) public() crypto.PublicKey { return k.priv.Public() }

// jwk returns the public JWK as JSON, with kid and alg (either may be
// omitted by passing "").
func (k *testKey) jwk(t testing.TB, kid string, alg jose.SignatureAlgorithm) json.RawMessage {
	t.Helper()
	j := jose.JSONWebKey{Key: k.public(), KeyID: kid, Algorithm: string(alg), Use: "sig"}
	b, err := j.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var (
	keysOnce sync.Once
	keyES256 *testKey
	keyES384 *testKey
	keyES512 *testKey
	keyRSA   *testKey
	keyRSA2  *testKey
	keyEd    *testKey
	keyEvil  *testKey // the attacker's own P-256 key
	keyRSA1k *rsa.PrivateKey
)

// keys generates the test keys once per test binary (RSA is slow).
func keys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		ec := func(c elliptic.Curve) crypto.Signer {
			k, err := ecdsa.GenerateKey(c, rand.Reader)
			if err != nil {
				panic(err)
			}
			return k
		}
		rk := func(bits int) *rsa.PrivateKey {
			k, err := rsa.GenerateKey(rand.Reader, bits)
			if err != nil {
				panic(err)
			}
			return k
		}
		_, ed, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			panic(err)
		}
		keyES256 = &testKey{kid: "ec1", alg: jose.ES256, priv: ec(elliptic.P256())}
		keyES384 = &testKey{kid: "ec384", alg: jose.ES384, priv: ec(elliptic.P384())}
		keyES512 = &testKey{kid: "ec521", alg: jose.ES512, priv: ec(elliptic.P521())}
		keyRSA = &testKey{kid: "rsa1", alg: jose.RS256, priv: rk(2048)}
		keyRSA2 = &testKey{kid: "rsa2", alg: jose.RS256, priv: rk(2048)}
		keyEd = &testKey{kid: "ed1", alg: jose.EdDSA, priv: ed}
		keyEvil = &testKey{kid: "ec1", alg: jose.ES256, priv: ec(elliptic.P256())}
		keyRSA1k = rk(1024)
	})
}

// jwksOf builds a key set document from keys under their own kid and alg.
func jwksOf(t testing.TB, ks ...*testKey) string {
	t.Helper()
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	for _, k := range ks {
		doc.Keys = append(doc.Keys, k.jwk(t, k.kid, k.alg))
	}
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// claims returns a valid claim set for testIssuer at testNow; overrides
// replace or (with a nil value) delete members.
func claims(overrides map[string]any) map[string]any {
	c := map[string]any{
		"iss": testIssuer,
		"sub": "alice",
		"aud": "orders",
		"exp": testNow.Add(10 * time.Minute).Unix(),
		"iat": testNow.Add(-time.Minute).Unix(),
		"nbf": testNow.Add(-time.Minute).Unix(),
		"jti": "jti-1",
		"azp": "web-app",
	}
	for k, v := range overrides {
		if v == nil {
			delete(c, k)
			continue
		}
		c[k] = v
	}
	return c
}

// sign makes a token with go-jose, the way a well-behaved issuer would.
func sign(t testing.TB, k *testKey, cl map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if k.kid != "" {
		opts = opts.WithHeader("kid", k.kid)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: k.alg, Key: k.priv}, opts)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := json.Marshal(cl)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

var b64 = base64.RawURLEncoding

// rawToken assembles a token from literal header and payload JSON and a
// signature function over the signing input: what an attacker crafts.
func rawToken(header, payload string, sig func(input []byte) []byte) string {
	input := b64.EncodeToString([]byte(header)) + "." + b64.EncodeToString([]byte(payload))
	return input + "." + b64.EncodeToString(sig([]byte(input)))
}

// esSign returns an ES256/384/512 JWS signature (r||s, fixed width).
func esSign(k *testKey) func([]byte) []byte {
	return func(input []byte) []byte {
		priv := k.priv.(*ecdsa.PrivateKey)
		var digest []byte
		switch priv.Curve {
		case elliptic.P256():
			d := sha256.Sum256(input)
			digest = d[:]
		case elliptic.P384():
			d := sha512.Sum384(input)
			digest = d[:]
		default:
			d := sha512.Sum512(input)
			digest = d[:]
		}
		r, s, err := ecdsa.Sign(rand.Reader, priv, digest)
		if err != nil {
			panic(err)
		}
		size := (priv.Curve.Params().BitSize + 7) / 8
		out := make([]byte, 2*size)
		r.FillBytes(out[:size])
		s.FillBytes(out[size:])
		return out
	}
}

// derSign returns an ASN.1 DER ECDSA signature: the wrong JWS encoding.
func derSign(k *testKey) func([]byte) []byte {
	return func(input []byte) []byte {
		d := sha256.Sum256(input)
		sig, err := ecdsa.SignASN1(rand.Reader, k.priv.(*ecdsa.PrivateKey), d[:])
		if err != nil {
			panic(err)
		}
		return sig
	}
}

func rsSign(k *testKey) func([]byte) []byte {
	return func(input []byte) []byte {
		d := sha256.Sum256(input)
		sig, err := rsa.SignPKCS1v15(rand.Reader, k.priv.(*rsa.PrivateKey), crypto.SHA256, d[:])
		if err != nil {
			panic(err)
		}
		return sig
	}
}

func constSig(b []byte) func([]byte) []byte { return func([]byte) []byte { return b } }

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// inlineRule is a rule with the given keys inline.
func inlineRule(t testing.TB, ks ...*testKey) *securityv1beta1.JWTRule {
	return &securityv1beta1.JWTRule{Issuer: testIssuer, Jwks: jwksOf(t, ks...)}
}

// newTestVerifier returns a verifier on the fixed clock whose logs go to
// the returned buffer (so tests can check nothing secret is logged).
func newTestVerifier(t testing.TB, o Options) (*Verifier, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	if o.Now == nil {
		o.Now = func() time.Time { return testNow }
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewJSONHandler(&lockedWriter{w: &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	v := NewVerifier(o)
	t.Cleanup(func() { _ = v.Close() })
	return v, &logs
}

// lockedWriter serializes writes from concurrent goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func bearer(tok string) *policy.Request {
	return &policy.Request{Path: "/api", Headers: http.Header{"Authorization": {"Bearer " + tok}}}
}

// assertNoLeak fails if text contains the token or any long segment of it.
func assertNoLeak(t testing.TB, text, tok string) {
	t.Helper()
	if tok != "" && strings.Contains(text, tok) {
		t.Fatalf("text contains the token: %s", text)
	}
	for _, seg := range strings.Split(tok, ".") {
		if len(seg) >= 12 && strings.Contains(text, seg) {
			t.Fatalf("text contains a token segment: %s", text)
		}
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

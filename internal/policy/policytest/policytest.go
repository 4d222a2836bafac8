// Package policytest holds what several packages' tests share about
// policies: the Rego example files (the example, a role-based and
// an ownership-based policy, their data and providers, in
// internal/policy/testdata/rego) and a JWT issuer. Tests only.
package policytest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
)

// RegoDir is the directory of the Rego example files.
func RegoDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "testdata", "rego")
}

// CopyRego copies the Rego example files (not the requests/ directory of
// documentation examples), or only those named, into dir.
func CopyRego(t testing.TB, dir string, only ...string) {
	t.Helper()
	entries, err := os.ReadDir(RegoDir())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, o := range only {
		want[o] = true
	}
	for _, e := range entries {
		if e.IsDir() || (len(only) > 0 && !want[e.Name()]) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(RegoDir(), e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// Issuer makes an ES256 key: jwks publishes it (key ID "k1"), sign signs
// claims with it as a compact JWT.
func Issuer(t testing.TB) (jwks string, sign func(claims map[string]any) string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	set, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "k1"}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	return string(set), func(claims map[string]any) string {
		b, err := json.Marshal(claims)
		if err != nil {
			t.Fatal(err)
		}
		obj, err := signer.Sign(b)
		if err != nil {
			t.Fatal(err)
		}
		s, err := obj.CompactSerialize()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
}

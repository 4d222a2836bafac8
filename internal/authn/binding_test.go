package authn

import (
	"crypto/sha256"
	"errors"
	"testing"
)

// thumb is a certificate thumbprint in the form of cnf x5t#S256 and
// Source.CertSHA256 (the DER is made up: only the digest matters here).
func thumb(der string) string {
	sum := sha256.Sum256([]byte(der))
	return b64.EncodeToString(sum[:])
}

// RFC 8705 §3: a token bound to a client certificate (cnf x5t#S256) is
// accepted only from a connection whose certificate has that thumbprint;
// tokens without cnf are unaffected; a malformed cnf is refused.
func TestCertBoundTokens(t *testing.T) {
	keys(t)
	certA, certB := thumb("cert A"), thumb("cert B")
	for _, tc := range []struct {
		name    string
		cnf     any // nil: no cnf claim
		conn    string
		wantErr error
	}{
		{"unbound_over_plaintext", nil, "", nil},
		{"unbound_over_mtls", nil, certA, nil},
		{"bound_same_certificate", map[string]any{"x5t#S256": certA}, certA, nil},
		{"bound_other_certificate", map[string]any{"x5t#S256": certA}, certB, ErrCertBinding},
		{"bound_over_plaintext", map[string]any{"x5t#S256": certA}, "", ErrCertBinding},
		{"bound_thumbprint_case_changed", map[string]any{"x5t#S256": certA}, swapCase(certA), ErrCertBinding},
		{"cnf_without_x5t", map[string]any{"jkt": thumb("a key")}, "", nil},
		{"cnf_not_an_object", "bound", certA, ErrMalformed},
		{"x5t_not_a_string", map[string]any{"x5t#S256": 42}, certA, ErrMalformed},
		{"x5t_empty", map[string]any{"x5t#S256": ""}, "", ErrMalformed},
		{"x5t_too_short", map[string]any{"x5t#S256": certA[:42]}, certA[:42], ErrMalformed},
		{"x5t_padded", map[string]any{"x5t#S256": certA + "="}, certA + "=", ErrMalformed},
		{"x5t_standard_base64", map[string]any{"x5t#S256": "+" + certA[1:]}, "+" + certA[1:], ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, _ := newTestVerifier(t, Options{})
			over := map[string]any{}
			if tc.cnf != nil {
				over["cnf"] = tc.cnf
			}
			tok := sign(t, keyES256, claims(over))
			rule := inlineRule(t, keyES256)
			// Twice: the full check, then the cache hit, must agree.
			for i, lookup := range []string{"miss", "hit"} {
				req := bearer(tok)
				req.Source.CertSHA256 = tc.conn
				auth, err := v.Verify(ruleList(rule), req)
				if tc.wantErr == nil {
					if err != nil || auth == nil {
						t.Fatalf("%s: got %v, want accepted", lookup, err)
					}
					continue
				}
				if !errors.Is(err, tc.wantErr) || !errors.Is(err, ErrInvalidToken) || auth != nil {
					t.Fatalf("%s: got %v, want %v", lookup, err, tc.wantErr)
				}
				if got := v.Stats().Rejected["cert_binding"]; tc.wantErr == ErrCertBinding && got != uint64(i+1) {
					t.Fatalf("%s: cert_binding rejections = %d", lookup, got)
				}
			}
		})
	}
}

// The verified-token cache is keyed by token, the binding is per request:
// a bound token cached from its own connection is still refused when it
// is replayed over another one or over plaintext, and still accepted on
// its own connection afterwards.
func TestCertBindingCheckedOnCacheHits(t *testing.T) {
	keys(t)
	v, logs := newTestVerifier(t, Options{})
	rule := inlineRule(t, keyES256)
	certA := thumb("cert A")
	tok := sign(t, keyES256, claims(map[string]any{"cnf": map[string]any{"x5t#S256": certA}}))
	from := func(cert string) error {
		req := bearer(tok)
		req.Source.CertSHA256 = cert
		_, err := v.Verify(ruleList(rule), req)
		return err
	}
	for i, step := range []struct {
		conn string
		want error
	}{
		{certA, nil}, // miss: verified and cached
		{thumb("cert B"), ErrCertBinding},
		{"", ErrCertBinding},
		{certA, nil},
	} {
		if err := from(step.conn); !errors.Is(err, step.want) || (step.want == nil) != (err == nil) {
			t.Fatalf("step %d: got %v, want %v", i, err, step.want)
		}
	}
	s := v.Stats()
	if s.CacheMisses != 1 || s.CacheHits != 3 || s.Accepted != 2 || s.Rejected["cert_binding"] != 2 {
		t.Fatalf("stats = %+v", s)
	}
	assertNoLeak(t, logs.String(), tok)
}

func swapCase(s string) string {
	b := []byte(s)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z':
			b[i] = c - 'a' + 'A'
		case c >= 'A' && c <= 'Z':
			b[i] = c - 'A' + 'a'
		}
	}
	return string(b)
}

package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestOpenCreatesThenLoads(t *testing.T) {
	e := newEnv(t, nil)
	if _, n := e.store.snapshot(); n != 1 {
		t.Fatalf("first Open saved %d times, want 1", n)
	}
	re := e.reopen(t)
	if _, n := e.store.snapshot(); n != 1 {
		t.Errorf("reopening with nothing due saved again")
	}
	if diff := cmp.Diff(e.ca.Status(), re.Status(), statusCmp); diff != "" {
		t.Errorf("reopened status differs:\n%s", diff)
	}
	// An SVID from the first instance verifies against the second's bundle:
	// the keys survived the restart.
	is := mustSign(t, e.ca, testID, 0)
	pool := x509.NewCertPool()
	for _, c := range re.Bundle().X509Authorities() {
		pool.AddCert(c)
	}
	if _, err := is.Chain[0].Verify(x509.VerifyOptions{Roots: pool, CurrentTime: e.clock.Now()}); err != nil {
		t.Errorf("SVID of the first instance does not verify after restart: %v", err)
	}
	if re.TrustDomain() != testTD {
		t.Errorf("TrustDomain = %v", re.TrustDomain())
	}
}

func TestOpenWrongKEK(t *testing.T) {
	e := newEnv(t, nil)
	blob, saves := e.store.snapshot()
	o := e.opts
	o.KEK = bytes.Repeat([]byte{0x43}, KEKSize)
	_, err := Open(context.Background(), o)
	if !errors.Is(err, ErrUnseal) {
		t.Fatalf("Open with a wrong KEK = %v, want ErrUnseal", err)
	}
	if err.Error() != "ca: cannot unseal CA state: wrong key-encryption key?" {
		t.Errorf("message = %q", err)
	}
	if b, n := e.store.snapshot(); n != saves || !bytes.Equal(b, blob) {
		t.Errorf("a failed Open changed the store")
	}
}

func TestOpenOptions(t *testing.T) {
	store := &memStore{}
	base := func() Options { return Options{TrustDomain: testTD, State: store, KEK: testKEK} }
	tests := []struct {
		name string
		mod  func(*Options)
		want string
	}{
		{"no_trust_domain", func(o *Options) { o.TrustDomain = spiffeid.TrustDomain{} }, "TrustDomain is required"},
		{"trust_domain_too_long", func(o *Options) {
			o.TrustDomain = spiffeid.RequireTrustDomainFromString(strings.Repeat("a", 256))
		}, "at most 255"},
		{"no_state", func(o *Options) { o.State = nil }, "State is required"},
		{"no_kek", func(o *Options) { o.KEK = nil }, "KEK must be 32 bytes, got 0"},
		{"short_kek", func(o *Options) { o.KEK = make([]byte, 16) }, "KEK must be 32 bytes, got 16"},
		{"zero_kek", func(o *Options) { o.KEK = make([]byte, 32) }, "all zeros"},
		{"negative_ttl", func(o *Options) { o.X509SVIDTTL = -time.Second }, "X509SVIDTTL must not be negative"},
		{"ca_ttl_too_short_for_svids", func(o *Options) { o.CATTL = 5 * time.Hour }, "at least 6 times the longest default SVID TTL"},
		{"ca_ttl_too_short_for_delay", func(o *Options) { o.CATTL = 6 * time.Hour; o.ActivationDelay = 2 * time.Hour }, "6 times ActivationDelay"},
		{"delay_below_refresh_hint", func(o *Options) { o.ActivationDelay = time.Minute }, "at least RefreshHint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := base()
			tt.mod(&o)
			_, err := Open(context.Background(), o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open = %v, want an error mentioning %q", err, tt.want)
			}
			if _, n := store.snapshot(); n != 0 {
				t.Errorf("refused options wrote to the store")
			}
		})
	}
}

func TestOpenStoreErrors(t *testing.T) {
	e := newEnv(t, nil)
	good, _ := e.store.snapshot()
	tests := []struct {
		name  string
		store *memStore
		opts  func(*Options)
		want  string
		is    error
	}{
		{"load_fails", &memStore{loadErr: errors.New("connection refused")}, nil, "load CA state: connection refused", nil},
		{"first_save_fails", &memStore{saveErr: errors.New("read-only")}, nil, "save CA state: read-only", nil},
		{"other_trust_domain", &memStore{blob: good}, func(o *Options) { o.TrustDomain = spiffeid.RequireTrustDomainFromString("other.org") }, `is for trust domain "example.org"`, nil},
		{"not_our_format", &memStore{blob: []byte("hello")}, nil, "not a sealed Moatless CA state", nil},
		{"newer_format", &memStore{blob: append([]byte("MLCA\x02"), good[5:]...)}, nil, "format version 2", nil},
		{"flipped_byte", &memStore{blob: flip(good, len(good)-40)}, nil, "", ErrUnseal},
		{"flipped_nonce", &memStore{blob: append([]byte("MLCA\x01"), flip(good, 5)[5:]...)}, nil, "", ErrUnseal},
		{"truncated", &memStore{blob: good[:20]}, nil, "truncated", nil},
		{"oversized", &memStore{blob: make([]byte, maxSealedSize+1)}, nil, "over the", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := e.opts
			o.State = tt.store
			if tt.opts != nil {
				tt.opts(&o)
			}
			before := append([]byte(nil), tt.store.blob...)
			_, err := Open(context.Background(), o)
			if err == nil || !strings.Contains(err.Error(), tt.want) || tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("Open = %v, want an error mentioning %q (%v)", err, tt.want, tt.is)
			}
			if !bytes.Equal(before, tt.store.blob) || tt.store.saves != 0 {
				t.Errorf("a failed Open changed the store")
			}
		})
	}
}

func flip(b []byte, i int) []byte {
	out := append([]byte(nil), b...)
	out[i] ^= 1
	return out
}

// Sealed state with a valid seal but a bad inside is refused whole.
func TestDecodeStateRefusesBadState(t *testing.T) {
	e := newEnv(t, nil)
	blob, _ := e.store.snapshot()
	plain, err := unseal(testKEK, blob)
	if err != nil {
		t.Fatal(err)
	}
	edit := func(f func(m map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(plain, &m); err != nil {
			t.Fatal(err)
		}
		f(m)
		b, _ := json.Marshal(m)
		return b
	}
	x509rec := func(m map[string]any) map[string]any { return m["x509"].([]any)[0].(map[string]any) }
	jwtrec := func(m map[string]any) map[string]any { return m["jwt"].([]any)[0].(map[string]any) }
	tests := []struct {
		name  string
		plain []byte
		want  string
	}{
		{"not_json", []byte("{"), "invalid"},
		{"trailing_data", append(append([]byte(nil), plain...), []byte(" {}")...), "trailing data"},
		{"unknown_field", edit(func(m map[string]any) { m["extra"] = 1 }), "unknown field"},
		{"schema_version", edit(func(m map[string]any) { m["version"] = 9 }), "schema version 9"},
		{"unknown_state", edit(func(m map[string]any) { x509rec(m)["state"] = "zombie" }), `unknown state "zombie"`},
		{"key_not_pkcs8", edit(func(m map[string]any) { x509rec(m)["key"] = "AAAA" }), "private key"},
		{"cert_garbage", edit(func(m map[string]any) { x509rec(m)["cert"] = "AAAA" }), "certificate"},
		{"key_cert_mismatch", edit(func(m map[string]any) { x509rec(m)["key"] = jwtrec(m)["key"] }), "does not match the private key"},
		{"x509_id_mismatch", edit(func(m map[string]any) { x509rec(m)["id"] = "00" }), "subject key ID"},
		{"jwt_kid_mismatch", edit(func(m map[string]any) { jwtrec(m)["id"] = "other" }), "does not match the key"},
		{"jwt_with_cert", edit(func(m map[string]any) { jwtrec(m)["cert"] = x509rec(m)["cert"] }), "X.509 fields"},
		{"two_active", edit(func(m map[string]any) { m["x509"] = []any{x509rec(m), x509rec(m)} }), "duplicate"},
		{"validity_mismatch", edit(func(m map[string]any) { x509rec(m)["not_after"] = "2099-01-01T00:00:00Z" }), "validity period"},
		{"prepared_without_activation", edit(func(m map[string]any) { jwtrec(m)["state"] = "prepared" }), "without an activation time"},
		{"claims_upstream_parent", edit(func(m map[string]any) { x509rec(m)["parent"] = "ab" }), "without roots"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeState(tt.plain, testTD)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("decodeState = %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
}

// The sealed blob never holds a private key in the clear, and the logs never
// hold one at all.
func TestKeysNeverInTheClear(t *testing.T) {
	e := newEnv(t, nil)
	e.clock.Advance(13 * time.Hour)
	tick(t, e, true)
	if err := e.ca.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	blob, _ := e.store.snapshot()
	st := e.ca.cur.Load().st
	logs := e.logs.String()
	if !strings.Contains(logs, "prepared authority") {
		t.Fatalf("expected rotation logs, got %q", logs)
	}
	for _, recs := range [][]record{st.X509, st.JWT} {
		for _, r := range recs {
			der, err := x509.MarshalPKCS8PrivateKey(r.p.signer)
			if err != nil {
				t.Fatal(err)
			}
			// The private scalar is the tail of the SEC 1 encoding inside
			// PKCS#8; any 16-byte window of the key must not appear.
			for _, probe := range [][]byte{der, der[len(der)-80 : len(der)-64], der[36:52]} {
				if bytes.Contains(blob, probe) {
					t.Errorf("sealed state contains private key bytes of %s", r.ID)
				}
				if strings.Contains(logs, string(probe)) {
					t.Errorf("logs contain private key bytes of %s", r.ID)
				}
			}
			for _, enc := range []string{jsonBase64(der), jsonBase64(der[:48])} {
				if strings.Contains(logs, enc) || bytes.Contains(blob, []byte(enc)) {
					t.Errorf("key of %s appears base64-encoded", r.ID)
				}
			}
		}
	}
}

func jsonBase64(b []byte) string {
	s, _ := json.Marshal(b)
	return strings.Trim(string(s), `"`)
}

func TestSealRoundTripAndNonces(t *testing.T) {
	plain := []byte(`{"hello":"world"}`)
	a, err := seal(testKEK, plain)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := seal(testKEK, plain)
	if bytes.Equal(a, b) {
		t.Errorf("two seals of the same state are identical: nonce reuse")
	}
	if !bytes.HasPrefix(a, []byte("MLCA\x01")) {
		t.Errorf("header = %q", a[:5])
	}
	got, err := unseal(testKEK, a)
	if err != nil || !bytes.Equal(got, plain) {
		t.Errorf("unseal = %q, %v", got, err)
	}
}

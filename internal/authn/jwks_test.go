package authn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	securityv1beta1 "istio.io/api/security/v1beta1"
)

func TestParseJWKS(t *testing.T) {
	keys(t)
	ec := string(keyES256.jwk(t, "ec1", "ES256"))
	rsaNoAlg := string(keyRSA.jwk(t, "rsa1", ""))
	privEC, _ := (&jose.JSONWebKey{Key: keyES256.priv, KeyID: "priv", Algorithm: "ES256"}).MarshalJSON()
	weak, _ := (&jose.JSONWebKey{Key: &keyRSA1k.PublicKey, KeyID: "weak"}).MarshalJSON()
	withField := func(k, field string) string { return strings.TrimSuffix(k, "}") + "," + field + "}" }
	tests := []struct {
		name     string
		doc      string
		wantKeys int
		skipped  []string // reasons, in order
		wantErr  string
	}{
		{"one_key", `{"keys":[` + ec + `]}`, 1, nil, ""},
		{"extra_top_level_members_ignored", `{"keys":[` + ec + `],"other":1}`, 1, nil, ""},
		{"unusable_keys_skipped", `{"keys":[` + ec + `,{"kty":"oct","kid":"h","k":"c2VjcmV0"},` + string(privEC) + `,` + string(weak) + `]}`, 1,
			[]string{"symmetric key (HMAC is never accepted)", "private key material published in a key set", "RSA key of 1024 bits (accepted: 2048 to 8192)"}, ""},
		{"use_enc_skipped", `{"keys":[` + strings.Replace(ec, `"use":"sig"`, `"use":"enc"`, 1) + `,` + rsaNoAlg + `]}`, 1, []string{"key use is not sig"}, ""},
		{"key_ops_without_verify_skipped", `{"keys":[` + withField(ec, `"key_ops":["encrypt"]`) + `,` + rsaNoAlg + `]}`, 1, []string{"key_ops does not include verify"}, ""},
		{"key_ops_with_verify_kept", `{"keys":[` + withField(ec, `"key_ops":["verify"]`) + `]}`, 1, nil, ""},
		{"alg_hs256_skipped", `{"keys":[` + strings.Replace(ec, `"ES256"`, `"HS256"`, 1) + `,` + rsaNoAlg + `]}`, 1, []string{"key alg is not an accepted signature algorithm"}, ""},
		{"alg_mismatching_key_skipped", `{"keys":[` + strings.Replace(ec, `"ES256"`, `"RS256"`, 1) + `,` + rsaNoAlg + `]}`, 1, []string{"key alg does not match the key type"}, ""},
		{"unknown_kty_skipped", `{"keys":[{"kty":"XYZ","kid":"z"},` + ec + `]}`, 1, []string{"unsupported key type"}, ""},
		{"broken_key_skipped", `{"keys":[{"kty":"EC","kid":"b","crv":"P-256","x":"AA","y":"AA"},` + ec + `]}`, 1, []string{"invalid key parameters"}, ""},
		{"kid_not_string_skipped", `{"keys":[{"kty":"EC","kid":5},` + ec + `]}`, 1, []string{"not a JSON object with string members"}, ""},
		{"no_usable_key", `{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`, 0, nil, "no usable signing key"},
		{"empty_keys", `{"keys":[]}`, 0, nil, "no usable signing key"},
		{"no_keys_member", `{"jwks":[]}`, 0, nil, `no "keys" member`},
		{"keys_not_array", `{"keys":{}}`, 0, nil, "cannot unmarshal"},
		{"duplicate_member", `{"keys":[` + ec + `],"keys":[]}`, 0, nil, "duplicate member"},
		{"duplicate_member_in_key", `{"keys":[` + withField(ec, `"kid":"other"`) + `]}`, 0, nil, "duplicate member"},
		{"not_json", `keys`, 0, nil, "not a single JSON object"},
		{"trailing_garbage", `{"keys":[` + ec + `]} x`, 0, nil, "not a single JSON object"},
		{"too_many_keys", `{"keys":[` + strings.Repeat(ec+",", 100) + ec + `]}`, 0, nil, "more than the limit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ks, skipped, err := parseJWKS([]byte(tc.doc))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(ks.keys) != tc.wantKeys {
				t.Errorf("keys = %d, want %d", len(ks.keys), tc.wantKeys)
			}
			var reasons []string
			for _, s := range skipped {
				reasons = append(reasons, s.reason)
			}
			if strings.Join(reasons, "|") != strings.Join(tc.skipped, "|") {
				t.Errorf("skipped = %q, want %q", reasons, tc.skipped)
			}
		})
	}
}

func TestCheckStrictJSON(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		ok   bool
	}{
		{"object", `{"a":1,"b":[{"a":2},{"a":3}],"c":{"a":{"a":null}}}`, true},
		{"same_name_in_sibling_objects", `{"x":{"a":1},"y":{"a":1}}`, true},
		{"empty_object", `{}`, true},
		{"duplicate_top", `{"a":1,"a":1}`, false},
		{"duplicate_nested", `{"a":{"b":1,"b":2}}`, false},
		{"duplicate_in_array_element", `{"a":[{"b":1,"b":2}]}`, false},
		{"duplicate_after_nested", `{"a":{"x":1},"a":2}`, false},
		{"duplicate_escaped", `{"a":1,"\u0061":2}`, false},
		{"array_top", `[1]`, false},
		{"string_top", `"a"`, false},
		{"trailing_data", `{}{}`, false},
		{"invalid_utf8", "{\"a\":\"\xff\"}", false},
		{"too_deep", strings.Repeat(`{"a":`, 40) + `1` + strings.Repeat(`}`, 40), false},
		{"deep_but_allowed", strings.Repeat(`{"a":`, 20) + `1` + strings.Repeat(`}`, 20), true},
		{"truncated", `{"a":`, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := checkStrictJSON([]byte(tc.doc))
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// jwksServer serves a key set that tests swap at will, counts requests
// and can be told to fail.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	doc     string
	status  int
	hits    atomic.Int64
	handler http.HandlerFunc // overrides everything when set
}

func newJWKSServer(t *testing.T, doc string) *jwksServer {
	s := &jwksServer{doc: doc, status: http.StatusOK}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		s.mu.Lock()
		doc, status, h := s.doc, s.status, s.handler
		s.mu.Unlock()
		if h != nil {
			h(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprint(w, doc)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(doc string, status int) {
	s.mu.Lock()
	s.doc, s.status = doc, status
	s.mu.Unlock()
}

func (s *jwksServer) setHandler(h http.HandlerFunc) {
	s.mu.Lock()
	s.handler = h
	s.mu.Unlock()
}

func TestRemoteJWKSPrepare(t *testing.T) {
	keys(t)
	srv := newJWKSServer(t, jwksOf(t, keyES256))
	v, logs := newTestVerifier(t, Options{})
	r1 := &securityv1beta1.JWTRule{Issuer: testIssuer, JwksUri: srv.URL + "/jwks?api_key=SECRET-QUERY"}
	r2 := &securityv1beta1.JWTRule{Issuer: testIssuer, JwksUri: srv.URL + "/jwks?api_key=SECRET-QUERY", Audiences: []string{"orders"}}
	if err := v.Prepare(context.Background(), ruleList(r1, r2)); err != nil {
		t.Fatal(err)
	}
	if n := srv.hits.Load(); n != 1 {
		t.Errorf("rules sharing a jwksUri fetched it %d times", n)
	}
	tok := sign(t, keyES256, claims(nil))
	if _, err := v.Verify(ruleList(r1, r2), bearer(tok)); err != nil {
		t.Fatal(err)
	}
	st := v.Stats().KeySets
	if len(st) != 1 || st[0].Keys != 1 || st[0].Fetches != 1 || st[0].LastError != "" || st[0].LastSuccess != testNow {
		t.Fatalf("key sets = %+v", st)
	}
	if strings.Contains(st[0].Source, "SECRET") || strings.Contains(logs.String(), "SECRET") {
		t.Errorf("query string leaked: %s / %s", st[0].Source, logs.String())
	}
	if !strings.Contains(logs.String(), `"kids":["ec1"]`) {
		t.Errorf("load not logged with kids: %s", logs.String())
	}
	assertNoKeyMaterial(t, logs.String(), keyES256)

	// A new rule set drops sources nothing uses any more.
	srv2 := newJWKSServer(t, jwksOf(t, keyRSA))
	r3 := &securityv1beta1.JWTRule{Issuer: testIssuer, JwksUri: srv2.URL + "/jwks"}
	if err := v.Prepare(context.Background(), ruleList(r3)); err != nil {
		t.Fatal(err)
	}
	if st := v.Stats().KeySets; len(st) != 1 || !strings.HasPrefix(st[0].Source, srv2.URL) {
		t.Fatalf("key sets after switch = %+v", st)
	}
	if _, err := v.Verify(ruleList(r3), bearer(sign(t, keyRSA, claims(nil)))); err != nil {
		t.Fatal(err)
	}
	// Preparing the same rules again fetches nothing.
	if err := v.Prepare(context.Background(), ruleList(r3)); err != nil || srv2.hits.Load() != 1 {
		t.Fatalf("re-prepare: err %v, hits %d", err, srv2.hits.Load())
	}
}

// assertNoKeyMaterial checks that no coordinate or modulus of k appears.
func assertNoKeyMaterial(t *testing.T, text string, k *testKey) {
	t.Helper()
	var m map[string]any
	_ = json.Unmarshal(k.jwk(t, "", ""), &m)
	for _, f := range []string{"x", "y", "n", "d"} {
		if s, ok := m[f].(string); ok && len(s) > 8 && strings.Contains(text, s) {
			t.Fatalf("key material %q in %s", f, text)
		}
	}
}

// TestRemoteJWKSFailureKeepsOldSet: after a good fetch, no failure mode of
// a later fetch takes the keys away.
func TestRemoteJWKSFailureKeepsOldSet(t *testing.T) {
	keys(t)
	privEC, _ := (&jose.JSONWebKey{Key: keyES256.priv, KeyID: "leaked", Algorithm: "ES256"}).MarshalJSON()
	tests := []struct {
		name    string
		doc     string
		status  int
		handler http.HandlerFunc
		wantErr string
	}{
		{"http_500", `oops`, http.StatusInternalServerError, nil, "HTTP status 500"},
		{"http_404", ``, http.StatusNotFound, nil, "HTTP status 404"},
		{"not_json", `<html>`, http.StatusOK, nil, "not a single JSON object"},
		{"empty_key_set", `{"keys":[]}`, http.StatusOK, nil, "no usable signing key"},
		{"only_unusable_keys", `{"keys":[` + string(privEC) + `,{"kty":"oct","k":"c2VjcmV0"}]}`, http.StatusOK, nil, "no usable signing key"},
		{"duplicate_members", `{"keys":[],"keys":[]}`, http.StatusOK, nil, "duplicate member"},
		{"oversized_body", `{"keys":[],"pad":"` + strings.Repeat("a", 300<<10) + `"}`, http.StatusOK, nil, "larger than"},
		{"connection_dropped", "", 0, func(w http.ResponseWriter, r *http.Request) {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
		}, "EOF"},
		{"timeout", "", 0, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }, "deadline exceeded"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := newJWKSServer(t, jwksOf(t, keyES256))
			v, logs := newTestVerifier(t, Options{JWKSTimeout: 200 * time.Millisecond})
			rule := &securityv1beta1.JWTRule{Issuer: testIssuer, JwksUri: srv.URL + "/jwks"}
			if err := v.Prepare(context.Background(), ruleList(rule)); err != nil {
				t.Fatal(err)
			}
			tok := sign(t, keyES256, claims(nil))
			srv.set(tc.doc, tc.status)
			srv.setHandler(tc.handler)
			err := v.Refresh(context.Background())
			if !errors.Is(err, ErrJWKSFetch) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Refresh err = %v, want ErrJWKSFetch with %q", err, tc.wantErr)
			}
			if _, err := v.Verify(ruleList(rule), bearer(tok)); err != nil {
				t.Fatalf("keys lost after failed fetch: %v", err)
			}
			st := v.Stats().KeySets[0]
			if st.Keys != 1 || st.Failures != 1 || st.LastError == "" || st.NextFetch != testNow.Add(minBackoff) {
				t.Fatalf("status = %+v", st)
			}
			if !strings.Contains(logs.String(), "keeping the last good key set") {
				t.Errorf("failure not logged: %s", logs.String())
			}
			assertNoKeyMaterial(t, logs.String(), keyES256)
		})
	}
}

func TestRemoteJWKSBackoff(t *testing.T) {
	keys(t)
	srv := newJWKSServer(t, "")
	srv.set("nope", http.StatusServiceUnavailable)
	var now atomic.Int64
	now.Store(testNow.UnixNano())
	v, _ := newTestVerifier(t, Options{Now: func() time.Time { return time.Unix(0, now.Load()) }})
	rule := &securityv1beta1.JWTRule{Issuer: testIssuer, JwksUri: srv.URL}
	if err := v.Prepare(context.Background(), ruleList(rule)); !errors.Is(err, ErrJWKSFetch) {
		t.Fatalf("Prepare err = %v", err)
	}
	for i, want := range []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second} {
		_ = v.Refresh(context.Background())
		if got := v.Stats().KeySets[0].NextFetch.Sub(testNow); got != want {
			t.Fatalf("after failure %d: next fetch in %v, want %v", i+2, got, want)
		}
	}
	// A token for it is refused as keys-unavailable, not waved through.
	if _, err := v.Verify(ruleList(rule), bearer(sign(t, keyES256, claims(nil)))); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("err = %v", err)
	}
	srv.set(jwksOf(t, keyES256), http.StatusOK)
	if err := v.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := v.Stats().KeySets[0].NextFetch.Sub(testNow); got != DefaultJWKSRefresh {
		t.Fatalf("after success: next fetch in %v", got)
	}
}

// TestRemoteJWKSRotation: a key set change applies on refresh, and tokens
// cached under a key that is gone are no longer accepted.
func TestRemoteJWKSRotation(t *testing.T) {
	keys(t)
	k1 := keyES256
	k2 := &testKey{kid: "ec2", alg: jose.ES256, priv: keyEvil.priv}
	srv := newJWKSServer(t, jwksOf(t, k1))
	v, _ := newTestVerifier(t, Options{})
	rule := &securityv1beta1.JWTRule{Issuer: testIssuer, JwksUri: srv.URL + "/jwks"}
	if err := v.Prepare(context.Background(), ruleList(rule)); err != nil {
		t.Fatal(err)
	}
	old := sign(t, k1, claims(nil))
	next := sign(t, k2, claims(nil))
	if _, err := v.Verify(ruleList(rule), bearer(old)); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ruleList(rule), bearer(next)); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("new key before refresh: %v", err)
	}
	// Overlap: both published.
	srv.set(jwksOf(t, k1, k2), http.StatusOK)
	if err := v.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{old, next} {
		if _, err := v.Verify(ruleList(rule), bearer(tok)); err != nil {
			t.Fatal(err)
		}
	}
	// An unchanged document keeps the set (and the cache) as is.
	before := v.Stats().CacheHits
	if err := v.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ruleList(rule), bearer(old)); err != nil || v.Stats().CacheHits != before+1 {
		t.Fatalf("unchanged refresh lost the cache: %v", err)
	}
	// Old key retired: its cached token goes with it.
	srv.set(jwksOf(t, k2), http.StatusOK)
	if err := v.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ruleList(rule), bearer(old)); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("token of retired key: %v", err)
	}
	if _, err := v.Verify(ruleList(rule), bearer(next)); err != nil {
		t.Fatal(err)
	}
}

// TestRemoteJWKSBackgroundFetch: Verify never fetches; the refresher does,
// for a source Verify saw first and for unknown kids (rate limited).
func TestRemoteJWKSBackgroundFetch(t *testing.T) {
	keys(t)
	k2 := &testKey{kid: "ec2", alg: jose.ES256, priv: keyEvil.priv}
	srv := newJWKSServer(t, jwksOf(t, keyES256))
	var now atomic.Int64
	now.Store(testNow.UnixNano())
	fetched := make(chan error, 16)
	v, _ := newTestVerifier(t, Options{
		Now:         func() time.Time { return time.Unix(0, now.Load()) },
		OnJWKSFetch: func(_ string, err error) { fetched <- err },
	})
	rule := &securityv1beta1.JWTRule{Issuer: testIssuer, JwksUri: srv.URL + "/jwks"}
	tok := sign(t, keyES256, claims(nil))

	// Not prepared, not started: refused, and no request went out.
	if _, err := v.Verify(ruleList(rule), bearer(tok)); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("err = %v", err)
	}
	if srv.hits.Load() != 0 {
		t.Fatal("Verify did network I/O")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	v.Start(ctx)
	waitFetch(t, fetched)
	if _, err := v.Verify(ruleList(rule), bearer(tok)); err != nil {
		t.Fatalf("after background fetch: %v", err)
	}

	// Unknown kid: refused now, refreshed in the background.
	srv.set(jwksOf(t, keyES256, k2), http.StatusOK)
	tok2 := sign(t, k2, claims(nil))
	if _, err := v.Verify(ruleList(rule), bearer(tok2)); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("err = %v", err)
	}
	waitFetch(t, fetched)
	if _, err := v.Verify(ruleList(rule), bearer(tok2)); err != nil {
		t.Fatalf("after kid refresh: %v", err)
	}

	// Another unknown kid within MinRefreshInterval does not fetch again.
	src := v.remoteList()[0]
	bogus := rawToken(`{"alg":"ES256","kid":"made-up"}`, mustJSON(t, claims(nil)), esSign(keyES256))
	if _, err := v.Verify(ruleList(rule), bearer(bogus)); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("err = %v", err)
	}
	if due, _ := src.due(time.Unix(0, now.Load())); due {
		t.Fatal("unknown kid refresh not rate limited")
	}
	now.Add(int64(DefaultMinRefreshInterval))
	if _, err := v.Verify(ruleList(rule), bearer(bogus)); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("err = %v", err)
	}
	waitFetch(t, fetched)

	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestUnknownKIDKeepsFailureBackoff: tokens with made-up kids for an
// issuer whose key set endpoint is failing must not pull the next fetch
// forward. The refresher already retries a failing source with backoff
// (up to 5 minutes); before, every MinRefreshInterval (30 s) an unknown
// kid moved the retry to now, so anyone could make each sidecar hit a
// struggling issuer ten times as often as the backoff allows.
func TestUnknownKIDKeepsFailureBackoff(t *testing.T) {
	keys(t)
	srv := newJWKSServer(t, jwksOf(t, keyES256))
	var now atomic.Int64
	now.Store(testNow.UnixNano())
	v, _ := newTestVerifier(t, Options{Now: func() time.Time { return time.Unix(0, now.Load()) }})
	rule := &securityv1beta1.JWTRule{Issuer: testIssuer, JwksUri: srv.URL + "/jwks"}
	if err := v.Prepare(context.Background(), ruleList(rule)); err != nil {
		t.Fatal(err)
	}
	srv.set("down", http.StatusServiceUnavailable)
	for range 4 {
		_ = v.Refresh(context.Background())
	}
	src := v.remoteList()[0]
	_, next := src.due(time.Unix(0, now.Load()))
	if want := testNow.Add(8 * time.Second); !next.Equal(want) {
		t.Fatalf("after 4 failures the next fetch is at %v, want %v", next, want)
	}
	bogus := rawToken(`{"alg":"ES256","kid":"made-up"}`, mustJSON(t, claims(nil)), esSign(keyES256))
	for i := range 3 {
		now.Add(int64(DefaultMinRefreshInterval) / 10)
		if _, err := v.Verify(ruleList(rule), bearer(bogus)); !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("err = %v", err)
		}
		if due, at := src.due(time.Unix(0, now.Load())); due && time.Unix(0, now.Load()).Before(next) {
			t.Fatalf("unknown kid %d moved the fetch of a failing key set to %v, inside its backoff (until %v)", i, at, next)
		}
	}
	// The keys it had still verify meanwhile.
	if _, err := v.Verify(ruleList(rule), bearer(sign(t, keyES256, claims(nil)))); err != nil {
		t.Fatal(err)
	}
}

func waitFetch(t *testing.T, ch <-chan error) {
	t.Helper()
	select {
	case err := <-ch:
		if err != nil {
			t.Fatalf("fetch: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no fetch happened")
	}
}

// TestRemoteJWKSPeriodicRefresh runs the refresher on the real clock with
// a short interval and waits for the fetches it makes.
func TestRemoteJWKSPeriodicRefresh(t *testing.T) {
	keys(t)
	srv := newJWKSServer(t, jwksOf(t, keyES256))
	fetched := make(chan error, 16)
	v := NewVerifier(Options{
		JWKSRefresh: 20 * time.Millisecond,
		Logger:      discardLogger(),
		OnJWKSFetch: func(_ string, err error) {
			select {
			case fetched <- err:
			default:
			}
		},
	})
	defer v.Close()
	rule := &securityv1beta1.JWTRule{Issuer: testIssuer, JwksUri: srv.URL + "/jwks"}
	if err := v.Prepare(context.Background(), ruleList(rule)); err != nil {
		t.Fatal(err)
	}
	<-fetched
	v.Start(context.Background())
	for range 3 {
		waitFetch(t, fetched)
	}
}

func TestDiscovery(t *testing.T) {
	keys(t)
	var issuer string
	var discoveryDoc func() string
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, discoveryDoc()) })
	mux.HandleFunc("/keys", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, jwksOf(t, keyES256)) })
	mux.HandleFunc("/hop1", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/keys", http.StatusFound) })
	loop := 0
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) {
		loop++
		http.Redirect(w, r, fmt.Sprintf("/loop?n=%d", loop), http.StatusFound)
	})
	mux.HandleFunc("/downgrade", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://example.com/keys", http.StatusFound)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	issuer = srv.URL

	tests := []struct {
		name    string
		doc     func() string
		wantErr string
	}{
		{"discovered", func() string { return `{"issuer":"` + issuer + `","jwks_uri":"` + issuer + `/keys"}` }, ""},
		{"discovered_with_redirect", func() string { return `{"issuer":"` + issuer + `","jwks_uri":"` + issuer + `/hop1"}` }, ""},
		{"issuer_mismatch", func() string { return `{"issuer":"https://evil.example","jwks_uri":"` + issuer + `/keys"}` }, "document is for issuer"},
		{"jwks_uri_plain_http_remote", func() string { return `{"issuer":"` + issuer + `","jwks_uri":"http://example.com/keys"}` }, "use https"},
		{"duplicate_member", func() string { return `{"issuer":"` + issuer + `","issuer":"x","jwks_uri":"` + issuer + `/keys"}` }, "duplicate member"},
		{"redirect_loop", func() string { return `{"issuer":"` + issuer + `","jwks_uri":"` + issuer + `/loop"}` }, "too many redirects"},
		{"redirect_downgrade", func() string { return `{"issuer":"` + issuer + `","jwks_uri":"` + issuer + `/downgrade"}` }, "redirect refused"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			discoveryDoc = tc.doc
			v, _ := newTestVerifier(t, Options{})
			rule := &securityv1beta1.JWTRule{Issuer: issuer}
			err := v.Prepare(context.Background(), ruleList(rule))
			tok := sign(t, keyES256, claims(map[string]any{"iss": issuer}))
			_, verr := v.Verify(ruleList(rule), bearer(tok))
			if tc.wantErr == "" {
				if err != nil || verr != nil {
					t.Fatalf("Prepare: %v; Verify: %v", err, verr)
				}
				return
			}
			if !errors.Is(err, ErrJWKSFetch) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Prepare err = %v, want %q", err, tc.wantErr)
			}
			if !errors.Is(verr, ErrKeysUnavailable) {
				t.Fatalf("Verify err = %v", verr)
			}
		})
	}
}

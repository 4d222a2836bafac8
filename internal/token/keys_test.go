package token_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/token"
)

func (h *harness) jwks() []string {
	h.t.Helper()
	resp, err := h.http.Get(h.issuer + "/.well-known/jwks.json")
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		h.t.Fatal(err)
	}
	var kids []string
	for _, k := range set.Keys {
		if !k.IsPublic() {
			h.t.Fatalf("JWKS holds a private key %s", k.KeyID)
		}
		kids = append(kids, k.KeyID)
	}
	return kids
}

func kidOf(t *testing.T, raw string) string {
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256, jose.RS256, jose.EdDSA})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Headers[0].KeyID
}

// Keys rotate by the injected clock: the next key is published before it
// signs, and the old key stays in the JWKS until its last token expired,
// so a token signed just before rotation stays valid to its end.
func TestKeyRotationWithOverlap(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db, func(c *token.Config) { c.KeyRotation, c.KeyPublishAhead = time.Hour, 10*time.Minute })
		ctx := context.Background()
		tick := func() {
			if err := h.svc.Tick(ctx); err != nil {
				t.Fatal(err)
			}
		}
		cl := h.createClient(token.ClientRequest{Name: "svc", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}})
		tick()
		k1 := h.jwks()
		if len(k1) != 1 {
			t.Fatalf("first key set %v", k1)
		}
		h.clock.Advance(49 * time.Minute)
		tick()
		if got := h.jwks(); len(got) != 1 {
			t.Fatalf("next key published too early: %v", got)
		}
		h.clock.Advance(2 * time.Minute) // 51m: inside the publish-ahead window
		tick()
		both := h.jwks()
		if len(both) != 2 || both[0] != k1[0] {
			t.Fatalf("next key not published ahead: %v", both)
		}
		k2 := both[1]
		h.clock.Advance(8 * time.Minute) // 59m: k1 still signs
		old := h.ccToken("svc", cl.Secret)
		if kidOf(t, old) != k1[0] {
			t.Fatal("the published next key signed before its time")
		}
		h.clock.Advance(2 * time.Minute) // 61m: k2 signs
		tick()
		if kid := kidOf(t, h.ccToken("svc", cl.Secret)); kid != k2 {
			t.Fatalf("signing with %s, want %s", kid, k2)
		}
		if _, _, err := h.verifyWithJWKS(old); err != nil || !h.active(old) {
			t.Fatalf("token of the retired key no longer valid before its expiry: %v", err)
		}
		h.clock.Advance(9 * time.Minute) // 70m: old token expired
		if h.active(old) {
			t.Fatal("expired token active")
		}
		h.clock.Advance(11 * time.Minute) // 81m: past retire + max token lifetime + leeway
		tick()
		if got := h.jwks(); len(got) != 1 || got[0] != k2 {
			t.Fatalf("retired key not dropped: %v", got)
		}

		// A restarted service (same store and KEK) uses the same keys;
		// a wrong KEK cannot unseal them and says so.
		again, err := token.New(token.Config{Issuer: h.issuer, Store: db.OAuth(), KEK: bytes.Repeat([]byte{7}, 32), Now: h.clock.Now,
			KeyRotation: time.Hour, KeyPublishAhead: 10 * time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		if err := again.Tick(ctx); err != nil {
			t.Fatal(err)
		}
		set, _ := again.JWKS(ctx)
		if len(set.Keys) != 1 || set.Keys[0].KeyID != k2 {
			t.Fatalf("restart: %v", set.Keys)
		}
		wrong, _ := token.New(token.Config{Issuer: h.issuer, Store: db.OAuth(), KEK: bytes.Repeat([]byte{8}, 32), Now: h.clock.Now,
			KeyRotation: time.Hour, KeyPublishAhead: 10 * time.Minute})
		if err := wrong.Tick(ctx); err == nil {
			t.Fatal("wrong KEK unsealed the signing key")
		}
	})
}

func TestSigningAlgorithms(t *testing.T) {
	db := storetest.SQLite(t)
	for _, alg := range []string{"ES256", "RS256", "EdDSA"} {
		t.Run(alg, func(t *testing.T) {
			h := newHarness(t, storetest.SQLite(t), func(c *token.Config) { c.SigningAlg = alg })
			name := "svc-" + alg
			cl := h.createClient(token.ClientRequest{Name: name, ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}})
			raw := h.ccToken(name, cl.Secret)
			tok, _ := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256, jose.RS256, jose.EdDSA})
			if tok.Headers[0].Algorithm != alg || tok.Headers[0].KeyID == "" {
				t.Fatalf("header %+v", tok.Headers[0])
			}
			if _, _, err := h.verifyWithJWKS(raw); err != nil {
				t.Fatal(err)
			}
		})
	}
	if _, err := token.New(token.Config{Issuer: "https://x", Store: db.OAuth(), KEK: make([]byte, 32), SigningAlg: "HS256"}); err == nil {
		t.Fatal("HS256 accepted")
	}
}

func TestConfigValidation(t *testing.T) {
	db := storetest.SQLite(t)
	ok := token.Config{Issuer: "https://127.0.0.1:8443", Store: db.OAuth(), KEK: make([]byte, 32)}
	for _, tc := range []struct {
		name string
		mod  func(*token.Config)
	}{
		{"no_store", func(c *token.Config) { c.Store = nil }},
		{"short_kek", func(c *token.Config) { c.KEK = make([]byte, 16) }},
		{"http_issuer", func(c *token.Config) { c.Issuer = "http://127.0.0.1:8443" }},
		{"issuer_trailing_slash", func(c *token.Config) { c.Issuer = "https://127.0.0.1:8443/" }},
		{"issuer_with_query", func(c *token.Config) { c.Issuer = "https://127.0.0.1:8443?x=1" }},
		{"access_ttl_over_15m", func(c *token.Config) { c.AccessTokenTTL = 16 * time.Minute }},
		{"publish_ahead_not_shorter", func(c *token.Config) { c.KeyRotation, c.KeyPublishAhead = time.Hour, time.Hour }},
		{"code_ttl_too_long", func(c *token.Config) { c.CodeTTL = time.Hour }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mod(&c)
			if _, err := token.New(c); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if _, err := token.New(ok); err != nil {
		t.Fatal(err)
	}
}

func TestDiscovery(t *testing.T) {
	h := newHarness(t, storetest.SQLite(t))
	resp, err := h.http.Get(h.issuer + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var d map[string]any
	json.NewDecoder(resp.Body).Decode(&d)
	if resp.StatusCode != http.StatusOK || d["issuer"] != h.issuer || d["token_endpoint"] != h.issuer+"/oauth2/token" ||
		d["jwks_uri"] != h.issuer+"/.well-known/jwks.json" || d["tls_client_certificate_bound_access_tokens"] != true {
		t.Fatalf("%d %v", resp.StatusCode, d)
	}
	if m, _ := d["code_challenge_methods_supported"].([]any); len(m) != 1 || m[0] != "S256" {
		t.Fatalf("PKCE methods %v", d["code_challenge_methods_supported"])
	}
	// Closed service refuses.
	h.svc.Close()
	h.svc.Close()
	status, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, "", "")
	if status != http.StatusServiceUnavailable {
		t.Fatalf("after Close: %d %v", status, body)
	}
}

// Changing the signing algorithm publishes a key of the new algorithm
// ahead, which then signs; the old key stays for its tokens.
func TestSigningAlgorithmChange(t *testing.T) {
	db := storetest.SQLite(t)
	ctx := context.Background()
	h := newHarness(t, db)
	cl := h.createClient(token.ClientRequest{Name: "svc", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}})
	old := h.ccToken("svc", cl.Secret)
	rs, err := token.New(token.Config{Issuer: h.issuer, Store: db.OAuth(), KEK: bytes.Repeat([]byte{7}, 32), Now: h.clock.Now, SigningAlg: "RS256"})
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	set, _ := rs.JWKS(ctx)
	if len(set.Keys) != 2 || set.Keys[1].Algorithm != "RS256" {
		t.Fatalf("keys %v", set.Keys)
	}
	h.clock.Advance(token.DefaultKeyPublishAhead + time.Second)
	if err := h.svc.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	tok, _ := jwt.ParseSigned(h.ccToken("svc", cl.Secret), []jose.SignatureAlgorithm{jose.ES256, jose.RS256})
	if tok.Headers[0].Algorithm != "RS256" {
		t.Fatalf("after the switch: %s", tok.Headers[0].Algorithm)
	}
	if kidOf(t, old) == tok.Headers[0].KeyID {
		t.Fatal("same key")
	}
}

// An emergency rotation signs with a new key at once; tokens of the old
// key stay valid until they expire.
func TestEmergencyKeyRotation(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		cl := h.createClient(token.ClientRequest{Name: "svc", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}})
		old := h.ccToken("svc", cl.Secret)
		var keys struct{ Keys []token.KeyInfo }
		if code := h.admin("POST", "keys/rotate", nil, &keys); code != 200 || len(keys.Keys) != 2 {
			t.Fatalf("rotate: %d %+v", code, keys)
		}
		state := map[string]string{}
		for _, k := range keys.Keys {
			state[k.KID] = k.State
		}
		for _, k := range keys.Keys {
			if k.State == "retired" && k.ExpireAt.After(h.clock.Now().Add(token.MaxAccessTokenTTL+5*time.Minute)) {
				t.Fatalf("retired key published past its last token: %+v", k)
			}
		}
		if state[kidOf(t, old)] != "retired" {
			t.Fatalf("old key %s after rotation: %+v", kidOf(t, old), keys)
		}
		fresh := h.ccToken("svc", cl.Secret)
		newKID := kidOf(t, fresh)
		if newKID == kidOf(t, old) || state[newKID] != "signing" {
			t.Fatalf("the new key does not sign: %s %+v", newKID, keys)
		}
		if !h.active(old) || len(h.jwks()) != 2 {
			t.Fatal("the old key's token died with the rotation")
		}
		// The scheduled rotation carries on from the new key.
		if err := h.svc.Tick(context.Background()); err != nil {
			t.Fatal(err)
		}
		if kidOf(t, h.ccToken("svc", cl.Secret)) != newKID {
			t.Fatal("Tick switched back to the old key")
		}
	})
}

// Replicas share keys and state through the store; a token one replica
// issued is valid at another whose clock is a few seconds behind.
func TestReplicaWithClockSkew(t *testing.T) {
	db := storetest.SQLite(t)
	h := newHarness(t, db)
	cl := h.createClient(token.ClientRequest{Name: "svc", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}})
	for _, tc := range []struct {
		name   string
		ahead  time.Duration
		active bool
	}{
		{"two_seconds_ahead", 2 * time.Second, true},
		{"twenty_seconds_ahead", 20 * time.Second, true},
		{"two_minutes_ahead", 2 * time.Minute, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			other, err := token.New(token.Config{Issuer: h.issuer, Store: db.OAuth(), KEK: bytes.Repeat([]byte{7}, 32),
				Now: func() time.Time { return h.clock.Now().Add(tc.ahead) }})
			if err != nil {
				t.Fatal(err)
			}
			req := httptest.NewRequest("POST", h.issuer+"/oauth2/token", strings.NewReader("grant_type=client_credentials"))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.SetBasicAuth("svc", cl.Secret)
			rec := httptest.NewRecorder()
			other.Handler().ServeHTTP(rec, req)
			var tok struct {
				AccessToken string `json:"access_token"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &tok); err != nil || tok.AccessToken == "" {
				t.Fatalf("issue: %d %s", rec.Code, rec.Body)
			}
			if got := h.active(tok.AccessToken); got != tc.active {
				t.Fatalf("active at the slower replica: %v, want %v", got, tc.active)
			}
		})
	}
}

// A leaked signing key can be revoked: it leaves the JWKS and its tokens
// (every one it signed, or an attacker forged with it) stop verifying at
// once, here and, at their next Tick, at the other replicas. Before,
// the only remedy was rotation, which keeps the old key published, and
// its tokens (forged ones too) valid, until its last token's expiry. The
// key that signs now cannot be revoked: rotate first.
func TestRevokeLeakedSigningKey(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		cl := h.createClient(token.ClientRequest{Name: "svc", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}})
		old := h.ccToken("svc", cl.Secret)
		oldKID := kidOf(t, old)
		replica, err := token.New(token.Config{Issuer: h.issuer, Store: db.OAuth(), KEK: bytes.Repeat([]byte{7}, 32), Now: h.clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { replica.Close() })
		if err := replica.Tick(t.Context()); err != nil {
			t.Fatal(err)
		}
		activeAt := func(svc *token.Service, raw string) bool {
			t.Helper()
			b, _ := json.Marshal(map[string]string{"token": raw})
			rec := httptest.NewRecorder()
			svc.AdminHandler().ServeHTTP(rec, httptest.NewRequest("POST", token.AdminPathPrefix+"tokens/introspect", bytes.NewReader(b)))
			var m map[string]any
			if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &m) != nil {
				t.Fatalf("introspect: %d %s", rec.Code, rec.Body)
			}
			return m["active"] == true
		}
		for _, tc := range []struct {
			name, kid string
			rotate    bool
			want      int
		}{
			{"the_signing_key", oldKID, false, http.StatusConflict},
			{"unknown_key", "no-such-kid", false, http.StatusNotFound},
			{"a_retired_key", oldKID, true, http.StatusOK},
			{"again", oldKID, false, http.StatusNotFound},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if tc.rotate {
					if code := h.admin("POST", "keys/rotate", nil, nil); code != 200 {
						t.Fatalf("rotate: %d", code)
					}
				}
				before := len(h.auditTypes())
				if code := h.admin("POST", "keys/"+tc.kid+"/revoke", nil, nil); code != tc.want {
					t.Fatalf("revoke: %d, want %d", code, tc.want)
				}
				revoked := tc.want == http.StatusOK
				if got := h.auditTypes(); revoked && (len(got) != before+1 || got[len(got)-1] != "oauth.key.revoked") {
					t.Errorf("audit records of the revocation: %v", got[before:])
				}
				if tc.name == "the_signing_key" && !h.active(old) {
					t.Error("a refused revocation changed something: the key's token is inactive")
				}
			})
		}
		if h.active(old) {
			t.Error("a token of the revoked key is active")
		}
		for _, k := range h.jwks() {
			if k == oldKID {
				t.Error("the revoked key is still in the JWKS")
			}
		}
		fresh := h.ccToken("svc", cl.Secret)
		if kidOf(t, fresh) == oldKID || !h.active(fresh) {
			t.Error("the successor key does not sign")
		}
		// Another replica drops the key at its next Tick.
		if err := replica.Tick(t.Context()); err != nil {
			t.Fatal(err)
		}
		if activeAt(replica, old) {
			t.Error("a replica accepts a token of the revoked key after its Tick")
		}
		if !activeAt(replica, fresh) {
			t.Error("a replica refuses the successor key's token")
		}
	})
}

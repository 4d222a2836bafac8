package token_test

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/token"
)

func (h *harness) ccToken(client, secret string) string {
	h.t.Helper()
	status, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, client, secret)
	if status != 200 {
		h.t.Fatalf("client_credentials: %d %v", status, body)
	}
	return body["access_token"].(string)
}

// rawPost returns the exact answer bytes.
// introspectActive reports whether the token service says raw is
// active, asked by the client id with secret.
func (h *harness) introspectActive(raw, id, secret string) bool {
	h.t.Helper()
	status, out := h.rawPost("/oauth2/introspect", url.Values{"token": {raw}}, id, secret)
	if status != 200 {
		h.t.Fatalf("introspect: %d %s", status, out)
	}
	return !bytes.Equal(out, []byte(`{"active":false}`))
}

func (h *harness) rawPost(path string, form url.Values, user, pass string) (int, []byte) {
	h.t.Helper()
	req, _ := http.NewRequest("POST", h.issuer+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := h.http.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, bytes.TrimSpace(b)
}

// RFC 7009 and RFC 7662 behaviour: revocation answers 200 for unknown
// tokens, needs client authentication and reaches OnRevoke; introspection
// needs an authenticated confidential client and says only
// {"active":false} about anything inactive.
func TestRevocationAndIntrospection(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		a := h.createClient(token.ClientRequest{Name: "a", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}, Scopes: []string{"x"}}})
		b := h.createClient(token.ClientRequest{Name: "b", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}})
		h.createClient(token.ClientRequest{Name: "pub", ClientSpec: token.ClientSpec{AuthMethod: token.AuthNone,
			GrantTypes: []string{"authorization_code"}, RedirectURIs: []string{appCallback}}})
		at := h.ccToken("a", a.Secret)
		jti := claims(t, at)["jti"].(string)

		// Introspection of an active token by another confidential client
		// (a resource server).
		status, body := h.post(nil, "/oauth2/introspect", url.Values{"token": {at}}, "b", b.Secret)
		if status != 200 || body["active"] != true || body["client_id"] != "a" || body["jti"] != jti || body["scope"] != "x" || body["iss"] != h.issuer {
			t.Fatalf("introspect active: %d %v", status, body)
		}
		for _, tc := range []struct {
			name       string
			form       url.Values
			user, pass string
			status     int
		}{
			{"introspect_without_auth", url.Values{"token": {at}}, "", "", 401},
			{"introspect_wrong_secret", url.Values{"token": {at}}, "b", "nope", 401},
			{"introspect_public_client", url.Values{"token": {at}, "client_id": {"pub"}}, "", "", 401},
			{"introspect_no_token", url.Values{}, "b", b.Secret, 400},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if status, body := h.post(nil, "/oauth2/introspect", tc.form, tc.user, tc.pass); status != tc.status {
					t.Fatalf("got %d %v", status, body)
				}
			})
		}

		inactive := []byte(`{"active":false}`)
		for _, tc := range []struct{ name, token string }{
			{"unknown_opaque", "mlr_unknown"},
			{"garbage", "garbage"},
			{"foreign_jwt", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"},
		} {
			t.Run("inactive_"+tc.name, func(t *testing.T) {
				status, raw := h.rawPost("/oauth2/introspect", url.Values{"token": {tc.token}}, "b", b.Secret)
				if status != 200 || !bytes.Equal(raw, inactive) {
					t.Fatalf("got %d %s", status, raw)
				}
			})
		}

		// Revocation: unknown tokens 200; auth required; only own tokens.
		for _, tc := range []struct {
			name       string
			form       url.Values
			user, pass string
			status     int
		}{
			{"unknown_token_200", url.Values{"token": {"whatever"}}, "a", a.Secret, 200},
			{"unknown_refresh_200", url.Values{"token": {"mlr_whatever"}, "token_type_hint": {"refresh_token"}}, "a", a.Secret, 200},
			{"no_client_auth", url.Values{"token": {at}}, "", "", 401},
			{"other_clients_token", url.Values{"token": {at}}, "b", b.Secret, 400},
			{"bad_hint", url.Values{"token": {at}, "token_type_hint": {"id_token"}}, "a", a.Secret, 400},
			{"missing_token", url.Values{}, "a", a.Secret, 400},
		} {
			t.Run("revoke_"+tc.name, func(t *testing.T) {
				if status, body := h.post(nil, "/oauth2/revoke", tc.form, tc.user, tc.pass); status != tc.status {
					t.Fatalf("got %d %v", status, body)
				}
			})
		}
		if h.wasRevoked(jti) {
			t.Fatal("a failed revocation revoked the token")
		}
		status, _ = h.post(nil, "/oauth2/revoke", url.Values{"token": {at}, "token_type_hint": {"access_token"}}, "a", a.Secret)
		if status != 200 || !h.wasRevoked(jti) {
			t.Fatalf("revoke own token: %d, OnRevoke called: %v", status, h.wasRevoked(jti))
		}
		status, raw := h.rawPost("/oauth2/introspect", url.Values{"token": {at}}, "b", b.Secret)
		if status != 200 || !bytes.Equal(raw, inactive) {
			t.Fatalf("revoked token introspects as %d %s", status, raw)
		}
		// Revoking again is fine and does not call OnRevoke twice.
		h.mu.Lock()
		delete(h.revoked, jti)
		h.mu.Unlock()
		if status, _ := h.post(nil, "/oauth2/revoke", url.Values{"token": {at}}, "a", a.Secret); status != 200 || h.wasRevoked(jti) {
			t.Fatal("second revocation")
		}
		var list struct {
			Revoked []token.RevokedToken `json:"revoked"`
		}
		h.admin("GET", "tokens/revoked", nil, &list)
		if len(list.Revoked) != 1 || list.Revoked[0].JTI != jti {
			t.Fatalf("revoked list %+v", list)
		}
		// Expired tokens introspect inactive.
		at2 := h.ccToken("a", a.Secret)
		h.clock.Advance(11 * time.Minute)
		if status, raw := h.rawPost("/oauth2/introspect", url.Values{"token": {at2}}, "b", b.Secret); !bytes.Equal(raw, inactive) {
			t.Fatalf("expired token: %d %s", status, raw)
		}
	})
}

// A revoked refresh token revokes its grant: the refresh family and its
// access tokens.
func TestRevokeRefreshTokenRevokesGrant(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		web := h.webClient()
		h.createUser("gina", "gina's password", token.UserSpec{})
		v, ch := pkce("g")
		code := h.loginForCode("web", appCallback, "openid", "gina", "gina's password", ch)
		_, tk := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {appCallback}, "code_verifier": {v}}, "web", web.Secret)
		rt, at := tk["refresh_token"].(string), tk["access_token"].(string)
		if !h.active(rt) {
			t.Fatal("refresh token inactive before revocation")
		}
		if status, _ := h.post(nil, "/oauth2/revoke", url.Values{"token": {rt}}, "web", web.Secret); status != 200 {
			t.Fatal(status)
		}
		if h.active(rt) || h.active(at) || !h.wasRevoked(claims(t, at)["jti"].(string)) {
			t.Fatal("grant not revoked with its refresh token")
		}
	})
}

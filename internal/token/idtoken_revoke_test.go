package token_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"testing"

	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/token"
	"github.com/moatless/moatless/internal/wire"
)

// An ID token is a signed JWT of this issuer like an access token, with
// the client's ID as aud and the user's roles and tenant. A
// RequestAuthentication for the issuer (Istio's, Envoy's, ours) checks no
// typ, so where the client's ID is among the rule's audiences, or the
// rule names none, a sidecar accepts a stolen ID token as a bearer token.
// Ending the login (a reused refresh token or code, revocation of the
// refresh token, a password reset) must therefore end its ID tokens at
// the sidecars too, as it ends the access tokens: their IDs go out on the
// revocation list. Before, only access token IDs did, and a thief's ID
// token kept opening the sidecar after the theft was detected.
func TestIDTokenRevokedWithItsLogin(t *testing.T) {
	h := newHarness(t, storetest.SQLite(t))
	web := h.webClient()
	h.createUser("ida", "ida's password!!", token.UserSpec{Roles: []string{"buyer"}})

	resp, err := h.http.Get(h.issuer + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	jwks, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// The sidecar of the client's own backend: its tokens are for "web".
	rules := []*securityv1beta1.JWTRule{{Issuer: h.issuer, Jwks: string(jwks), Audiences: []string{web.ID}}}
	v := authn.NewVerifier(authn.Options{Now: h.clock.Now, Logger: slog.New(slog.DiscardHandler), CacheSize: -1})
	defer v.Close()
	if err := v.Prepare(t.Context(), rules); err != nil {
		t.Fatal(err)
	}
	sidecarAccepts := func(tok string) bool {
		h.mu.Lock()
		var ids []wire.RevokedTokenID
		for jti, exp := range h.revoked {
			ids = append(ids, wire.RevokedTokenID{JTI: jti, ExpiresAt: exp})
		}
		h.mu.Unlock()
		v.SetRevokedTokens(ids)
		a, err := v.Verify(rules, &policy.Request{Path: "/", Headers: http.Header{"Authorization": {"Bearer " + tok}}})
		return err == nil && a != nil
	}
	tokenReq := func(t *testing.T, form url.Values) map[string]any {
		t.Helper()
		status, body := h.post(nil, "/oauth2/token", form, "web", web.Secret)
		if status != 200 {
			t.Fatalf("%v: %d %v", form["grant_type"], status, body)
		}
		return body
	}
	login := func(t *testing.T, seed string) (url.Values, map[string]any) {
		v, ch := pkce(seed)
		code := h.loginForCode("web", appCallback, "openid", "ida", "ida's password!!", ch)
		form := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {appCallback}, "code_verifier": {v}}
		return form, tokenReq(t, form)
	}

	for i, tc := range []struct {
		name string
		end  func(t *testing.T, redeem url.Values, first map[string]any) (idTokens []string)
	}{
		{"refresh token reused", func(t *testing.T, _ url.Values, first map[string]any) []string {
			rt := first["refresh_token"].(string)
			next := tokenReq(t, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}})
			h.post(nil, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}, "web", web.Secret)
			return []string{first["id_token"].(string), next["id_token"].(string)}
		}},
		{"code reused", func(t *testing.T, redeem url.Values, first map[string]any) []string {
			h.post(nil, "/oauth2/token", redeem, "web", web.Secret)
			return []string{first["id_token"].(string)}
		}},
		{"refresh token revoked (RFC 7009)", func(t *testing.T, _ url.Values, first map[string]any) []string {
			if status, body := h.post(nil, "/oauth2/revoke", url.Values{"token": {first["refresh_token"].(string)}}, "web", web.Secret); status != 200 {
				t.Fatalf("revoke: %d %v", status, body)
			}
			return []string{first["id_token"].(string)}
		}},
		{"password reset", func(t *testing.T, _ url.Values, first map[string]any) []string {
			if code := h.admin("POST", "users/ida/password", map[string]string{"password": "ida's new password"}, nil); code != http.StatusNoContent {
				t.Fatalf("set-password: %d", code)
			}
			h.admin("POST", "users/ida/password", map[string]string{"password": "ida's password!!"}, nil)
			return []string{first["id_token"].(string)}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			redeem, first := login(t, string(rune('a'+i)))
			idt := first["id_token"].(string)
			if !sidecarAccepts(idt) {
				t.Fatal("precondition: the sidecar does not accept the live ID token; the test proves nothing")
			}
			for i, idt := range tc.end(t, redeem, first) {
				if sidecarAccepts(idt) {
					t.Errorf("ID token %d of the ended login still accepted by the sidecar", i)
				}
			}
		})
	}
}

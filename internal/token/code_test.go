package token_test

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/token"
)

const appCallback = "https://app.example/cb"

func (h *harness) webClient() *token.ClientAnswer {
	return h.createClient(token.ClientRequest{Name: "web", ClientSpec: token.ClientSpec{
		GrantTypes: []string{"authorization_code", "refresh_token"}, RedirectURIs: []string{appCallback},
		Scopes: []string{"openid", "email", "orders.read"}, Audiences: []string{"orders"}}})
}

func (h *harness) active(raw string) bool {
	h.t.Helper()
	var m map[string]any
	if code := h.admin("POST", "tokens/introspect", map[string]string{"token": raw}, &m); code != 200 {
		h.t.Fatalf("introspect: %d", code)
	}
	if m["active"] != true && len(m) != 1 {
		h.t.Fatalf("inactive answer says more than active=false: %v", m)
	}
	return m["active"] == true
}

// The whole browser flow with unchanged standard clients: x/oauth2 builds
// the request and redeems the code, the test drives the login form
// (password, then TOTP) like a browser with a cookie jar, and go-oidc
// verifies the ID token (signature via discovery + JWKS, nonce, at_hash)
// and reads userinfo.
func TestCodeFlowWithGoOIDC(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		web := h.webClient()
		u := h.createUser("alice", "correct horse battery", token.UserSpec{Email: "alice@example.org", Roles: []string{"buyer"}, Tenant: "acme"})
		secret, _ := h.enrollTOTP("alice")

		ctx := oidc.ClientContext(context.Background(), h.http)
		provider, err := oidc.NewProvider(ctx, h.issuer)
		if err != nil {
			t.Fatal(err)
		}
		cfg := oauth2.Config{ClientID: web.ID, ClientSecret: web.Secret, Endpoint: provider.Endpoint(), RedirectURL: appCallback,
			Scopes: []string{oidc.ScopeOpenID, "email"}}
		verifier := oauth2.GenerateVerifier()
		authURL := cfg.AuthCodeURL("state-xyz", oauth2.S256ChallengeOption(verifier), oidc.Nonce("nonce-123"))

		browser := h.tlsClient(nil)
		p := h.get(browser, authURL)
		if p.status != 200 || !strings.Contains(p.body, `name="password"`) {
			t.Fatalf("login page: %d %s", p.status, p.body)
		}
		for k, want := range map[string]string{"Cache-Control": "no-store", "X-Frame-Options": "DENY"} {
			if got := p.header.Get(k); got != want {
				t.Errorf("%s = %q, want %q", k, got, want)
			}
		}
		if csp := p.header.Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("CSP %q", csp)
		}
		p = h.submit(browser, p, url.Values{"username": {"alice"}, "password": {"correct horse battery"}})
		if p.status != 200 || !strings.Contains(p.body, `name="code"`) {
			t.Fatalf("want TOTP page, got %d %s", p.status, p.body)
		}
		p = h.submit(browser, p, url.Values{"code": {h.totpCode(secret, 0)}})
		code := codeFrom(t, p)
		loc, _ := url.Parse(p.location)
		if loc.Query().Get("state") != "state-xyz" || loc.Query().Get("iss") != h.issuer || !strings.HasPrefix(p.location, appCallback+"?") {
			t.Fatalf("redirect %s", p.location)
		}

		tok, err := cfg.Exchange(ctx, code, oauth2.VerifierOption(verifier))
		if err != nil {
			t.Fatal(err)
		}
		rawID, _ := tok.Extra("id_token").(string)
		idt, err := provider.Verifier(&oidc.Config{ClientID: web.ID, Now: h.clock.Now}).Verify(ctx, rawID)
		if err != nil {
			t.Fatal(err)
		}
		if idt.Nonce != "nonce-123" || idt.Subject != u.ID {
			t.Fatalf("id token: nonce %q sub %q", idt.Nonce, idt.Subject)
		}
		if err := idt.VerifyAccessToken(tok.AccessToken); err != nil {
			t.Fatalf("at_hash: %v", err)
		}
		var idc struct {
			AMR               []string `json:"amr"`
			PreferredUsername string   `json:"preferred_username"`
			Email             string   `json:"email"`
		}
		idt.Claims(&idc)
		if !slices.Contains(idc.AMR, "otp") || idc.PreferredUsername != "alice" || idc.Email != "alice@example.org" {
			t.Fatalf("id claims %+v", idc)
		}
		if tok.RefreshToken == "" {
			t.Fatal("no refresh token")
		}
		at, typ, err := h.verifyWithJWKS(tok.AccessToken)
		if err != nil || typ != "at+jwt" || at["sub"] != u.ID || at["aud"] != "orders" || at["tenant"] != "acme" || at["client_id"] != "web" {
			t.Fatalf("access token %v %q %v", at, typ, err)
		}
		ui, err := provider.UserInfo(ctx, oauth2.StaticTokenSource(tok))
		if err != nil {
			t.Fatal(err)
		}
		if ui.Subject != u.ID || ui.Email != "alice@example.org" {
			t.Fatalf("userinfo %+v", ui)
		}
		types := h.auditTypes()
		for _, want := range []string{"oauth.login.success", "oauth.mfa.verified", "oauth.token.issued", "oauth.mfa.enrolled"} {
			if !slices.Contains(types, want) {
				t.Errorf("no %s audit record in %v", want, types)
			}
		}
	})
}

// PKCE is required and checked, S256 only; the redirect URI must match
// exactly; bad clients and redirect URIs never redirect.
func TestAuthorizeRequestChecks(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		h.webClient()
		_, ch := pkce("v")
		base := url.Values{"response_type": {"code"}, "client_id": {"web"}, "redirect_uri": {appCallback}, "state": {"s1"},
			"code_challenge": {ch}, "code_challenge_method": {"S256"}, "scope": {"openid"}}
		mod := func(kv ...string) string {
			q := url.Values{}
			for k, v := range base {
				q[k] = v
			}
			for i := 0; i < len(kv); i += 2 {
				if kv[i+1] == "" {
					q.Del(kv[i])
				} else {
					q.Set(kv[i], kv[i+1])
				}
			}
			return h.issuer + "/oauth2/authorize?" + q.Encode()
		}
		for _, tc := range []struct {
			name    string
			url     string
			status  int
			errCode string // in the redirect; "" for a page error
		}{
			{"valid", mod(), 200, ""},
			{"no_code_challenge", mod("code_challenge", ""), 303, "invalid_request"},
			{"plain_method", mod("code_challenge_method", "plain"), 303, "invalid_request"},
			{"no_method_means_plain", mod("code_challenge_method", ""), 303, "invalid_request"},
			{"challenge_not_sha256", mod("code_challenge", "abc"), 303, "invalid_request"},
			{"token_response_type", mod("response_type", "token"), 303, "unsupported_response_type"},
			{"scope_not_allowed", mod("scope", "openid admin"), 303, "invalid_scope"},
			{"prompt_none", mod("prompt", "none"), 303, "login_required"},
			{"request_object", mod("request", "eyJ.x.y"), 303, "request_not_supported"},
			{"wrong_redirect_uri", mod("redirect_uri", "https://evil.example/cb"), 400, ""},
			{"redirect_uri_prefix_trick", mod("redirect_uri", appCallback+"/../x"), 400, ""},
			{"redirect_uri_extra_query", mod("redirect_uri", appCallback+"?next=x"), 400, ""},
			// Spellings a URL parser or a browser may read as the
			// registered URI (or as another host): compared as strings,
			// none is the registered one, and none is redirected to.
			{"redirect_uri_host_case", mod("redirect_uri", "https://APP.example/cb"), 400, ""},
			{"redirect_uri_scheme_case", mod("redirect_uri", "HTTPS://app.example/cb"), 400, ""},
			{"redirect_uri_trailing_slash", mod("redirect_uri", appCallback+"/"), 400, ""},
			{"redirect_uri_default_port", mod("redirect_uri", "https://app.example:443/cb"), 400, ""},
			{"redirect_uri_userinfo", mod("redirect_uri", "https://app.example@evil.example/cb"), 400, ""},
			{"redirect_uri_backslash", mod("redirect_uri", "https://evil.example\\@app.example/cb"), 400, ""},
			{"redirect_uri_encoded_path", mod("redirect_uri", "https://app.example/%63b"), 400, ""},
			{"redirect_uri_fragment", mod("redirect_uri", appCallback+"#x"), 400, ""},
			{"redirect_uri_http", mod("redirect_uri", "http://app.example/cb"), 400, ""},
			{"redirect_uri_host_suffix", mod("redirect_uri", "https://app.example.evil.example/cb"), 400, ""},
			{"missing_redirect_uri", mod("redirect_uri", ""), 400, ""},
			{"unknown_client", mod("client_id", "nobody"), 400, ""},
			{"duplicate_parameter", mod() + "&state=again", 400, ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				p := h.get(h.tlsClient(nil), tc.url)
				if p.status != tc.status {
					t.Fatalf("status %d, want %d: %s", p.status, tc.status, p.body)
				}
				if tc.status == 400 && p.location != "" {
					t.Fatalf("redirected to %s on an untrusted request", p.location)
				}
				if tc.status == 303 {
					u, _ := url.Parse(p.location)
					if !strings.HasPrefix(p.location, appCallback+"?") || u.Query().Get("error") != tc.errCode || u.Query().Get("state") != "s1" {
						t.Fatalf("redirect %s", p.location)
					}
				}
			})
		}
	})
}

// Token-time checks of the code: PKCE verifier, redirect URI, client,
// expiry.
func TestCodeRedemptionChecks(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		web := h.webClient()
		other := h.createClient(token.ClientRequest{Name: "other", ClientSpec: token.ClientSpec{
			GrantTypes: []string{"authorization_code"}, RedirectURIs: []string{appCallback}}})
		h.createUser("bob", "bob's long password", token.UserSpec{})
		v, ch := pkce("k")
		redeem := func(user, pass string, kv ...string) (int, map[string]any) {
			code := h.loginForCode("web", appCallback, "openid", "bob", "bob's long password", ch)
			f := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {appCallback}, "code_verifier": {v}}
			for i := 0; i < len(kv); i += 2 {
				if kv[i+1] == "" {
					f.Del(kv[i])
				} else {
					f.Set(kv[i], kv[i+1])
				}
			}
			return h.post(nil, "/oauth2/token", f, user, pass)
		}
		for _, tc := range []struct {
			name       string
			user, pass string
			kv         []string
			advance    time.Duration
			status     int
			errCode    string
		}{
			{"valid", "web", web.Secret, nil, 0, 200, ""},
			{"missing_verifier", "web", web.Secret, []string{"code_verifier", ""}, 0, 400, "invalid_request"},
			{"short_verifier", "web", web.Secret, []string{"code_verifier", "abc"}, 0, 400, "invalid_request"},
			{"wrong_verifier", "web", web.Secret, []string{"code_verifier", strings.Repeat("x", 50)}, 0, 400, "invalid_grant"},
			{"wrong_redirect_uri", "web", web.Secret, []string{"redirect_uri", "https://app.example/other"}, 0, 400, "invalid_grant"},
			{"another_client", "other", other.Secret, nil, 0, 400, "invalid_grant"},
			{"expired_code", "web", web.Secret, nil, 61 * time.Second, 400, "invalid_grant"},
			{"unknown_code", "web", web.Secret, []string{"code", "mlc_nope"}, 0, 400, "invalid_grant"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if tc.advance > 0 {
					code := h.loginForCode("web", appCallback, "openid", "bob", "bob's long password", ch)
					h.clock.Advance(tc.advance)
					status, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {appCallback}, "code_verifier": {v}}, tc.user, tc.pass)
					if status != tc.status || body["error"] != tc.errCode {
						t.Fatalf("got %d %v", status, body)
					}
					return
				}
				status, body := redeem(tc.user, tc.pass, tc.kv...)
				if status != tc.status || (tc.errCode != "" && body["error"] != tc.errCode) {
					t.Fatalf("got %d %v, want %d %s", status, body, tc.status, tc.errCode)
				}
			})
		}
	})
}

// Someone who intercepted a code but does not have the client's
// credentials, redirect URI and PKCE verifier cannot burn the code, and
// their attempts (before or after the real redemption) never count as
// reuse, which would revoke the real client's tokens. The client's own
// second redemption still does (TestCodeReuseRevokesIssuedTokens).
func TestCodeMismatchDoesNotBurnCode(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		web := h.webClient()
		other := h.createClient(token.ClientRequest{Name: "other", ClientSpec: token.ClientSpec{
			GrantTypes: []string{"authorization_code"}, RedirectURIs: []string{appCallback, "https://app.example/other"}}})
		h.createUser("gil", "gil's password!", token.UserSpec{})
		v, ch := pkce("g")
		code := h.loginForCode("web", appCallback, "openid", "gil", "gil's password!", ch)
		form := func(kv ...string) url.Values {
			f := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {appCallback}, "code_verifier": {v}}
			for i := 0; i < len(kv); i += 2 {
				f.Set(kv[i], kv[i+1])
			}
			return f
		}
		attacks := []struct {
			name       string
			user, pass string
			form       url.Values
		}{
			{"wrong_verifier", "web", web.Secret, form("code_verifier", strings.Repeat("x", 50))},
			{"wrong_redirect_uri", "web", web.Secret, form("redirect_uri", "https://app.example/other")},
			{"another_client", "other", other.Secret, form()},
			{"another_client_wrong_verifier", "other", other.Secret, form("code_verifier", strings.Repeat("y", 43))},
		}
		try := func(phase string) {
			for _, a := range attacks {
				t.Run(phase+"/"+a.name, func(t *testing.T) {
					if status, body := h.post(nil, "/oauth2/token", a.form, a.user, a.pass); status != 400 || body["error"] != "invalid_grant" {
						t.Fatalf("got %d %v, want 400 invalid_grant", status, body["error"])
					}
				})
			}
		}
		try("before_redemption")
		status, body := h.post(nil, "/oauth2/token", form(), "web", web.Secret)
		if status != 200 {
			t.Fatalf("the real client's redemption after the attempts: %d %v", status, body["error"])
		}
		at := body["access_token"].(string)
		try("after_redemption")
		if !h.active(at) || h.wasRevoked(claims(t, at)["jti"].(string)) {
			t.Fatal("mismatching attempts after the redemption revoked the client's token")
		}
		if status, rb := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {body["refresh_token"].(string)}},
			"web", web.Secret); status != 200 {
			t.Fatalf("refresh after mismatching attempts: %d %v", status, rb["error"])
		}
		if slices.Contains(h.auditTypes(), "oauth.code.reused") {
			t.Fatal("a mismatching attempt was audited as code reuse")
		}
	})
}

// A public client (no secret) must still use PKCE and gets tokens with
// its client_id alone.
func TestPublicClientCodeFlow(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		h.createClient(token.ClientRequest{Name: "spa", ClientSpec: token.ClientSpec{AuthMethod: token.AuthNone,
			GrantTypes: []string{"authorization_code", "refresh_token"}, RedirectURIs: []string{"http://127.0.0.1:9999/cb"}}})
		h.createUser("carol", "carol's password!", token.UserSpec{})
		v, ch := pkce("p")
		code := h.loginForCode("spa", "http://127.0.0.1:9999/cb", "", "carol", "carol's password!", ch)
		status, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"authorization_code"}, "client_id": {"spa"}, "code": {code},
			"redirect_uri": {"http://127.0.0.1:9999/cb"}, "code_verifier": {v}}, "", "")
		if status != 200 || body["refresh_token"] == nil {
			t.Fatalf("%d %v", status, body)
		}
		// A public client cannot use client_credentials even if asked.
		status, body = h.post(nil, "/oauth2/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {"spa"}}, "", "")
		if status != 400 || body["error"] != "unauthorized_client" {
			t.Fatalf("%d %v", status, body)
		}
	})
}

// RFC 6749 §4.1.2: a code used twice revokes the tokens issued from it,
// and each revoked access token ID goes to OnRevoke.
func TestCodeReuseRevokesIssuedTokens(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		web := h.webClient()
		h.createUser("dave", "dave's password!", token.UserSpec{})
		v, ch := pkce("r")
		code := h.loginForCode("web", appCallback, "openid", "dave", "dave's password!", ch)
		form := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {appCallback}, "code_verifier": {v}}
		status, first := h.post(nil, "/oauth2/token", form, "web", web.Secret)
		if status != 200 {
			t.Fatalf("%d %v", status, first)
		}
		at := first["access_token"].(string)
		if !h.active(at) {
			t.Fatal("fresh token inactive")
		}
		status, second := h.post(nil, "/oauth2/token", form, "web", web.Secret)
		if status != 400 || second["error"] != "invalid_grant" {
			t.Fatalf("reuse: %d %v", status, second)
		}
		if h.active(at) {
			t.Fatal("token from a reused code still active")
		}
		if !h.wasRevoked(claims(t, at)["jti"].(string)) {
			t.Fatal("OnRevoke not called for the token's jti")
		}
		status, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {first["refresh_token"].(string)}}, "web", web.Secret)
		if status != 400 || body["error"] != "invalid_grant" {
			t.Fatalf("refresh after code reuse: %d %v", status, body)
		}
		if !slices.Contains(h.auditTypes(), "oauth.code.reused") {
			t.Fatal("no audit record for the reuse")
		}
	})
}

// Refresh tokens rotate on every use; presenting a rotated one revokes
// the whole family: the newest refresh token and every access token.
func TestRefreshRotationAndReuse(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		web := h.webClient()
		other := h.createClient(token.ClientRequest{Name: "other", ClientSpec: token.ClientSpec{
			GrantTypes: []string{"authorization_code", "refresh_token"}, RedirectURIs: []string{appCallback}}})
		h.createUser("erin", "erin's password!", token.UserSpec{})
		v, ch := pkce("f")
		code := h.loginForCode("web", appCallback, "openid orders.read", "erin", "erin's password!", ch)
		_, t0 := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {appCallback}, "code_verifier": {v}}, "web", web.Secret)
		refresh := func(rt string, kv ...string) (int, map[string]any) {
			f := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}
			for i := 0; i < len(kv); i += 2 {
				f.Set(kv[i], kv[i+1])
			}
			return h.post(nil, "/oauth2/token", f, "web", web.Secret)
		}
		rt1 := t0["refresh_token"].(string)
		// Another client cannot use it (and that does not count as reuse).
		if status, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt1}}, "other", other.Secret); status != 400 || body["error"] != "invalid_grant" {
			t.Fatalf("other client: %d %v", status, body)
		}
		status, t1 := refresh(rt1, "scope", "orders.read")
		if status != 200 || t1["refresh_token"] == rt1 || t1["scope"] != "orders.read" {
			t.Fatalf("rotation: %d %v", status, t1)
		}
		if status, body := refresh(t1["refresh_token"].(string), "scope", "openid admin"); status != 400 || body["error"] != "invalid_scope" {
			t.Fatalf("scope widening: %d %v", status, body)
		}
		status, t2 := refresh(t1["refresh_token"].(string))
		if status != 200 {
			t.Fatalf("second rotation: %d %v", status, t2)
		}
		// Reuse of rt1: theft assumed, family revoked.
		if status, body := refresh(rt1); status != 400 || body["error"] != "invalid_grant" {
			t.Fatalf("reuse: %d %v", status, body)
		}
		if status, body := refresh(t2["refresh_token"].(string)); status != 400 || body["error"] != "invalid_grant" {
			t.Fatalf("newest token after family revocation: %d %v", status, body)
		}
		for i, tk := range []map[string]any{t0, t1, t2} {
			at := tk["access_token"].(string)
			if h.active(at) || !h.wasRevoked(claims(t, at)["jti"].(string)) {
				t.Errorf("access token %d of the family not revoked", i)
			}
		}

		// Idle expiry: a refresh token unused past RefreshTokenTTL dies.
		code = h.loginForCode("web", appCallback, "openid", "erin", "erin's password!", ch)
		_, t3 := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {appCallback}, "code_verifier": {v}}, "web", web.Secret)
		h.clock.Advance(token.DefaultRefreshTokenTTL + time.Second)
		if status, body := refresh(t3["refresh_token"].(string)); status != 400 || body["error"] != "invalid_grant" {
			t.Fatalf("expired refresh token: %d %v", status, body)
		}
		if !slices.Contains(h.auditTypes(), "oauth.refresh.reused") {
			t.Fatal("no audit record for refresh reuse")
		}
	})
}

func TestLoginPageSecurityHeaders(t *testing.T) {
	h := newHarness(t, storetest.SQLite(t))
	h.webClient()
	_, ch := pkce("h")
	p := h.get(h.tlsClient(nil), h.authorizeURL("web", appCallback, "openid", "s", "", ch))
	if p.status != http.StatusOK {
		t.Fatal(p.status)
	}
	csp := p.header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "frame-ancestors 'none'", "form-action 'self' https://app.example"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if p.header.Get("Referrer-Policy") != "no-referrer" || p.header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("headers %v", p.header)
	}
	// A completed sign-in form cannot be replayed for a second code.
	h.createUser("pat", "pat's password!", token.UserSpec{})
	bc := h.tlsClient(nil)
	lp := h.get(bc, h.authorizeURL("web", appCallback, "openid", "s", "", ch))
	issuerURL, _ := url.Parse(h.issuer)
	saved := bc.Jar.Cookies(issuerURL)
	codeFrom(t, h.submit(bc, lp, url.Values{"username": {"pat"}, "password": {"pat's password!"}}))
	// Put back the cookie finishing cleared: the attacker has the whole
	// browser state, and the transaction alone must refuse.
	bc.Jar.SetCookies(issuerURL, saved)
	if again := h.submit(bc, lp, url.Values{"username": {"pat"}, "password": {"pat's password!"}}); again.status != 400 || again.location != "" {
		t.Fatalf("replayed password form: %d %s", again.status, again.location)
	}
	// A form posted without the login cookie (cross-site) is refused.
	m := txRE.FindStringSubmatch(p.body)
	resp, err := h.tlsClient(nil).PostForm(h.issuer+"/oauth2/login", url.Values{"tx": {m[1]}, "username": {"x"}, "password": {"y"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("form without cookie: %d", resp.StatusCode)
	}
	// An altered form state is refused.
	c := h.tlsClient(nil)
	p = h.get(c, h.authorizeURL("web", appCallback, "openid", "s", "", ch))
	m = txRE.FindStringSubmatch(p.body)
	tampered := []byte(m[1])
	tampered[10] ^= 1
	resp, _ = c.PostForm(h.issuer+"/oauth2/login", url.Values{"tx": {string(tampered)}, "username": {"x"}, "password": {"y"}})
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("tampered form: %d", resp.StatusCode)
	}
}

// Chrome and Safari apply the login page's CSP form-action to the 303 that
// follows the form post, so the redirect URI's origin must be in it, or
// the browser refuses to go back to the application after the sign-in.
// A native app's private-use scheme (RFC 8252 §7.1, which registration
// accepts) has no host: its scheme must be there as a scheme source. A
// loopback redirect's port is the one asked for (RFC 8252 §7.3).
func TestLoginPageFormActionAllowsTheRedirect(t *testing.T) {
	h := newHarness(t, storetest.SQLite(t))
	h.createClient(token.ClientRequest{Name: "native", ClientSpec: token.ClientSpec{GrantTypes: []string{"authorization_code"},
		AuthMethod: "none", Scopes: []string{"openid"},
		RedirectURIs: []string{"com.example.app:/oauth2redirect", "com.example.other://cb", "http://127.0.0.1/cb", appCallback}}})
	_, ch := pkce("n")
	for _, tc := range []struct{ redirect, want string }{
		{"com.example.app:/oauth2redirect", "form-action 'self' com.example.app:;"},
		{"com.example.other://cb", "form-action 'self' com.example.other://cb;"},
		{"http://127.0.0.1:51234/cb", "form-action 'self' http://127.0.0.1:51234;"},
		{appCallback, "form-action 'self' https://app.example;"},
	} {
		p := h.get(h.tlsClient(nil), h.authorizeURL("native", tc.redirect, "openid", "s", "", ch))
		if p.status != http.StatusOK {
			t.Fatalf("%s: %d %s", tc.redirect, p.status, p.body)
		}
		if csp := p.header.Get("Content-Security-Policy"); !strings.Contains(csp, tc.want) {
			t.Errorf("%s: CSP %q lacks %q", tc.redirect, csp, tc.want)
		}
	}
}

// The audience asked for at login carries on through refreshes.
func TestLoginAudienceSurvivesRefresh(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		web := h.createClient(token.ClientRequest{Name: "web", ClientSpec: token.ClientSpec{
			GrantTypes: []string{"authorization_code", "refresh_token"}, RedirectURIs: []string{appCallback}, Audiences: []string{"orders", "billing"}}})
		h.createUser("olga", "olga's password", token.UserSpec{})
		v, ch := pkce("a")
		c := h.tlsClient(nil)
		p := h.get(c, h.authorizeURL("web", appCallback, "", "s", "", ch)+"&audience=billing")
		code := codeFrom(t, h.submit(c, p, url.Values{"username": {"olga"}, "password": {"olga's password"}}))
		_, t0 := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {appCallback}, "code_verifier": {v}}, "web", web.Secret)
		if aud := claims(t, t0["access_token"].(string))["aud"]; aud != "billing" {
			t.Fatalf("first token aud %v", aud)
		}
		_, t1 := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {t0["refresh_token"].(string)}}, "web", web.Secret)
		if aud := claims(t, t1["access_token"].(string))["aud"]; aud != "billing" {
			t.Fatalf("refreshed token aud %v", aud)
		}
		// An explicit audience is still checked against the client's.
		if status, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {t1["refresh_token"].(string)}, "audience": {"hr"}}, "web", web.Secret); status != 400 || body["error"] != "invalid_target" {
			t.Fatalf("foreign audience: %d %v", status, body)
		}
	})
}

// A single-page app (public client) reads the token endpoint's answer
// from its registered origin only (CORS).
func TestCORSForBrowserApps(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		h.createClient(token.ClientRequest{Name: "spa", ClientSpec: token.ClientSpec{AuthMethod: token.AuthNone,
			GrantTypes: []string{"authorization_code"}, RedirectURIs: []string{"https://spa.example/cb"}, CORSOrigins: []string{"https://spa.example"}}})
		h.createUser("sam", "sam's password!", token.UserSpec{})
		redeem := func(origin string) *http.Response {
			v, ch := pkce("c")
			code := h.loginForCode("spa", "https://spa.example/cb", "", "sam", "sam's password!", ch)
			req, _ := http.NewRequest("POST", h.issuer+"/oauth2/token", strings.NewReader(url.Values{"grant_type": {"authorization_code"}, "client_id": {"spa"},
				"code": {code}, "redirect_uri": {"https://spa.example/cb"}, "code_verifier": {v}}.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Origin", origin)
			resp, err := h.http.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp
		}
		if resp := redeem("https://spa.example"); resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "https://spa.example" {
			t.Fatalf("registered origin: %d %q", resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"))
		}
		if resp := redeem("https://evil.example"); resp.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Fatalf("another origin may read the answer: %q", resp.Header.Get("Access-Control-Allow-Origin"))
		}
		req, _ := http.NewRequest("OPTIONS", h.issuer+"/oauth2/token", nil)
		req.Header.Set("Origin", "https://spa.example")
		req.Header.Set("Access-Control-Request-Method", "POST")
		resp, err := h.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 204 || !strings.Contains(resp.Header.Get("Access-Control-Allow-Methods"), "POST") {
			t.Fatalf("preflight: %d %v", resp.StatusCode, resp.Header)
		}
		for _, bad := range []string{"https://spa.example/", "https://spa.example/path", "http://spa.example", "*", "ftp://spa.example"} {
			if code := h.admin("POST", "clients", token.ClientRequest{Name: "x", ClientSpec: token.ClientSpec{AuthMethod: token.AuthNone,
				GrantTypes: []string{"authorization_code"}, RedirectURIs: []string{"https://spa.example/cb"}, CORSOrigins: []string{bad}}}, nil); code != 400 {
				t.Errorf("origin %q accepted: %d", bad, code)
			}
		}
	})
}

// go-oidc verifies ID tokens and at_hash for every signing algorithm
// (EdDSA's at_hash uses SHA-512), and userinfo refuses what it must.
func TestIDTokenAlgorithmsAndUserinfo(t *testing.T) {
	for _, alg := range []string{"ES256", "RS256", "EdDSA"} {
		t.Run(alg, func(t *testing.T) {
			h := newHarness(t, storetest.SQLite(t), func(c *token.Config) { c.SigningAlg = alg })
			web := h.createClient(token.ClientRequest{Name: "web", ClientSpec: token.ClientSpec{
				GrantTypes: []string{"authorization_code"}, RedirectURIs: []string{appCallback}, Scopes: []string{"openid", "email", "orders.read"}}})
			h.createUser("uma", "uma's password!", token.UserSpec{Email: "uma@example.org"})
			ctx := oidc.ClientContext(context.Background(), h.http)
			provider, err := oidc.NewProvider(ctx, h.issuer)
			if err != nil {
				t.Fatal(err)
			}
			v, ch := pkce("i")
			// The authorization request by POST (OIDC Core §3.1.2.1).
			c := h.tlsClient(nil)
			resp, err := c.PostForm(h.issuer+"/oauth2/authorize", url.Values{"response_type": {"code"}, "client_id": {"web"}, "redirect_uri": {appCallback},
				"scope": {"openid email"}, "state": {"s"}, "nonce": {"n1"}, "code_challenge": {ch}, "code_challenge_method": {"S256"}})
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			p := h.submit(c, page{status: resp.StatusCode, body: string(b)}, url.Values{"username": {"uma"}, "password": {"uma's password!"}})
			cfg := oauth2.Config{ClientID: "web", ClientSecret: web.Secret, Endpoint: provider.Endpoint(), RedirectURL: appCallback}
			tok, err := cfg.Exchange(ctx, codeFrom(t, p), oauth2.VerifierOption(v))
			if err != nil {
				t.Fatal(err)
			}
			idt, err := provider.Verifier(&oidc.Config{ClientID: "web", Now: h.clock.Now, SupportedSigningAlgs: []string{alg}}).Verify(ctx, tok.Extra("id_token").(string))
			if err != nil {
				t.Fatal(err)
			}
			if err := idt.VerifyAccessToken(tok.AccessToken); err != nil || idt.Nonce != "n1" {
				t.Fatalf("at_hash: %v, nonce %q", err, idt.Nonce)
			}
			userinfo := func(auth string) int {
				req, _ := http.NewRequest("GET", h.issuer+"/oauth2/userinfo", nil)
				if auth != "" {
					req.Header.Set("Authorization", auth)
				}
				resp, err := h.http.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				return resp.StatusCode
			}
			if code := userinfo("Bearer " + tok.AccessToken); code != 200 {
				t.Fatalf("userinfo: %d", code)
			}
			noOpenID := h.createClient(token.ClientRequest{Name: "svc", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}})
			for name, tc := range map[string]struct {
				auth string
				want int
			}{
				"no_header":       {"", 401},
				"basic_scheme":    {"Basic eDp5", 401},
				"garbage":         {"Bearer nope", 401},
				"id_token":        {"Bearer " + tok.Extra("id_token").(string), 401},
				"no_openid_scope": {"Bearer " + h.ccToken("svc", noOpenID.Secret), 403},
			} {
				if code := userinfo(tc.auth); code != tc.want {
					t.Errorf("%s: %d, want %d", name, code, tc.want)
				}
			}
		})
	}
}

// A certificate-bound token works at userinfo only over a connection
// with the same certificate (RFC 8705 §3).
func TestUserinfoChecksCertificateBinding(t *testing.T) {
	h := newHarness(t, storetest.SQLite(t))
	const id = "spiffe://example.org/ns/prod/sa/ui"
	h.createClient(token.ClientRequest{Name: "ui", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}, SPIFFEID: id, Scopes: []string{"openid"}}})
	cert := h.ca.SVID(t, id, time.Hour).TLSCertificate()
	other := h.ca.SVID(t, id, time.Hour).TLSCertificate() // same ID, another key
	mtls := h.tlsClient(&cert)
	_, body := h.post(mtls, "/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, "", "")
	at := body["access_token"].(string)
	for name, tc := range map[string]struct {
		c    *http.Client
		want int
	}{
		"same_certificate":    {mtls, 401}, // bound and presented; no user behind it
		"no_certificate":      {h.http, 401},
		"another_certificate": {h.tlsClient(&other), 401},
	} {
		req, _ := http.NewRequest("GET", h.issuer+"/oauth2/userinfo", nil)
		req.Header.Set("Authorization", "Bearer "+at)
		resp, err := tc.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %d %s", name, resp.StatusCode, b)
		}
		if name != "same_certificate" && !strings.Contains(resp.Header.Get("WWW-Authenticate"), "certificate") {
			t.Errorf("%s: refused for another reason: %s", name, resp.Header.Get("WWW-Authenticate"))
		}
		if name == "same_certificate" && !strings.Contains(resp.Header.Get("WWW-Authenticate"), "no longer exists") {
			t.Errorf("%s: %s", name, resp.Header.Get("WWW-Authenticate"))
		}
	}
}

// RFC 8252 §7.3: a native app's loopback IP redirect URI matches with any
// port, since the app listens on whatever port it gets at the time of the
// request; nothing else of the URI varies, "localhost" keeps its exact
// match, and the code is redeemed only with the URI the app asked with.
func TestLoopbackRedirectAnyPort(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		h.createClient(token.ClientRequest{Name: "cli", ClientSpec: token.ClientSpec{AuthMethod: token.AuthNone,
			GrantTypes:   []string{"authorization_code"},
			RedirectURIs: []string{"http://127.0.0.1/callback", "http://[::1]:8400/cb", "http://localhost:7000/cb", "https://app.example/cb"}}})
		h.createUser("dana", "dana's password!", token.UserSpec{})
		_, ch := pkce("l")
		for _, tc := range []struct {
			name, redirect string
			ok             bool
		}{
			{"v4_ephemeral_port", "http://127.0.0.1:51234/callback", true},
			{"v4_registered_without_port", "http://127.0.0.1/callback", true},
			{"v4_highest_port", "http://127.0.0.1:65535/callback", true},
			{"v6_other_port", "http://[::1]:49152/cb", true},
			{"v6_no_port", "http://[::1]/cb", true},
			{"v4_with_query", "http://127.0.0.1:51234/callback?x=1", false},
			{"v4_other_path", "http://127.0.0.1:51234/other", false},
			{"v4_dot_segment", "http://127.0.0.1:51234/callback/../x", false},
			{"v4_trailing_slash", "http://127.0.0.1:51234/callback/", false},
			{"v4_fragment", "http://127.0.0.1:51234/callback#f", false},
			{"v4_port_zero", "http://127.0.0.1:0/callback", false},
			{"v4_port_too_big", "http://127.0.0.1:65536/callback", false},
			{"v4_port_leading_zero", "http://127.0.0.1:080/callback", false},
			{"v4_port_sign", "http://127.0.0.1:+80/callback", false},
			{"v4_empty_port", "http://127.0.0.1:/callback", false},
			{"v4_userinfo_host", "http://127.0.0.1:80@evil.example/callback", false},
			{"v4_userinfo", "http://127.0.0.1@evil.example/callback", false},
			{"v4_longer_host", "http://127.0.0.1.evil.example:80/callback", false},
			{"other_loopback_address", "http://127.0.0.2:51234/callback", false},
			{"v4_https", "https://127.0.0.1:51234/callback", false},
			{"v4_upper_scheme", "HTTP://127.0.0.1:51234/callback", false},
			{"localhost_other_port", "http://localhost:7001/cb", false},
			{"localhost_for_v4", "http://localhost:51234/callback", false},
			{"v4_for_localhost", "http://127.0.0.1:7000/cb", false},
			{"https_other_port", "https://app.example:8443/cb", false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				p := h.get(h.tlsClient(nil), h.authorizeURL("cli", tc.redirect, "", "st", "n", ch))
				switch {
				case tc.ok && p.status != 200:
					t.Fatalf("status %d, want the login page: %s", p.status, p.body)
				case !tc.ok && (p.status != 400 || p.location != ""):
					t.Fatalf("status %d location %q, want 400 and no redirect", p.status, p.location)
				}
			})
		}

		t.Run("code_redeemed_with_the_uri_asked_with", func(t *testing.T) {
			const asked = "http://127.0.0.1:51234/callback"
			for _, tc := range []struct {
				name, redirect string
				status         int
			}{
				{"another_port", "http://127.0.0.1:51235/callback", 400},
				{"registered_form", "http://127.0.0.1/callback", 400},
				{"as_asked", asked, 200},
			} {
				v, ch := pkce("r")
				code := h.loginForCode("cli", asked, "", "dana", "dana's password!", ch)
				status, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"authorization_code"}, "client_id": {"cli"}, "code": {code},
					"redirect_uri": {tc.redirect}, "code_verifier": {v}}, "", "")
				if status != tc.status {
					t.Fatalf("%s: %d %v, want %d", tc.name, status, body, tc.status)
				}
			}
		})
	})
}

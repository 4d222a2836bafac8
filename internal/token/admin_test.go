package token_test

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/token"
)

// Every malformed admin request gets a clear 4xx and writes nothing.
func TestAdminRejectsBadInput(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		for _, tc := range []struct {
			name, method, path, body string
			status                   int
			wantErr                  string
		}{
			{"client_not_json", "POST", "clients", "{", 400, "bad JSON"},
			{"client_unknown_field", "POST", "clients", `{"name":"a","grant_types":["client_credentials"],"secret":"x"}`, 400, "unknown field"},
			{"client_two_objects", "POST", "clients", `{"name":"a","grant_types":["client_credentials"]}{}`, 400, "more than one"},
			{"client_no_name", "POST", "clients", `{"grant_types":["client_credentials"]}`, 400, "name"},
			{"client_bad_name", "POST", "clients", `{"name":"a b","grant_types":["client_credentials"]}`, 400, "name"},
			{"client_no_grants", "POST", "clients", `{"name":"a"}`, 400, "grant_types"},
			{"client_unknown_grant", "POST", "clients", `{"name":"a","grant_types":["password"]}`, 400, "unknown grant type"},
			{"client_code_without_redirect", "POST", "clients", `{"name":"a","grant_types":["authorization_code"]}`, 400, "redirect_uri"},
			{"client_http_redirect", "POST", "clients", `{"name":"a","grant_types":["authorization_code"],"redirect_uris":["http://app.example/cb"]}`, 400, "loopback"},
			{"client_fragment_redirect", "POST", "clients", `{"name":"a","grant_types":["authorization_code"],"redirect_uris":["https://app.example/cb#x"]}`, 400, "fragment"},
			{"client_javascript_redirect", "POST", "clients", `{"name":"a","grant_types":["authorization_code"],"redirect_uris":["javascript:alert(1)"]}`, 400, "redirect_uri"},
			{"client_public_cc", "POST", "clients", `{"name":"a","token_endpoint_auth_method":"none","grant_types":["client_credentials"]}`, 400, "public client"},
			{"client_bad_spiffe_id", "POST", "clients", `{"name":"a","grant_types":["client_credentials"],"spiffe_id":"spiffe://x/../y"}`, 400, "SPIFFE ID"},
			{"client_private_jwks", "POST", "clients", `{"name":"a","grant_types":["client_credentials"],"jwks":{"keys":[{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM","d":"870MB6gfuTJ4HtUnUvYMyJpr5eUZNP4Bk43bVdj3eAE"}]}}`, 400, "public keys only"},
			{"client_wildcard_exchange", "POST", "clients", `{"name":"a","grant_types":["` + token.GrantTokenExchange + `"],"exchange_audiences":["*"]}`, 400, "wildcards"},
			{"client_exchange_without_grant", "POST", "clients", `{"name":"a","grant_types":["client_credentials"],"exchange_audiences":["b"]}`, 400, "exchange grant"},
			{"client_ttl_too_long", "POST", "clients", `{"name":"a","grant_types":["client_credentials"],"access_token_ttl":"1h"}`, 400, "at most"},
			{"client_bad_scope", "POST", "clients", `{"name":"a","grant_types":["client_credentials"],"scopes":["a\"b"]}`, 400, "scope"},
			{"user_short_password", "POST", "users", `{"name":"u","password":"short"}`, 400, "password"},
			{"user_bad_name", "POST", "users", `{"name":"../x","password":"long enough pw"}`, 400, "name"},
			{"user_unknown_field", "POST", "users", `{"name":"u","password":"long enough pw","admin":true}`, 400, "unknown field"},
			{"revoke_both", "POST", "tokens/revoke", `{"token":"a","jti":"b"}`, 400, "either"},
			{"revoke_neither", "POST", "tokens/revoke", `{}`, 400, "either"},
			{"introspect_empty", "POST", "tokens/introspect", `{}`, 400, "token"},
			{"get_unknown_client", "GET", "clients/nope", "", 404, "not found"},
			{"delete_unknown_user", "DELETE", "users/nope", "", 404, "not found"},
			{"unknown_endpoint", "GET", "nothing-here", "", 404, "no such"},
			{"mfa_unknown_user", "POST", "users/nope/mfa", "", 404, "not found"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var out struct {
					Errors []string `json:"errors"`
				}
				var body any
				if tc.body != "" {
					body = tc.body
				}
				status := h.admin(tc.method, tc.path, body, &out)
				if status != tc.status || len(out.Errors) != 1 || !strings.Contains(out.Errors[0], tc.wantErr) {
					t.Fatalf("got %d %v, want %d containing %q", status, out.Errors, tc.status, tc.wantErr)
				}
			})
		}
		var clients struct{ Clients []token.Client }
		var users struct{ Users []token.User }
		h.admin("GET", "clients", nil, &clients)
		h.admin("GET", "users", nil, &users)
		if len(clients.Clients) != 0 || len(users.Users) != 0 {
			t.Fatalf("bad input wrote something: %d clients, %d users", len(clients.Clients), len(users.Users))
		}
	})
}

// A list with nothing in it is [] (never null), so clients can range over
// it without a nil check.
func TestAdminEmptyListsAreArrays(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		for _, tc := range []struct{ name, path, key string }{
			{"clients", "clients", "clients"},
			{"users", "users", "users"},
			{"revoked_tokens", "tokens/revoked", "revoked"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var out map[string]json.RawMessage
				if code := h.admin("GET", tc.path, nil, &out); code != 200 || len(out) != 1 || string(out[tc.key]) != "[]" {
					t.Fatalf("GET %s: %d %s, want 200 {%q: []}", tc.path, code, out, tc.key)
				}
			})
		}
	})
}

func TestAdminClientLifecycle(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		c := h.createClient(token.ClientRequest{Name: "svc", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}})
		if c.AuthMethod != token.AuthSecretBasic || c.ID != "svc" {
			t.Fatalf("%+v", c)
		}
		if code := h.admin("POST", "clients", token.ClientRequest{Name: "svc", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}}, nil); code != 409 {
			t.Fatalf("duplicate: %d", code)
		}
		var shown map[string]any
		h.admin("GET", "clients/svc", nil, &shown)
		if shown["client_secret"] != nil || shown["SecretHash"] != nil {
			t.Fatalf("show leaks the secret: %v", shown)
		}
		var rotated token.ClientAnswer
		if code := h.admin("POST", "clients/svc/rotate-secret", nil, &rotated); code != 200 || rotated.Secret == "" || rotated.Secret == c.Secret {
			t.Fatalf("rotate: %d", code)
		}
		if status, _ := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, "svc", c.Secret); status != 401 {
			t.Fatal("old secret still works")
		}
		h.ccToken("svc", rotated.Secret)
		// Rotation with a grace period: both secrets work until it ends.
		var graced token.ClientAnswer
		if code := h.admin("POST", "clients/svc/rotate-secret", `{"grace":"1h"}`, &graced); code != 200 || graced.PreviousSecretUntil.IsZero() {
			t.Fatalf("rotate with grace: %d %+v", code, graced)
		}
		h.ccToken("svc", rotated.Secret)
		h.ccToken("svc", graced.Secret)
		h.clock.Advance(time.Hour)
		if status, _ := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, "svc", rotated.Secret); status != 401 {
			t.Fatal("the previous secret outlived its grace period")
		}
		h.ccToken("svc", graced.Secret)
		for _, bad := range []string{`{"grace":"200h"}`, `{"grace":"-1s"}`, `{"grace":5}`, `{"grace":"1h","x":1}`} {
			if code := h.admin("POST", "clients/svc/rotate-secret", bad, nil); code != 400 {
				t.Fatalf("rotate-secret %s: %d", bad, code)
			}
		}
		h.ccToken("svc", graced.Secret) // refused rotations changed nothing
		if code := h.admin("DELETE", "clients/svc", nil, nil); code != 204 {
			t.Fatal(code)
		}
		if status, _ := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, "svc", rotated.Secret); status != 401 {
			t.Fatal("deleted client still gets tokens")
		}
		var keys struct{ Keys []token.KeyInfo }
		h.admin("GET", "keys", nil, &keys)
		if len(keys.Keys) != 1 || keys.Keys[0].State != "signing" {
			t.Fatalf("keys %+v", keys)
		}
		// A user's password can be changed; the old one stops working.
		h.webClient()
		h.createUser("max", "first password", token.UserSpec{})
		if code := h.admin("POST", "users/max/password", map[string]string{"password": "second password"}, nil); code != 204 {
			t.Fatal(code)
		}
		_, ch := pkce("m")
		h.loginForCode("web", appCallback, "openid", "max", "second password", ch)
	})
}

// No credential leaves unaudited: while the audit log fails, the token
// endpoint answers server_error and the login page withholds the code.
func TestNoGrantWithoutAudit(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		cl := h.createClient(token.ClientRequest{Name: "svc", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}})
		h.webClient()
		h.createUser("ray", "ray's password!", token.UserSpec{})
		_, ch := pkce("r")
		c := h.tlsClient(nil)
		p := h.get(c, h.authorizeURL("web", appCallback, "openid", "s", "", ch))

		h.mu.Lock()
		h.auditDown = true
		h.mu.Unlock()
		status, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, "svc", cl.Secret)
		if status != 500 || body["error"] != "server_error" || body["access_token"] != nil {
			t.Fatalf("token while the audit log is down: %d %v", status, body)
		}
		if p := h.submit(c, p, url.Values{"username": {"ray"}, "password": {"ray's password!"}}); p.status != 500 || p.location != "" {
			t.Fatalf("login while the audit log is down: %d %s", p.status, p.location)
		}
		h.mu.Lock()
		h.auditDown = false
		h.mu.Unlock()
		h.ccToken("svc", cl.Secret)
	})
}

// Resetting a user's password or second factor, or deleting the user,
// ends every session the user has: refresh families, access tokens
// (pushed to OnRevoke for the sidecars) and codes not yet redeemed.
// Another user's sessions stay.
func TestAdminUserActionsEndSessions(t *testing.T) {
	for _, tc := range []struct {
		name, method, path string
		body               any
	}{
		{"password_set", "POST", "users/alice/password", map[string]string{"password": "a new long password"}},
		{"mfa_reset", "DELETE", "users/alice/mfa", nil},
		{"user_deleted", "DELETE", "users/alice", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			storetest.Each(t, func(t *testing.T, db *store.DB) {
				h := newHarness(t, db)
				web := h.webClient()
				alice := h.createUser("alice", "alice's password", token.UserSpec{})
				h.createUser("bob", "bob's password!", token.UserSpec{})
				v, ch := pkce("s")
				login := func(user, pw string) map[string]any {
					t.Helper()
					code := h.loginForCode("web", appCallback, "openid", user, pw, ch)
					status, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"authorization_code"}, "code": {code},
						"redirect_uri": {appCallback}, "code_verifier": {v}}, "web", web.Secret)
					if status != 200 {
						t.Fatalf("redeem: %d %v", status, body)
					}
					return body
				}
				first, second, bobs := login("alice", "alice's password"), login("alice", "alice's password"), login("bob", "bob's password!")
				pending := h.loginForCode("web", appCallback, "openid", "alice", "alice's password", ch)

				if code := h.admin(tc.method, tc.path, tc.body, nil); code != 204 {
					t.Fatalf("%s %s: %d", tc.method, tc.path, code)
				}

				for i, tk := range []map[string]any{first, second} {
					at := tk["access_token"].(string)
					if h.active(at) {
						t.Errorf("session %d: access token still active", i)
					}
					if !h.wasRevoked(claims(t, at)["jti"].(string)) {
						t.Errorf("session %d: access token ID not pushed to OnRevoke", i)
					}
					if status, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tk["refresh_token"].(string)}},
						"web", web.Secret); status != 400 || body["error"] != "invalid_grant" {
						t.Errorf("session %d: refresh after %s: %d %v", i, tc.name, status, body["error"])
					}
				}
				if status, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"authorization_code"}, "code": {pending},
					"redirect_uri": {appCallback}, "code_verifier": {v}}, "web", web.Secret); status != 400 || body["error"] != "invalid_grant" {
					t.Errorf("code issued before %s redeemed: %d %v", tc.name, status, body["error"])
				}
				if !h.active(bobs["access_token"].(string)) {
					t.Error("another user's access token was revoked")
				}
				if status, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {bobs["refresh_token"].(string)}},
					"web", web.Secret); status != 200 {
					t.Errorf("another user's refresh token: %d %v", status, body["error"])
				}
				// Two logins, each an access token and an ID token.
				var ev *token.AuditEvent
				h.mu.Lock()
				for i := range h.audits {
					if h.audits[i].Type == "oauth.user.sessions_revoked" {
						ev = &h.audits[i]
					}
				}
				h.mu.Unlock()
				if ev == nil || ev.Subject != alice.ID || ev.Details["action"] != tc.name || ev.Details["grants"] != "3" || ev.Details["revoked_tokens"] != "4" {
					t.Fatalf("audit record: %+v", ev)
				}
			})
		})
	}
}

// Deleting a client ends what it was given: every login's refresh family,
// the access tokens recorded under them (pushed to OnRevoke), and codes
// not yet redeemed. A client created again under the same ID (with fewer
// scopes, say, or as a public client) does not inherit them; another
// client's sessions stay.
func TestDeletingClientEndsItsSessions(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		spec := token.ClientSpec{AuthMethod: token.AuthNone, GrantTypes: []string{"authorization_code", "refresh_token"},
			RedirectURIs: []string{"http://127.0.0.1:9999/cb"}, Scopes: []string{"openid", "orders.write"}}
		h.createClient(token.ClientRequest{Name: "cli", ClientSpec: spec})
		web := h.webClient()
		h.createUser("erin", "erin's password!", token.UserSpec{})
		v, ch := pkce("d")
		code := h.loginForCode("cli", "http://127.0.0.1:9999/cb", "openid orders.write", "erin", "erin's password!", ch)
		redeem := url.Values{"grant_type": {"authorization_code"}, "client_id": {"cli"}, "code": {code}, "redirect_uri": {"http://127.0.0.1:9999/cb"}, "code_verifier": {v}}
		status, cliTok := h.post(nil, "/oauth2/token", redeem, "", "")
		if status != 200 {
			t.Fatalf("redeem: %d %v", status, cliTok)
		}
		pending := h.loginForCode("cli", "http://127.0.0.1:9999/cb", "openid", "erin", "erin's password!", ch)
		webCode := h.loginForCode("web", appCallback, "openid", "erin", "erin's password!", ch)
		status, webTok := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"authorization_code"}, "code": {webCode},
			"redirect_uri": {appCallback}, "code_verifier": {v}}, "web", web.Secret)
		if status != 200 {
			t.Fatalf("redeem web: %d %v", status, webTok)
		}

		if code := h.admin("DELETE", "clients/cli", nil, nil); code != 204 {
			t.Fatalf("delete client: %d", code)
		}
		at := cliTok["access_token"].(string)
		if h.active(at) {
			t.Error("the deleted client's access token is still active")
		}
		if !h.wasRevoked(claims(t, at)["jti"].(string)) {
			t.Error("the deleted client's access token ID was not pushed to OnRevoke")
		}

		// The same ID again, with fewer scopes.
		spec.Scopes = []string{"openid"}
		h.createClient(token.ClientRequest{Name: "cli", ClientSpec: spec})
		if status, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "client_id": {"cli"},
			"refresh_token": {cliTok["refresh_token"].(string)}}, "", ""); status != 400 || body["error"] != "invalid_grant" {
			t.Errorf("the old client's refresh token on the new client: %d %v, want invalid_grant", status, body)
		}
		redeem.Set("code", pending)
		if status, body := h.post(nil, "/oauth2/token", redeem, "", ""); status != 400 || body["error"] != "invalid_grant" {
			t.Errorf("the old client's pending code on the new client: %d %v, want invalid_grant", status, body)
		}
		if !h.active(webTok["access_token"].(string)) {
			t.Error("another client's access token was revoked")
		}
		if status, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {webTok["refresh_token"].(string)}},
			"web", web.Secret); status != 200 {
			t.Errorf("another client's refresh token: %d %v", status, body)
		}
	})
}

// RFC 9700 §4.15 (client impersonating resource owner): a client_credentials
// token's sub is the client ID and a user's token's sub the user ID, and a
// sidecar's principal is iss/sub for both. A client registered under a
// user's ID would get tokens that AuthorizationPolicy (requestPrincipals,
// request.auth.claims[sub]) and userinfo take for that user's. User IDs
// are "u_" + hex, so client IDs may not begin with "u_".
func TestClientIDCannotNameAUser(t *testing.T) {
	h := newHarness(t, storetest.SQLite(t))
	alice := h.createUser("alice", "alice's password", token.UserSpec{Roles: []string{"admin"}})
	for _, req := range []token.ClientRequest{
		{Name: alice.ID},
		{Name: "impostor", ID: alice.ID},
		{Name: "u_" + strings.Repeat("0", 32)}, // a user ID not issued yet
	} {
		req.ClientSpec = token.ClientSpec{GrantTypes: []string{"client_credentials"}, Scopes: []string{"openid"}}
		var out struct {
			Errors []string `json:"errors"`
			token.ClientAnswer
		}
		status := h.admin("POST", "clients", req, &out)
		if status == 400 && len(out.Errors) == 1 && strings.Contains(out.Errors[0], "u_") {
			continue
		}
		if status != 201 {
			t.Fatalf("create client %q: %d %v", req.ID, status, out.Errors)
		}
		msg := ""
		if _, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, out.ID, out.Secret); body["access_token"] != nil {
			if sub := claims(t, body["access_token"].(string))["sub"]; sub == alice.ID {
				msg = ": its client_credentials token has sub " + alice.ID + ", alice's"
			}
		}
		t.Errorf("client %q (named %q) was registered%s", out.ID, req.Name, msg)
	}
}

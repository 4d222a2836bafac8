package token_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/token"
)

const (
	ordersID   = "spiffe://example.org/ns/prod/sa/orders"
	frontendID = "spiffe://example.org/ns/prod/sa/frontend"
)

// jwtSVIDMinter signs JWT-SVIDs with a key in a go-spiffe JWT bundle.
type jwtSVIDMinter struct {
	key    *ecdsa.PrivateKey
	bundle *jwtbundle.Bundle
}

func newMinter(t *testing.T) *jwtSVIDMinter {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	b := jwtbundle.New(spiffeid.RequireTrustDomainFromString("example.org"))
	if err := b.AddJWTAuthority("svid-key", key.Public()); err != nil {
		t.Fatal(err)
	}
	return &jwtSVIDMinter{key: key, bundle: b}
}

// mint makes a JWT-SVID for sub and aud with extra claims. go-spiffe
// validates expiry against the real clock, so exp is real time.
func (m *jwtSVIDMinter) mint(t *testing.T, sub string, aud []string, extra map[string]any) string {
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: m.key, KeyID: "svid-key"}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	c := jwt.Claims{Subject: sub, Audience: aud, Expiry: jwt.NewNumericDate(time.Now().Add(5 * time.Minute)), IssuedAt: jwt.NewNumericDate(time.Now())}
	b := jwt.Signed(s).Claims(c)
	if extra != nil {
		b = b.Claims(extra)
	}
	raw, err := b.Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// A user's token flows frontend → orders → payments through two
// exchanges; each hop narrows the audience to the next service and the
// act claim records the chain.
func TestTokenExchange(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		minter := newMinter(t)
		h := newHarness(t, db, func(c *token.Config) { c.JWTBundles = jwtBundleSource{minter.bundle} })
		fe := h.createClient(token.ClientRequest{Name: "frontend", ClientSpec: token.ClientSpec{
			GrantTypes:   []string{"authorization_code", token.GrantTokenExchange},
			RedirectURIs: []string{appCallback}, Scopes: []string{"openid", "orders.read", "orders.write"},
			ExchangeAudiences: []string{"orders"}}})
		h.createClient(token.ClientRequest{Name: "orders", ClientSpec: token.ClientSpec{
			GrantTypes: []string{token.GrantTokenExchange}, SPIFFEID: ordersID, ExchangeAudiences: []string{"payments"},
			Scopes: []string{"payments.create"}, Roles: []string{"service"}}})
		plain := h.createClient(token.ClientRequest{Name: "plain", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}})
		ordersCert := h.ca.SVID(t, ordersID, time.Hour).TLSCertificate()
		ordersTLS := h.tlsClient(&ordersCert)
		u := h.createUser("frank", "frank's password", token.UserSpec{Roles: []string{"buyer"}})

		v, ch := pkce("x")
		code := h.loginForCode("frontend", appCallback, "openid orders.read orders.write", "frank", "frank's password", ch)
		_, t0 := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {appCallback}, "code_verifier": {v}}, "frontend", fe.Secret)
		userAT := t0["access_token"].(string)

		ex := func(kv ...string) url.Values {
			f := url.Values{"grant_type": {token.GrantTokenExchange}, "subject_token": {userAT}, "subject_token_type": {token.TokenTypeAccess}}
			for i := 0; i < len(kv); i += 2 {
				if kv[i+1] == "" {
					f.Del(kv[i])
				} else {
					f.Set(kv[i], kv[i+1])
				}
			}
			return f
		}
		status, hop1 := h.post(nil, "/oauth2/token", ex("audience", "orders", "scope", "orders.read"), "frontend", fe.Secret)
		if status != 200 || hop1["issued_token_type"] != token.TokenTypeAccess || hop1["token_type"] != "Bearer" {
			t.Fatalf("hop 1: %d %v", status, hop1)
		}
		c1, typ, err := h.verifyWithJWKS(hop1["access_token"].(string))
		if err != nil || typ != "at+jwt" {
			t.Fatal(err, typ)
		}
		act1, _ := c1["act"].(map[string]any)
		if c1["sub"] != u.ID || c1["aud"] != "orders" || c1["scope"] != "orders.read" || act1["sub"] != "frontend" || c1["client_id"] != "frontend" {
			t.Fatalf("hop 1 claims %v", c1)
		}
		if d := c1["exp"].(float64) - c1["iat"].(float64); d != 300 {
			t.Fatalf("exchanged token lives %vs, want 300", d)
		}

		// orders, authenticated by its SVID, exchanges the token it
		// received for one to payments.
		status, hop2 := h.post(ordersTLS, "/oauth2/token", url.Values{"grant_type": {token.GrantTokenExchange}, "client_id": {"orders"},
			"subject_token": {hop1["access_token"].(string)}, "subject_token_type": {token.TokenTypeAccess}, "audience": {"payments"}}, "", "")
		if status != 200 {
			t.Fatalf("hop 2: %d %v", status, hop2)
		}
		c2 := claims(t, hop2["access_token"].(string))
		act2, _ := c2["act"].(map[string]any)
		inner, _ := act2["act"].(map[string]any)
		if c2["sub"] != u.ID || c2["aud"] != "payments" || act2["sub"] != ordersID || inner["sub"] != "frontend" || c2["cnf"] == nil {
			t.Fatalf("hop 2 claims %v", c2)
		}
		if r, _ := c2["roles"].([]any); len(r) != 1 || r[0] != "buyer" {
			t.Fatalf("the user's roles must flow through: %v", c2["roles"])
		}

		// A workload exchanges its own JWT-SVID.
		svid := minter.mint(t, ordersID, []string{h.issuer}, nil)
		status, own := h.post(ordersTLS, "/oauth2/token", url.Values{"grant_type": {token.GrantTokenExchange}, "client_id": {"orders"},
			"subject_token": {svid}, "subject_token_type": {token.TokenTypeJWT}, "audience": {"payments"}}, "", "")
		if status != 200 {
			t.Fatalf("own JWT-SVID: %d %v", status, own)
		}
		if c := claims(t, own["access_token"].(string)); c["sub"] != ordersID || c["act"] != nil || c["scope"] != "payments.create" {
			t.Fatalf("own SVID claims %v", c)
		}
		// may_act: frontend's SVID names orders as the one who may act.
		delegated := minter.mint(t, frontendID, []string{h.issuer}, map[string]any{"may_act": map[string]any{"sub": ordersID}})
		status, del := h.post(ordersTLS, "/oauth2/token", url.Values{"grant_type": {token.GrantTokenExchange}, "client_id": {"orders"},
			"subject_token": {delegated}, "subject_token_type": {token.TokenTypeJWT}, "audience": {"payments"}}, "", "")
		if status != 200 {
			t.Fatalf("may_act: %d %v", status, del)
		}
		if c := claims(t, del["access_token"].(string)); c["sub"] != frontendID || c["act"].(map[string]any)["sub"] != ordersID {
			t.Fatalf("may_act claims %v", c)
		}

		revokedAT := func() string {
			_, r := h.post(nil, "/oauth2/token", ex("audience", "orders"), "frontend", fe.Secret)
			raw := r["access_token"].(string)
			if code := h.admin("POST", "tokens/revoke", map[string]string{"token": raw}, nil); code != 204 {
				t.Fatalf("revoke: %d", code)
			}
			return raw
		}()
		svidForm := func(sub string, aud []string, extra map[string]any) url.Values {
			return url.Values{"grant_type": {token.GrantTokenExchange}, "client_id": {"orders"}, "subject_token": {minter.mint(t, sub, aud, extra)},
				"subject_token_type": {token.TokenTypeJWT}, "audience": {"payments"}}
		}
		for _, tc := range []struct {
			name    string
			client  string // "frontend", "orders" (mTLS), "plain"
			form    url.Values
			status  int
			errCode string
		}{
			{"no_audience", "frontend", ex(), 400, "invalid_request"},
			{"audience_not_allowed", "frontend", ex("audience", "payments"), 400, "invalid_target"},
			{"resource_not_allowed", "frontend", ex("resource", "https://payments.example/"), 400, "invalid_target"},
			{"client_without_exchange_grant", "plain", ex("audience", "orders"), 400, "unauthorized_client"},
			{"subject_not_held_by_client", "orders", ex("audience", "payments"), 400, "invalid_request"},
			{"revoked_subject", "frontend", ex("audience", "orders", "subject_token", revokedAT), 400, "invalid_request"},
			{"garbage_subject", "frontend", ex("audience", "orders", "subject_token", "not-a-token"), 400, "invalid_request"},
			{"missing_subject_type", "frontend", ex("audience", "orders", "subject_token_type", ""), 400, "invalid_request"},
			{"unsupported_subject_type", "frontend", ex("audience", "orders", "subject_token_type", "urn:ietf:params:oauth:token-type:saml2"), 400, "invalid_request"},
			{"unsupported_requested_type", "frontend", ex("audience", "orders", "requested_token_type", "urn:ietf:params:oauth:token-type:id_token"), 400, "invalid_request"},
			{"actor_token_without_type", "frontend", ex("audience", "orders", "actor_token", userAT), 400, "invalid_request"},
			{"actor_token_names_other", "frontend", ex("audience", "orders", "actor_token", userAT, "actor_token_type", token.TokenTypeAccess), 400, "invalid_request"},
			{"scope_widening", "frontend", ex("audience", "orders", "scope", "openid admin"), 400, "invalid_scope"},
			{"access_type_for_svid", "orders", url.Values{"grant_type": {token.GrantTokenExchange}, "client_id": {"orders"}, "subject_token": {svid}, "subject_token_type": {token.TokenTypeAccess}, "audience": {"payments"}}, 400, "invalid_request"},
			{"svid_of_other_workload", "orders", svidForm(frontendID, []string{h.issuer}, nil), 400, "invalid_request"},
			{"svid_may_act_names_other", "orders", svidForm(frontendID, []string{h.issuer}, map[string]any{"may_act": map[string]any{"sub": "spiffe://example.org/x"}}), 400, "invalid_request"},
			{"svid_wrong_audience", "orders", svidForm(ordersID, []string{"https://elsewhere"}, nil), 400, "invalid_request"},
			{"svid_other_trust_domain", "orders", svidForm("spiffe://evil.org/ns/x/sa/y", []string{h.issuer}, nil), 400, "invalid_request"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var (
					status int
					body   map[string]any
				)
				switch tc.client {
				case "frontend":
					status, body = h.post(nil, "/oauth2/token", tc.form, "frontend", fe.Secret)
				case "plain":
					status, body = h.post(nil, "/oauth2/token", tc.form, "plain", plain.Secret)
				default:
					f := tc.form
					f.Set("client_id", "orders")
					status, body = h.post(ordersTLS, "/oauth2/token", f, "", "")
				}
				if status != tc.status || body["error"] != tc.errCode {
					t.Fatalf("got %d %v, want %d %s", status, body, tc.status, tc.errCode)
				}
			})
		}
		// Duplicate subject_token is refused; repeated audience is allowed
		// by RFC 8693 but each must be permitted.
		req := "grant_type=" + url.QueryEscape(token.GrantTokenExchange) + "&subject_token=a&subject_token=b&subject_token_type=" + url.QueryEscape(token.TokenTypeAccess) + "&audience=orders"
		status, body := h.postBody("/oauth2/token", req, "frontend", fe.Secret)
		if status != 400 || body["error"] != "invalid_request" || !strings.Contains(body["error_description"].(string), "more than once") {
			t.Fatalf("duplicate subject_token: %d %v", status, body)
		}
	})
}

// Tokens exchanged from a user's token, and tokens exchanged from those,
// belong to the user's login: revoking the login's refresh token revokes
// the whole delegation chain.
func TestExchangedTokensDieWithTheLogin(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		fe := h.createClient(token.ClientRequest{Name: "frontend", ClientSpec: token.ClientSpec{
			GrantTypes:   []string{"authorization_code", "refresh_token", token.GrantTokenExchange},
			RedirectURIs: []string{appCallback}, ExchangeAudiences: []string{"orders"}}})
		ord := h.createClient(token.ClientRequest{Name: "orders", ClientSpec: token.ClientSpec{
			GrantTypes: []string{token.GrantTokenExchange}, ExchangeAudiences: []string{"payments"}}})
		h.createUser("nina", "nina's password", token.UserSpec{})
		v, ch := pkce("d")
		code := h.loginForCode("frontend", appCallback, "", "nina", "nina's password", ch)
		_, t0 := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {appCallback}, "code_verifier": {v}}, "frontend", fe.Secret)
		exchange := func(subject, audience, client, secret string) string {
			status, body := h.post(nil, "/oauth2/token", url.Values{"grant_type": {token.GrantTokenExchange}, "subject_token": {subject},
				"subject_token_type": {token.TokenTypeAccess}, "audience": {audience}}, client, secret)
			if status != 200 {
				t.Fatalf("exchange for %s: %d %v", audience, status, body)
			}
			return body["access_token"].(string)
		}
		hop1 := exchange(t0["access_token"].(string), "orders", "frontend", fe.Secret)
		hop2 := exchange(hop1, "payments", "orders", ord.Secret)
		if !h.active(hop1) || !h.active(hop2) {
			t.Fatal("exchanged tokens inactive before revocation")
		}
		if status, _ := h.post(nil, "/oauth2/revoke", url.Values{"token": {t0["refresh_token"].(string)}}, "frontend", fe.Secret); status != 200 {
			t.Fatal(status)
		}
		for name, raw := range map[string]string{"hop1": hop1, "hop2": hop2} {
			if h.active(raw) || !h.wasRevoked(claims(t, raw)["jti"].(string)) {
				t.Errorf("%s survived the revocation of the login", name)
			}
		}
	})
}

// Type confusion (RFC 8725 §3.11, RFC 8693 §2.1): the ID token is signed by
// the same key as access tokens and the refresh token is a credential of
// the same login, but neither is an access token. As a token exchange
// subject or actor (under either token type), at introspection and at
// userinfo, each is refused as if unknown, while the login's access token
// is accepted by all of them.
func TestTokenTypeConfusion(t *testing.T) {
	h := newHarness(t, storetest.SQLite(t))
	fe := h.createClient(token.ClientRequest{Name: "frontend", ClientSpec: token.ClientSpec{
		GrantTypes:   []string{"authorization_code", "refresh_token", token.GrantTokenExchange},
		RedirectURIs: []string{appCallback}, Scopes: []string{"openid"}, ExchangeAudiences: []string{"orders"}}})
	h.createUser("oscar", "oscar's password", token.UserSpec{})
	v, ch := pkce("t")
	code := h.loginForCode("frontend", appCallback, "openid", "oscar", "oscar's password", ch)
	status, tk := h.post(nil, "/oauth2/token", url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {appCallback}, "code_verifier": {v}}, "frontend", fe.Secret)
	if status != 200 || tk["id_token"] == nil {
		t.Fatalf("redeem: %d %v", status, tk)
	}
	exchange := func(param, tok, typ string) (int, map[string]any) {
		f := url.Values{"grant_type": {token.GrantTokenExchange}, "subject_token": {tk["access_token"].(string)},
			"subject_token_type": {token.TokenTypeAccess}, "audience": {"orders"}}
		f.Set(param, tok)
		f.Set(param+"_type", typ)
		return h.post(nil, "/oauth2/token", f, "frontend", fe.Secret)
	}
	userinfo := func(tok string) int {
		req, _ := http.NewRequest("GET", h.issuer+"/oauth2/userinfo", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := h.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	introspect := func(tok string) bool {
		_, body := h.post(nil, "/oauth2/introspect", url.Values{"token": {tok}}, "frontend", fe.Secret)
		return body["active"] == true
	}
	if status, body := exchange("subject_token", tk["access_token"].(string), token.TokenTypeAccess); status != 200 || !introspect(tk["access_token"].(string)) || userinfo(tk["access_token"].(string)) != 200 {
		t.Fatalf("precondition: the access token is not accepted: exchange %d %v", status, body)
	}
	for _, name := range []string{"id_token", "refresh_token"} {
		tok := tk[name].(string)
		for _, param := range []string{"subject_token", "actor_token"} {
			for _, typ := range []string{token.TokenTypeAccess, token.TokenTypeJWT} {
				if status, body := exchange(param, tok, typ); status != 400 || body["error"] != "invalid_request" {
					t.Errorf("%s as %s (%s): %d %v, want 400 invalid_request", name, param, typ, status, body["error"])
				}
			}
		}
		if introspect(tok) && name == "id_token" {
			t.Errorf("%s introspected as active", name)
		}
		if code := userinfo(tok); code != http.StatusUnauthorized {
			t.Errorf("%s at userinfo: %d", name, code)
		}
	}
}

package token_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/token"
)

type spiffeTD = spiffeid.TrustDomain

func sha256Sum(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

// An unchanged golang.org/x/oauth2/clientcredentials client gets a token
// with either client_secret_basic or client_secret_post, and the token
// verifies against the JWKS as an RFC 9068 access token.
func TestClientCredentialsWithStandardClient(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		cl := h.createClient(token.ClientRequest{Name: "orders", ClientSpec: token.ClientSpec{
			GrantTypes: []string{"client_credentials"}, Scopes: []string{"read", "write"}, Audiences: []string{"payments", "inventory"},
			Roles: []string{"service"}, Permissions: []string{"payments:create"}, Tenant: "acme",
		}})
		if !strings.HasPrefix(cl.Secret, "mls_") || len(cl.Secret) < 40 {
			t.Fatalf("secret %q", cl.Secret)
		}
		post := h.createClient(token.ClientRequest{Name: "orders-post", ClientSpec: token.ClientSpec{AuthMethod: token.AuthSecretPost,
			GrantTypes: []string{"client_credentials"}, Scopes: []string{"read", "write"}, Audiences: []string{"payments", "inventory"},
			Roles: []string{"service"}, Permissions: []string{"payments:create"}, Tenant: "acme",
		}})
		for _, tc := range []struct {
			name  string
			cl    *token.ClientAnswer
			style oauth2.AuthStyle
		}{{"client_secret_basic", cl, oauth2.AuthStyleInHeader}, {"client_secret_post", post, oauth2.AuthStyleInParams}} {
			t.Run(tc.name, func(t *testing.T) {
				cl := tc.cl
				cc := clientcredentials.Config{ClientID: cl.ID, ClientSecret: cl.Secret, TokenURL: h.issuer + "/oauth2/token",
					Scopes: []string{"read"}, EndpointParams: url.Values{"audience": {"payments"}}, AuthStyle: tc.style}
				ctx := context.WithValue(context.Background(), oauth2.HTTPClient, h.http)
				tok, err := cc.Token(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if tok.TokenType != "Bearer" || tok.Expiry.Sub(h.clock.Now()) > 15*time.Minute {
					t.Fatalf("token: %+v", tok)
				}
				c, typ, err := h.verifyWithJWKS(tok.AccessToken)
				if err != nil {
					t.Fatal(err)
				}
				if typ != "at+jwt" {
					t.Errorf("typ %q, want at+jwt", typ)
				}
				exp, iat := c["exp"].(float64), c["iat"].(float64)
				if c["iss"] != h.issuer || c["sub"] != cl.ID || c["aud"] != "payments" || c["client_id"] != cl.ID ||
					c["scope"] != "read" || c["tenant"] != "acme" || c["jti"] == "" || exp-iat != 600 {
					t.Errorf("claims: %v", c)
				}
				if r, _ := c["roles"].([]any); len(r) != 1 || r[0] != "service" {
					t.Errorf("roles: %v", c["roles"])
				}
				if c["cnf"] != nil {
					t.Errorf("secret-authenticated token must not be certificate-bound: %v", c["cnf"])
				}
			})
		}
	})
}

func TestClientCredentialsRefusals(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		cl := h.createClient(token.ClientRequest{Name: "svc", ClientSpec: token.ClientSpec{
			GrantTypes: []string{"client_credentials"}, Scopes: []string{"read"}, Audiences: []string{"payments"}}})
		postOnly := h.createClient(token.ClientRequest{Name: "svc-post", ClientSpec: token.ClientSpec{AuthMethod: token.AuthSecretPost,
			GrantTypes: []string{"client_credentials"}, Scopes: []string{"read"}, Audiences: []string{"payments"}}})
		nocc := h.createClient(token.ClientRequest{Name: "web", ClientSpec: token.ClientSpec{
			GrantTypes: []string{"authorization_code"}, RedirectURIs: []string{"https://app.example/cb"}}})
		cc := url.Values{"grant_type": {"client_credentials"}}
		with := func(kv ...string) url.Values {
			v := url.Values{"grant_type": {"client_credentials"}}
			for i := 0; i < len(kv); i += 2 {
				v.Add(kv[i], kv[i+1])
			}
			return v
		}
		for _, tc := range []struct {
			name       string
			form       url.Values
			user, pass string
			status     int
			code       string
		}{
			{"wrong_secret", cc, "svc", cl.Secret + "x", 401, "invalid_client"},
			// RFC 7591 token_endpoint_auth_method: a client registered for
			// one way of sending its secret cannot use the other.
			{"basic_client_with_post", with("client_id", "svc", "client_secret", cl.Secret), "", "", 401, "invalid_client"},
			{"post_client_with_basic", cc, "svc-post", postOnly.Secret, 401, "invalid_client"},
			{"unknown_client", cc, "nobody", cl.Secret, 401, "invalid_client"},
			{"no_credentials", cc, "", "", 401, "invalid_client"},
			{"basic_and_post_together", with("client_id", "svc", "client_secret", cl.Secret), "svc", cl.Secret, 400, "invalid_request"},
			{"secret_in_form_without_id", with("client_secret", cl.Secret), "", "", 400, "invalid_request"},
			{"grant_not_allowed", cc, "web", nocc.Secret, 400, "unauthorized_client"},
			{"unknown_grant", url.Values{"grant_type": {"password"}}, "svc", cl.Secret, 400, "unsupported_grant_type"},
			{"missing_grant", url.Values{"scope": {"read"}}, "svc", cl.Secret, 400, "invalid_request"},
			{"scope_not_allowed", with("scope", "admin"), "svc", cl.Secret, 400, "invalid_scope"},
			{"bad_scope_syntax", with("scope", "read  write"), "svc", cl.Secret, 400, "invalid_scope"},
			{"audience_not_allowed", with("audience", "billing"), "svc", cl.Secret, 400, "invalid_target"},
			{"resource_not_absolute", with("resource", "payments"), "svc", cl.Secret, 400, "invalid_target"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				status, body := h.post(nil, "/oauth2/token", tc.form, tc.user, tc.pass)
				if status != tc.status || body["error"] != tc.code {
					t.Fatalf("got %d %v, want %d %s", status, body, tc.status, tc.code)
				}
				if body["access_token"] != nil {
					t.Fatal("token issued on failure")
				}
			})
		}
		// Duplicate parameters and malformed bodies (RFC 6749 §3.1).
		for _, tc := range []struct {
			name, body, ctype string
		}{
			{"duplicate_grant_type", "grant_type=client_credentials&grant_type=client_credentials", "application/x-www-form-urlencoded"},
			{"duplicate_scope", "grant_type=client_credentials&scope=read&scope=read", "application/x-www-form-urlencoded"},
			{"semicolon_separator", "grant_type=client_credentials;scope=read", "application/x-www-form-urlencoded"},
			{"bad_percent_encoding", "grant_type=client_credentials&scope=%zz", "application/x-www-form-urlencoded"},
			{"json_body", `{"grant_type":"client_credentials"}`, "application/json"},
			{"oversized_body", "grant_type=client_credentials&pad=" + strings.Repeat("a", token.MaxFormSize), "application/x-www-form-urlencoded"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				req, _ := http.NewRequest("POST", h.issuer+"/oauth2/token", strings.NewReader(tc.body))
				req.Header.Set("Content-Type", tc.ctype)
				req.SetBasicAuth("svc", cl.Secret)
				resp, err := h.http.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				var e map[string]string
				json.NewDecoder(resp.Body).Decode(&e)
				if resp.StatusCode != 400 || e["error"] != "invalid_request" || resp.Header.Get("Cache-Control") != "no-store" {
					t.Fatalf("got %d %v", resp.StatusCode, e)
				}
			})
		}
		// Credentials in the URL query are refused.
		status, body := h.post(nil, "/oauth2/token?client_secret=x", cc, "svc", cl.Secret)
		if status != 400 || body["error"] != "invalid_request" {
			t.Fatalf("query params: %d %v", status, body)
		}
	})
}

// A client registered with private_key_jwt authenticates with a signed
// assertion; a replayed jti, a wrong audience, a long lifetime or a key
// that is not registered are refused.
func TestPrivateKeyJWT(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
		h.createClient(token.ClientRequest{Name: "signer", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}, JWKS: jwks}})
		sign := func(k *ecdsa.PrivateKey, kid string, c jwt.Claims) string {
			s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: k, KeyID: kid}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			raw, err := jwt.Signed(s).Claims(c).Serialize()
			if err != nil {
				t.Fatal(err)
			}
			return raw
		}
		now := h.clock.Now()
		good := func(jti string) jwt.Claims {
			return jwt.Claims{Issuer: "signer", Subject: "signer", Audience: jwt.Audience{h.issuer + "/oauth2/token"}, ID: jti,
				IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(time.Minute))}
		}
		form := func(assertion string) url.Values {
			return url.Values{"grant_type": {"client_credentials"}, "client_id": {"signer"},
				"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {assertion}}
		}
		status, body := h.post(nil, "/oauth2/token", form(sign(key, "k1", good("a1"))), "", "")
		if status != 200 || body["access_token"] == nil {
			t.Fatalf("good assertion: %d %v", status, body)
		}
		issuerAud := good("a-iss")
		issuerAud.Audience = jwt.Audience{h.issuer}
		for _, tc := range []struct {
			name   string
			form   url.Values
			status int
		}{
			{"issuer_as_audience", form(sign(key, "k1", issuerAud)), 200},
			{"replayed_jti", form(sign(key, "k1", good("a1"))), 401},
			{"unregistered_key", form(sign(other, "k1", good("a2"))), 401},
			{"unknown_kid", form(sign(key, "k9", good("a3"))), 401},
			{"wrong_audience", form(sign(key, "k1", func() jwt.Claims { c := good("a4"); c.Audience = jwt.Audience{"https://elsewhere"}; return c }())), 401},
			{"expired", form(sign(key, "k1", func() jwt.Claims { c := good("a5"); c.Expiry = jwt.NewNumericDate(now.Add(-time.Second)); return c }())), 401},
			{"lifetime_too_long", form(sign(key, "k1", func() jwt.Claims { c := good("a6"); c.Expiry = jwt.NewNumericDate(now.Add(time.Hour)); return c }())), 401},
			{"no_jti", form(sign(key, "k1", good(""))), 401},
			{"subject_mismatch", form(sign(key, "k1", func() jwt.Claims { c := good("a7"); c.Issuer = "other"; return c }())), 401},
			{"wrong_assertion_type", func() url.Values {
				f := form(sign(key, "k1", good("a8")))
				f.Set("client_assertion_type", "x")
				return f
			}(), 400},
			{"not_a_jwt", form("not.a.jwt"), 401},
		} {
			t.Run(tc.name, func(t *testing.T) {
				status, body := h.post(nil, "/oauth2/token", tc.form, "", "")
				if status != tc.status {
					t.Fatalf("got %d %v, want %d", status, body, tc.status)
				}
			})
		}
		// A secret client cannot be authenticated by assertion and vice
		// versa (no method downgrade).
		sec := h.createClient(token.ClientRequest{Name: "sec", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}})
		c := good("b1")
		c.Issuer, c.Subject = "sec", "sec"
		f := form(sign(key, "k1", c))
		f.Set("client_id", "sec")
		if status, _ := h.post(nil, "/oauth2/token", f, "", ""); status != 401 {
			t.Fatalf("assertion for secret client: %d", status)
		}
		_ = sec
	})
}

// A workload turns its X509-SVID into a certificate-bound access token
// over mutual TLS, with no shared secret (RFC 8705).
func TestTLSClientAuthWithSVID(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		h := newHarness(t, db)
		const id = "spiffe://example.org/ns/prod/sa/orders"
		h.createClient(token.ClientRequest{Name: "orders", ClientSpec: token.ClientSpec{
			GrantTypes: []string{"client_credentials"}, SPIFFEID: id, Audiences: []string{"payments"}}})
		svid := h.ca.SVID(t, id, time.Hour)
		cert := svid.TLSCertificate()
		mtls := h.tlsClient(&cert)

		// Standard client, client_id in params, no secret.
		cc := clientcredentials.Config{ClientID: "orders", TokenURL: h.issuer + "/oauth2/token", AuthStyle: oauth2.AuthStyleInParams}
		tok, err := cc.Token(context.WithValue(context.Background(), oauth2.HTTPClient, mtls))
		if err != nil {
			t.Fatal(err)
		}
		c, _, err := h.verifyWithJWKS(tok.AccessToken)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(svid.Chain[0].Raw)
		cnf, _ := c["cnf"].(map[string]any)
		if cnf["x5t#S256"] != base64.RawURLEncoding.EncodeToString(sum[:]) {
			t.Fatalf("cnf %v", c["cnf"])
		}
		// Without client_id: the client is found by its SPIFFE ID.
		status, body := h.post(mtls, "/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, "", "")
		if status != 200 || body["access_token"] == nil {
			t.Fatalf("by SPIFFE ID: %d %v", status, body)
		}

		other := h.ca.SVID(t, "spiffe://example.org/ns/prod/sa/intruder", time.Hour).TLSCertificate()
		foreignCA := h.ca
		_ = foreignCA
		for _, tc := range []struct {
			name string
			cert *tls.Certificate
			form url.Values
		}{
			{"other_svid_claims_client", &other, url.Values{"grant_type": {"client_credentials"}, "client_id": {"orders"}}},
			{"no_certificate", nil, url.Values{"grant_type": {"client_credentials"}, "client_id": {"orders"}}},
			{"unregistered_svid", &other, url.Values{"grant_type": {"client_credentials"}}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				status, body := h.post(h.tlsClient(tc.cert), "/oauth2/token", tc.form, "", "")
				if status != 401 || body["error"] != "invalid_client" {
					t.Fatalf("got %d %v", status, body)
				}
			})
		}
	})
}

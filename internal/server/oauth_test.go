package server_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/token"
	"github.com/moatless/moatless/internal/wire"
)

func formPost(t *testing.T, c *http.Client, u string, form url.Values, user, pass string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("POST", u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// The server serves the token service on its listener with its own
// certificate; the admin API is behind the admin credential; a workload
// gets a certificate-bound token with its SVID; a revoked token's ID goes
// out on every watch stream.
func TestTokenServiceOnServer(t *testing.T) {
	e := start(t, "")
	iss := "https://" + e.addr
	st, body := e.do(e.client(nil), "GET", "/.well-known/openid-configuration", "", nil)
	var d map[string]any
	json.Unmarshal(body, &d)
	if st != 200 || d["issuer"] != iss || d["token_endpoint"] != iss+"/oauth2/token" {
		t.Fatalf("discovery: %d %s", st, body)
	}

	// The admin API needs the admin credential.
	req := token.ClientRequest{Name: "orders", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}, SPIFFEID: "spiffe://example.org/agent/orders", Audiences: []string{"payments"}}}
	if st, body := e.do(e.client(nil), "POST", "/v1/admin/oauth/clients", "", req); st != http.StatusUnauthorized {
		t.Fatalf("no credential: %d %s", st, body)
	}
	if st, _ := e.do(e.client(nil), "POST", "/v1/admin/oauth/clients", "mla_wrong", req); st != http.StatusUnauthorized {
		t.Fatalf("wrong credential: %d", st)
	}
	var created token.ClientAnswer
	e.admin("POST", "/v1/admin/oauth/clients", req, &created)

	// The workload authenticates with its X509-SVID (issued by this
	// server's CA) and gets a certificate-bound token.
	n := e.attest("spiffe://example.org/agent/orders")
	st, tok := formPost(t, n.http, iss+"/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, "", "")
	if st != 200 {
		t.Fatalf("token: %d %v", st, tok)
	}
	at := tok["access_token"].(string)
	parsed, err := jwt.ParseSigned(at, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	var jwks jose.JSONWebKeySet
	st, body = e.do(e.client(nil), "GET", "/.well-known/jwks.json", "", nil)
	if err := json.Unmarshal(body, &jwks); err != nil || st != 200 {
		t.Fatalf("jwks: %d %s", st, body)
	}
	var c struct {
		jwt.Claims
		Cnf map[string]string `json:"cnf"`
	}
	keys := jwks.Key(parsed.Headers[0].KeyID)
	if len(keys) != 1 {
		t.Fatal("signing key not in JWKS")
	}
	if err := parsed.Claims(keys[0].Key, &c); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(n.svid.CertChain[0])
	if c.Issuer != iss || c.Subject != "orders" || c.Cnf["x5t#S256"] != base64.RawURLEncoding.EncodeToString(sum[:]) {
		t.Fatalf("claims %+v", c)
	}

	// Revocation reaches the watch stream.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := e.watch(ctx, n)
	next(t, ch) // the full first update
	start := time.Now()
	e.admin("POST", "/v1/admin/oauth/tokens/revoke", map[string]string{"token": at}, nil)
	for {
		u := next(t, ch)
		if u.Revocations != nil && slices.ContainsFunc(u.Revocations.TokenIDs, func(r wire.RevokedTokenID) bool { return r.JTI == c.ID }) {
			t.Logf("revoked jti on the watch stream after %v", time.Since(start))
			break
		}
	}
	if time.Since(start) > time.Second {
		t.Errorf("revocation took %v to reach the watch stream", time.Since(start))
	}
	// Introspection now says inactive, and the metrics are exported.
	var intro map[string]any
	e.admin("POST", "/v1/admin/oauth/tokens/introspect", map[string]string{"token": at}, &intro)
	if len(intro) != 1 || intro["active"] != false {
		t.Fatalf("introspect: %v", intro)
	}
	// The audit log names who did what: the admin for admin calls, the
	// client for grants.
	var page server.AuditPage
	e.admin("GET", server.PathAdminAudit+"?limit=200", nil, &page)
	want := map[string]string{"oauth.client.created": "admin-token", "oauth.token.issued": "orders", "oauth.revoke": "admin-token", "oauth.key.created": "spiffe://example.org/moatless/server"}
	for _, r := range page.Records {
		if a, ok := want[r.Kind]; ok && a == r.Actor {
			delete(want, r.Kind)
		}
	}
	if len(want) > 0 {
		t.Fatalf("audit records missing (kind → actor): %v", want)
	}
	st, body = e.do(e.client(nil), "GET", "/metrics", "", nil)
	if st != 200 || !strings.Contains(string(body), `moatless_oauth_tokens_issued_total{grant="client_credentials"} 1`) {
		t.Fatalf("metrics: %d", st)
	}
}

// --issuer (config issuer) names the issuer; a restart keeps clients and
// keys.
func TestTokenServiceIssuerAndRestart(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir, func(c *config.Server) { c.Issuer, c.TokenSigningAlg = "https://127.0.0.1:1/auth", "EdDSA" })
	st, body := e.do(e.client(nil), "GET", "/auth/.well-known/openid-configuration", "", nil)
	if st != 200 || !strings.Contains(string(body), `"issuer":"https://127.0.0.1:1/auth"`) {
		t.Fatalf("discovery under the issuer path: %d %s", st, body)
	}
	var created token.ClientAnswer
	e.admin("POST", "/v1/admin/oauth/clients", token.ClientRequest{Name: "svc", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}}, &created)
	var keys1 struct{ Keys []token.KeyInfo }
	e.admin("GET", "/v1/admin/oauth/keys", nil, &keys1)
	e.stop()
	e2 := start(t, dir, func(c *config.Server) { c.Issuer, c.TokenSigningAlg = "https://127.0.0.1:1/auth", "EdDSA" })
	var keys2 struct{ Keys []token.KeyInfo }
	e2.admin("GET", "/v1/admin/oauth/keys", nil, &keys2)
	if len(keys1.Keys) != 1 || len(keys2.Keys) != 1 || keys1.Keys[0].KID != keys2.Keys[0].KID || keys1.Keys[0].Alg != "EdDSA" {
		t.Fatalf("keys before %v after %v", keys1, keys2)
	}
	st, tok := formPost(t, e2.client(nil), "https://"+e2.addr+"/auth/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, "svc", created.Secret)
	if st != 200 {
		t.Fatalf("after restart: %d %v", st, tok)
	}
}

// BenchmarkTokenIssuanceThroughServer is client_credentials issuance as a
// service sees it: HTTPS to the server's listener (kept-alive
// connections), client authentication against the store, signing, and
// the durable audit record of the grant.
func BenchmarkTokenIssuanceThroughServer(b *testing.B) {
	for _, clients := range []int{1, 32} {
		b.Run(fmt.Sprintf("clients=%dxGOMAXPROCS", clients), func(b *testing.B) {
			e := startB(b)
			var created token.ClientAnswer
			e.adminB(b, "POST", "/v1/admin/oauth/clients", token.ClientRequest{Name: "bench", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}}, &created)
			body := url.Values{"grant_type": {"client_credentials"}}.Encode()
			b.SetParallelism(clients)
			cpu0 := cpuTime()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				client := e.client(nil)
				for pb.Next() {
					req, _ := http.NewRequest("POST", "https://"+e.addr+"/oauth2/token", strings.NewReader(body))
					req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
					req.SetBasicAuth("bench", created.Secret)
					resp, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}

// TestAdminRefusalFloodIsBoundedOnEveryAdminAPI: an anonymous caller
// guessing admin tokens gets its refusals audited only up to the
// refusal bound, on the built-in admin API and on the token service's
// admin API alike; past the bound it gets 429 and no audit record each.
// Without the bound on the token service's admin API, every guess was an
// fsynced audit write: a free way to flood the audit log and the disk.
func TestAdminRefusalFloodIsBoundedOnEveryAdminAPI(t *testing.T) {
	cases := []struct {
		name, method, path string
	}{
		{"builtin_admin_api", "GET", server.PathAdminEntries},
		{"oauth_admin_api", "GET", "/v1/admin/oauth/clients"},
		{"oauth_admin_api_write", "POST", "/v1/admin/oauth/clients"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, "")
			c := e.client(nil)
			before, _ := audit.List(context.Background(), e.srv.Store(), 0, 1000)
			codes := map[int]int{}
			for i := 0; i < 230; i++ {
				st, _ := e.do(c, tc.method, tc.path, "mla_guess", nil)
				codes[st]++
			}
			if codes[401] != 200 || codes[429] != 30 {
				t.Fatalf("status counts %v, want 200 refusals then 30 rate-limited", codes)
			}
			recs, _ := audit.List(context.Background(), e.srv.Store(), 0, 1000)
			if got := len(recs) - len(before); got != 200 {
				t.Fatalf("%d refusals audited, want 200", got)
			}
			e.admin("GET", "/v1/admin/oauth/clients", nil, nil) // the admin is not locked out
		})
	}
}

// The token service's admin API fails closed like the built-in admin API:
// a call whose audit record cannot be written is not answered (no client
// secret shown once, no list of users leaves the server unaudited) and,
// being one transaction with its record, changed nothing; a call is
// audited once: by the token service's own record of what it did
// or, when it recorded nothing, by one admin.call record.
func TestOAuthAdminFailsClosedWithoutAudit(t *testing.T) {
	e := start(t, "")
	db := e.srv.Store().SQL()
	e.admin("POST", "/v1/admin/oauth/users", token.UserRequest{Name: "zoe", Password: "zoe's long password"}, nil)
	auditDown := func(down bool) {
		t.Helper()
		q := "DROP TRIGGER audit_down"
		if down {
			// The audit sink fails; the rest of the store works.
			q = "CREATE TRIGGER audit_down BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit log down'); END"
		}
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	newClient := token.ClientRequest{Name: "billing", ClientSpec: token.ClientSpec{GrantTypes: []string{"client_credentials"}}}
	cases := []struct {
		name     string
		method   string
		path     string
		token    string
		body     any
		leak     string // must not be in the refused answer
		wantKind string // the one record of the call once the audit log works
	}{
		{"create_client", "POST", "/v1/admin/oauth/clients", e.token, newClient, "client_secret", "oauth.client.created"},
		{"list_users", "GET", "/v1/admin/oauth/users", e.token, nil, "zoe", audit.KindAdminCall},
		{"show_user", "GET", "/v1/admin/oauth/users/zoe", e.token, nil, "zoe", audit.KindAdminCall},
		{"unauthenticated", "GET", "/v1/admin/oauth/users", "mla_wrong", nil, "zoe", audit.KindAdminCall},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			auditDown(true)
			st, body := e.do(e.client(nil), tc.method, tc.path, tc.token, tc.body)
			auditDown(false)
			if st != http.StatusInternalServerError || strings.Contains(string(body), tc.leak) || !strings.Contains(string(body), "audit log unavailable") {
				t.Fatalf("with the audit log down: %d %s, want 500 audit log unavailable", st, body)
			}

			// The refused call changed nothing: a change and its record
			// are one transaction, so the same call now succeeds (a
			// client created unrecorded would make it 409).
			before, err := audit.List(context.Background(), e.srv.Store(), 0, 1000)
			if err != nil {
				t.Fatal(err)
			}
			if st, body := e.do(e.client(nil), tc.method, tc.path, tc.token, tc.body); st >= 500 {
				t.Fatalf("with the audit log back: %d %s", st, body)
			}
			after, _ := audit.List(context.Background(), e.srv.Store(), 0, 1000)
			var kinds []string
			for _, r := range after[:len(after)-len(before)] {
				if r.Actor == "admin-token" || r.Actor == "anonymous" {
					kinds = append(kinds, r.Kind)
				}
			}
			if len(kinds) != 1 || kinds[0] != tc.wantKind {
				t.Fatalf("the call was audited as %v, want once as %s", kinds, tc.wantKind)
			}
		})
	}
}

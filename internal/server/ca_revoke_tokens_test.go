package server_test

import (
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/token"
)

// TestCARevokeEndsTokensObtainedWithItsSVIDs: through the server's own
// wiring, `ca revoke` of the JWT key ends the OAuth token exchanged from a
// JWT-SVID it signed and the secrets token of a JWT login with one; `ca
// revoke` of the X.509 authority ends the token its X509-SVID's
// tls_client_auth client obtained. Tainting ends nothing. Before, all of
// them lived on until their own expiry.
func TestCARevokeEndsTokensObtainedWithItsSVIDs(t *testing.T) {
	e := start(t, "")
	iss := "https://" + e.addr
	const orders = "spiffe://example.org/agent/orders"
	e.admin("POST", "/v1/admin/oauth/clients", token.ClientRequest{Name: "orders", ClientSpec: token.ClientSpec{
		GrantTypes: []string{"client_credentials", token.GrantTokenExchange}, SPIFFEID: orders,
		Audiences: []string{"payments"}, ExchangeAudiences: []string{"payments"}}}, nil)
	n := e.attest(orders)
	st, cc := formPost(t, n.http, iss+"/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, "", "")
	if st != 200 {
		t.Fatalf("client_credentials over mTLS: %d %v", st, cc)
	}
	svid, _, err := e.srv.CA().SignJWTSVID(spiffeid.RequireFromString(orders), []string{iss}, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	st, ex := formPost(t, n.http, iss+"/oauth2/token", url.Values{"grant_type": {token.GrantTokenExchange}, "subject_token": {svid},
		"subject_token_type": {token.TokenTypeJWT}, "audience": {"payments"}}, "", "")
	if st != 200 {
		t.Fatalf("exchange of a JWT-SVID: %d %v", st, ex)
	}
	admin := e.client(nil)
	pol := "name: ci\nsubjects:\n  jwt_roles: [ci]\npaths:\n  - path: secret/data/ci/*\n    capabilities: [read]\n"
	if st, out := e.vreq(admin, "POST", "/v1/sys/policies/apply", e.token, map[string]any{"files": []map[string]string{{"name": "p.yaml", "content": pol}}}); st != 200 {
		t.Fatalf("apply: %d %v", st, out)
	}
	if st, out := e.vreq(admin, "POST", "/v1/auth/jwt/role/ci", e.token, map[string]any{"bound_audiences": []string{"moatless-secrets"},
		"bound_subject_patterns": []string{"spiffe://example.org/ci/*"}}); st != 204 {
		t.Fatalf("jwt role: %d %v", st, out)
	}
	ciSVID, _, err := e.srv.CA().SignJWTSVID(spiffeid.RequireFromString("spiffe://example.org/ci/build"), []string{"moatless-secrets"}, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	st, login := e.vreq(admin, "POST", "/v1/auth/jwt/login", "", map[string]any{"role": "ci", "jwt": ciSVID})
	if st != 200 {
		t.Fatalf("jwt login: %d %v", st, login)
	}
	secretsTok := login["auth"].(map[string]any)["client_token"].(string)
	secretsOK := func() bool {
		st, _ := e.vreq(admin, "GET", "/v1/auth/token/lookup-self", secretsTok, nil)
		return st == 200
	}
	active := func(raw any) bool {
		t.Helper()
		var out map[string]any
		e.admin("POST", "/v1/admin/oauth/tokens/introspect", map[string]any{"token": raw}, &out)
		return out["active"] == true
	}
	want := func(step string, wantCC, wantEx, wantSecrets bool) {
		t.Helper()
		if got := active(cc["access_token"]); got != wantCC {
			t.Errorf("after %s: the tls_client_auth token is active=%v, want %v", step, got, wantCC)
		}
		if got := active(ex["access_token"]); got != wantEx {
			t.Errorf("after %s: the token exchanged from a JWT-SVID is active=%v, want %v", step, got, wantEx)
		}
		if got := secretsOK(); got != wantSecrets {
			t.Errorf("after %s: the JWT login's secrets token works=%v, want %v", step, got, wantSecrets)
		}
	}
	want("issuance", true, true, true)
	oldX, _ := e.rotate("x509")
	oldJ, _ := e.rotate("jwt")
	e.caStep(server.PathAdminCATaint, server.CAStepRequest{ID: oldJ})
	e.caStep(server.PathAdminCATaint, server.CAStepRequest{ID: oldX})
	want("the taints", true, true, true)
	e.caStep(server.PathAdminCARevoke, server.CAStepRequest{ID: oldJ})
	want("the JWT key's revocation", true, false, false)
	e.caStep(server.PathAdminCARevoke, server.CAStepRequest{ID: oldX})
	want("the X.509 authority's revocation", false, false, false)
}

package server_test

import (
	"bytes"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/fieldcrypt"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
)

// vreq sends a secrets API request with an X-Vault-Token (when not "")
// and returns status and decoded body.
func (e *env) vreq(c *http.Client, method, path, token string, body any) (int, map[string]any) {
	e.t.Helper()
	var r *bytes.Reader
	switch b := body.(type) {
	case nil:
		r = bytes.NewReader(nil)
	case string:
		r = bytes.NewReader([]byte(b))
	default:
		j, _ := json.Marshal(b)
		r = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, "https://"+e.addr+path, r)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("X-Vault-Token", token)
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func dataOf(m map[string]any) map[string]any {
	d, _ := m["data"].(map[string]any)
	return d
}

func TestSecretsKVCASAndVersionLimits(t *testing.T) {
	e := start(t, "")
	c := e.client(nil)
	tok := e.token
	put := func(path string, body any) (int, map[string]any) {
		return e.vreq(c, "POST", "/v1/secret/data/"+path, tok, body)
	}

	if st, _ := e.vreq(c, "POST", "/v1/secret/metadata/cfg", tok, map[string]any{"cas_required": true, "max_versions": 3,
		"custom_metadata": map[string]string{"owner": "orders"}}); st != 204 {
		t.Fatalf("metadata create: %d", st)
	}
	tests := []struct {
		name string
		body any
		want int
		msg  string
	}{
		{"cas_required_missing", map[string]any{"data": map[string]any{"k": "v"}}, 400, "check-and-set parameter required"},
		{"cas_wrong_version", map[string]any{"data": map[string]any{"k": "v"}, "options": map[string]any{"cas": 5}}, 400, "did not match"},
		{"cas_zero_creates", map[string]any{"data": map[string]any{"k": "v1"}, "options": map[string]any{"cas": 0}}, 200, ""},
		{"cas_zero_again_conflicts", map[string]any{"data": map[string]any{"k": "v1"}, "options": map[string]any{"cas": 0}}, 400, "did not match"},
		{"cas_current", map[string]any{"data": map[string]any{"k": "v2"}, "options": map[string]any{"cas": 1}}, 200, ""},
		{"unknown_option", map[string]any{"data": map[string]any{"k": "v"}, "options": map[string]any{"cas": 2, "casx": 1}}, 400, "options"},
		{"unknown_field", map[string]any{"data": map[string]any{"k": "v"}, "dat": 1}, 400, "unknown parameters: dat"},
		{"data_not_object", map[string]any{"data": "v", "options": map[string]any{"cas": 2}}, 400, "data"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, out := put("cfg", tc.body)
			if st != tc.want || (tc.msg != "" && !strings.Contains(fmtErrors(out), tc.msg)) {
				t.Fatalf("status %d body %v, want %d %q", st, out, tc.want, tc.msg)
			}
		})
	}
	for v := 3; v <= 5; v++ {
		if st, out := put("cfg", map[string]any{"data": map[string]any{"k": v}, "options": map[string]any{"cas": v - 1}}); st != 200 {
			t.Fatalf("write v%d: %d %v", v, st, out)
		}
	}
	st, out := e.vreq(c, "GET", "/v1/secret/metadata/cfg", tok, nil)
	md := dataOf(out)
	if st != 200 || md["current_version"] != 5.0 || md["oldest_version"] != 3.0 || len(md["versions"].(map[string]any)) != 3 {
		t.Fatalf("metadata after 5 writes with max_versions 3: %d %v", st, md)
	}
	if md["custom_metadata"].(map[string]any)["owner"] != "orders" {
		t.Fatalf("custom metadata %v", md["custom_metadata"])
	}
	if st, _ := e.vreq(c, "GET", "/v1/secret/data/cfg?version=2", tok, nil); st != 404 {
		t.Fatalf("trimmed version 2: %d", st)
	}
	// list
	put("app/a", map[string]any{"data": map[string]any{"x": 1}})
	put("app/sub/b", map[string]any{"data": map[string]any{"x": 1}})
	st, out = e.vreq(c, "LIST", "/v1/secret/metadata/app", tok, nil)
	if keys := dataOf(out)["keys"]; st != 200 || len(keys.([]any)) != 2 || keys.([]any)[1] != "sub/" {
		t.Fatalf("list: %d %v", st, out)
	}
	if st, out := e.vreq(c, "GET", "/v1/secret/metadata/app?list=true", tok, nil); st != 200 || len(dataOf(out)["keys"].([]any)) != 2 {
		t.Fatalf("GET ?list=true: %d %v", st, out)
	}
	// metadata delete erases everything
	if st, _ := e.vreq(c, "DELETE", "/v1/secret/metadata/cfg", tok, nil); st != 204 {
		t.Fatalf("metadata delete: %d", st)
	}
	if st, _ := e.vreq(c, "GET", "/v1/secret/data/cfg", tok, nil); st != 404 {
		t.Fatalf("read after metadata delete: %d", st)
	}
}

func fmtErrors(m map[string]any) string {
	b, _ := json.Marshal(m["errors"])
	return string(b)
}

// TestSecretsDestroyErasesData reads the store files: the sealed value is
// there before destroy and gone after; no plaintext is there ever.
func TestSecretsDestroyErasesData(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir)
	c := e.client(nil)
	secret := "plaintext-never-stored-7f3a"
	if st, _ := e.vreq(c, "POST", "/v1/secret/data/wipe", e.token, map[string]any{"data": map[string]any{"v": secret}}); st != 200 {
		t.Fatal(st)
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "moatless.db")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	var sealed []byte
	if err := db.QueryRow("SELECT value FROM kv_versions WHERE path = 'wipe'").Scan(&sealed); err != nil || len(sealed) < 40 {
		t.Fatalf("sealed value: %v", err)
	}
	db.Close()
	files := func() []byte {
		var all []byte
		for _, f := range []string{"moatless.db", "moatless.db-wal"} {
			b, _ := os.ReadFile(filepath.Join(dir, f))
			all = append(all, b...)
		}
		return all
	}
	probe := sealed[len(sealed)-32:] // the GCM tag and the last ciphertext bytes
	if b := files(); !bytes.Contains(b, probe) || bytes.Contains(b, []byte(secret)) {
		t.Fatalf("before destroy: sealed value present %v, plaintext present %v", bytes.Contains(b, probe), bytes.Contains(b, []byte(secret)))
	}
	if st, out := e.vreq(c, "POST", "/v1/secret/destroy/wipe", e.token, map[string]any{"versions": []int{1}}); st != 204 {
		t.Fatalf("destroy: %d %v", st, out)
	}
	if b := files(); bytes.Contains(b, probe) {
		t.Fatal("destroyed value still in the store files")
	}
	st, out := e.vreq(c, "GET", "/v1/secret/data/wipe", e.token, nil)
	if st != 404 || dataOf(out)["metadata"].(map[string]any)["destroyed"] != true {
		t.Fatalf("read of destroyed: %d %v", st, out)
	}
}

// TestSecretsWorkloadIdentity: a workload's X509-SVID is its credential on
// every request; policies bind to SPIFFE IDs and patterns; revocation cuts
// it off; cert and JWT-SVID login issue tokens bound to the ID.
func TestSecretsWorkloadIdentity(t *testing.T) {
	e := start(t, "")
	orders := e.attest("spiffe://example.org/ns/prod/sa/orders")
	other := e.attest("spiffe://example.org/ns/dev/sa/orders")
	admin := e.client(nil)
	pol := `
name: prod-orders
subjects:
  spiffe_id_patterns: ["spiffe://example.org/ns/prod/sa/*"]
  jwt_roles: [ci]
paths:
  - path: secret/data/orders/*
    capabilities: [read]
`
	if st, out := e.vreq(admin, "POST", "/v1/sys/policies/apply", e.token, map[string]any{"files": []map[string]string{{"name": "p.yaml", "content": pol}}}); st != 200 {
		t.Fatalf("apply: %d %v", st, out)
	}
	e.vreq(admin, "POST", "/v1/secret/data/orders/db", e.token, map[string]any{"data": map[string]any{"dsn": "x"}})

	if st, out := e.vreq(orders.http, "GET", "/v1/secret/data/orders/db", "", nil); st != 200 || dataOf(dataOf(out))["dsn"] != "x" {
		t.Fatalf("workload read by SVID: %d %v", st, out)
	}
	if st, _ := e.vreq(orders.http, "POST", "/v1/secret/data/orders/db", "", map[string]any{"data": map[string]any{"dsn": "y"}}); st != 403 {
		t.Fatalf("write not granted: %d", st)
	}
	if st, _ := e.vreq(other.http, "GET", "/v1/secret/data/orders/db", "", nil); st != 403 {
		t.Fatalf("other namespace: %d", st)
	}
	if st, _ := e.vreq(e.client(nil), "GET", "/v1/secret/data/orders/db", "", nil); st != 403 {
		t.Fatalf("no credential: %d", st)
	}

	// cert login: a token bound to the SVID, never outliving it.
	st, out := e.vreq(orders.http, "POST", "/v1/auth/cert/login", "", nil)
	auth, _ := out["auth"].(map[string]any)
	if st != 200 || auth == nil {
		t.Fatalf("cert login: %d %v", st, out)
	}
	certTok := auth["client_token"].(string)
	if st, _ := e.vreq(e.client(nil), "GET", "/v1/secret/data/orders/db", certTok, nil); st != 200 {
		t.Fatalf("token from cert login: %d", st)
	}
	if st, _ := e.vreq(e.client(nil), "POST", "/v1/auth/cert/login", "", nil); st != 400 {
		t.Fatalf("cert login without a certificate: %d", st)
	}

	// JWT-SVID login.
	if st, out := e.vreq(admin, "POST", "/v1/auth/jwt/role/ci", e.token, map[string]any{"bound_audiences": []string{"moatless-secrets"},
		"bound_subject_patterns": []string{"spiffe://example.org/ns/prod/*/*"}}); st != 204 {
		t.Fatalf("jwt role: %d %v", st, out)
	}
	jwtFor := func(id, aud string) string {
		tok, _, err := e.srv.CA().SignJWTSVID(spiffeid.RequireFromString(id), []string{aud}, 5*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	tests := []struct {
		name string
		jwt  string
		role string
		want int
	}{
		{"bound_subject", jwtFor("spiffe://example.org/ns/prod/sa/batch", "moatless-secrets"), "ci", 200},
		{"wrong_audience", jwtFor("spiffe://example.org/ns/prod/sa/batch", "payments"), "ci", 400},
		{"subject_not_bound", jwtFor("spiffe://example.org/ns/dev/sa/batch", "moatless-secrets"), "ci", 400},
		{"unknown_role", jwtFor("spiffe://example.org/ns/prod/sa/batch", "moatless-secrets"), "nope", 400},
		{"garbage", "eyJhbGciOiJub25lIn0.e30.", "ci", 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, out := e.vreq(e.client(nil), "POST", "/v1/auth/jwt/login", "", map[string]any{"role": tc.role, "jwt": tc.jwt})
			if st != tc.want {
				t.Fatalf("status %d %v", st, out)
			}
			if st == 200 {
				tok := out["auth"].(map[string]any)["client_token"].(string)
				if st, _ := e.vreq(e.client(nil), "GET", "/v1/secret/data/orders/db", tok, nil); st != 200 {
					t.Fatalf("jwt token read: %d", st)
				}
			}
		})
	}

	// Revoking the SPIFFE ID cuts off the SVID and the tokens issued to it.
	e.admin("POST", server.PathAdminRevocations, server.RevokeRequest{SPIFFEID: "spiffe://example.org/ns/prod/sa/orders"}, nil)
	if st, _ := e.vreq(e.client(nil), "GET", "/v1/secret/data/orders/db", certTok, nil); st != 403 {
		t.Fatalf("token of a revoked ID: %d", st)
	}
	if st, _ := e.vreq(orders.http, "GET", "/v1/secret/data/orders/db", "", nil); st != 403 {
		t.Fatalf("revoked SVID: %d", st)
	}
}

// TestSecretsPolicyVersionsAndRollback: changes are versioned; a rollback
// restores an earlier grant set as a new version.
func TestSecretsPolicyVersionsAndRollback(t *testing.T) {
	e := start(t, "")
	c := e.client(nil)
	w := e.attest("spiffe://example.org/ns/prod/sa/web")
	apply := func(hcl string) {
		t.Helper()
		if st, out := e.vreq(c, "PUT", "/v1/sys/policies/acl/web", e.token, map[string]any{"policy": hcl}); st != 204 {
			t.Fatalf("put policy: %d %v", st, out)
		}
	}
	e.vreq(c, "POST", "/v1/secret/data/web/a", e.token, map[string]any{"data": map[string]any{"x": 1}})
	pol := "name: web\nsubjects: {spiffe_ids: [spiffe://example.org/ns/prod/sa/web]}\npaths: [{path: secret/data/web/*, capabilities: [read]}]\n"
	if st, out := e.vreq(c, "POST", "/v1/sys/policies/apply", e.token, map[string]any{"files": []map[string]string{{"content": pol}}}); st != 200 {
		t.Fatalf("apply: %d %v", st, out)
	}
	if st, _ := e.vreq(w.http, "GET", "/v1/secret/data/web/a", "", nil); st != 200 {
		t.Fatalf("v1 grant: %d", st)
	}
	// Vault-syntax update keeps the subjects and narrows the grant.
	apply(`path "secret/data/web/other" { capabilities = ["read"] }`)
	if st, _ := e.vreq(w.http, "GET", "/v1/secret/data/web/a", "", nil); st != 403 {
		t.Fatalf("after narrowing: %d", st)
	}
	st, out := e.vreq(c, "GET", "/v1/sys/policies/acl/web", e.token, nil)
	if st != 200 || !strings.Contains(dataOf(out)["policy"].(string), `path "secret/data/web/other"`) {
		t.Fatalf("read policy: %d %v", st, out)
	}
	st, out = e.vreq(c, "GET", "/v1/sys/policies/history", e.token, nil)
	vs := dataOf(out)["versions"].([]any)
	if st != 200 || len(vs) != 2 {
		t.Fatalf("history: %d %v", st, out)
	}
	if st, out := e.vreq(c, "POST", "/v1/sys/policies/rollback", e.token, map[string]any{"version": 1}); st != 200 || dataOf(out)["version"] != 3.0 {
		t.Fatalf("rollback: %d %v", st, out)
	}
	if st, _ := e.vreq(w.http, "GET", "/v1/secret/data/web/a", "", nil); st != 200 {
		t.Fatalf("after rollback: %d", st)
	}
	// A non-admin cannot write policies.
	if st, _ := e.vreq(w.http, "PUT", "/v1/sys/policies/acl/web", "", map[string]any{"policy": `path "*" { capabilities = ["sudo"] }`}); st != 403 {
		t.Fatalf("workload wrote a policy: %d", st)
	}
	// Bad policies change nothing.
	if st, _ := e.vreq(c, "PUT", "/v1/sys/policies/acl/bad", e.token, map[string]any{"policy": `path "a" { allowed_parameters = {} }`}); st != 400 {
		t.Fatalf("unsupported HCL: %d", st)
	}
}

// TestSecretsAuditCarriesHMACs: no secret value reaches the audit log;
// records carry HMACs that sys/audit-hash reproduces.
func TestSecretsAuditCarriesHMACs(t *testing.T) {
	e := start(t, "")
	c := e.client(nil)
	secret := "audit-never-sees-this-91c2"
	e.vreq(c, "POST", "/v1/secret/data/a", e.token, map[string]any{"data": map[string]any{"pw": secret}})
	e.vreq(c, "GET", "/v1/secret/data/a", e.token, nil)
	e.vreq(c, "POST", "/v1/transit/keys/k", e.token, nil)
	e.vreq(c, "POST", "/v1/transit/encrypt/k", e.token, map[string]any{"plaintext": base64.StdEncoding.EncodeToString([]byte(secret))})
	var page server.AuditPage
	e.admin("GET", server.PathAdminAudit+"?limit=100", nil, &page)
	raw, _ := json.Marshal(page)
	if bytes.Contains(raw, []byte(secret)) || bytes.Contains(raw, []byte(base64.StdEncoding.EncodeToString([]byte(secret)))) {
		t.Fatal("a secret value reached the audit log")
	}
	if bytes.Contains(raw, []byte(e.token)) {
		t.Fatal("the admin token reached the audit log")
	}
	_, out := e.vreq(c, "POST", "/v1/sys/audit-hash/file", e.token, map[string]any{"input": `{"pw":"` + secret + `"}`})
	h := dataOf(out)["hash"].(string)
	found := 0
	for _, r := range page.Records {
		if r.Kind == "secrets.request" && r.Subject == "secret/data/a" {
			if r.Details["data_hmac"] != h {
				t.Fatalf("record %d data_hmac %q, audit-hash %q", r.Seq, r.Details["data_hmac"], h)
			}
			found++
		}
	}
	if found != 2 {
		t.Fatalf("%d audited KV accesses, want 2 (write and read)", found)
	}
}

// TestSecretsSealing: a wrong root key stops the start; without a key the
// service answers 503 until an admin unseals it.
func TestSecretsSealing(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir)
	e.vreq(e.client(nil), "POST", "/v1/secret/data/x", e.token, map[string]any{"data": map[string]any{"v": 1}})
	e.stop()
	keyFile := filepath.Join(dir, server.SecretsKeyFile)
	key, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}

	// A wrong key: the server refuses to start and says why.
	os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))), 0o600)
	if _, err := newServer(t, dir); err == nil || !strings.Contains(err.Error(), "does not open this store's keyring") {
		t.Fatalf("start with a wrong key: %v", err)
	}
	// No key: sealed, 503 with a message, nothing served.
	os.Remove(keyFile)
	e2 := start(t, dir)
	c := e2.client(nil)
	st, out := e2.vreq(c, "GET", "/v1/secret/data/x", e2.token, nil)
	if st != 503 || !strings.Contains(fmtErrors(out), "sealed") {
		t.Fatalf("sealed read: %d %v", st, out)
	}
	if st, out := e2.vreq(c, "GET", "/v1/sys/seal-status", "", nil); st != 200 || dataOf(out)["sealed"] != true {
		t.Fatalf("seal-status: %d %v", st, out)
	}
	if st, _ := e2.vreq(c, "PUT", "/v1/sys/unseal", "", map[string]any{"key": strings.TrimSpace(string(key))}); st != 403 {
		t.Fatalf("unseal without the admin credential: %d", st)
	}
	if st, out := e2.vreq(c, "PUT", "/v1/sys/unseal", e2.token, map[string]any{"key": base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{2}, 32))}); st != 400 || !strings.Contains(fmtErrors(out), "wrong key") {
		t.Fatalf("unseal with a wrong key: %d %v", st, out)
	}
	if st, out := e2.vreq(c, "PUT", "/v1/sys/unseal", e2.token, map[string]any{"key": strings.TrimSpace(string(key))}); st != 200 {
		t.Fatalf("unseal: %d %v", st, out)
	}
	if st, out := e2.vreq(c, "GET", "/v1/secret/data/x", e2.token, nil); st != 200 || dataOf(dataOf(out))["v"] != 1.0 {
		t.Fatalf("read after unseal: %d %v", st, out)
	}
}

func newServer(t *testing.T, dir string) (*server.Server, error) {
	st := testSettings(dir)
	s, err := server.New(t.Context(), server.Config{Settings: st, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if s != nil {
		s.Close()
	}
	return s, err
}

// TestSecretsAppRoleBindings: CIDR binding, secret ID TTL, use-limited
// tokens.
func TestSecretsAppRoleBindings(t *testing.T) {
	e := start(t, "")
	c := e.client(nil)
	e.vreq(c, "POST", "/v1/auth/approle/role/r", e.token, map[string]any{"secret_id_ttl": "1m", "token_num_uses": 2})
	_, out := e.vreq(c, "GET", "/v1/auth/approle/role/r/role-id", e.token, nil)
	roleID := dataOf(out)["role_id"]
	newSID := func(body any) string {
		_, out := e.vreq(c, "POST", "/v1/auth/approle/role/r/secret-id", e.token, body)
		return dataOf(out)["secret_id"].(string)
	}
	login := func(sid string) (int, map[string]any) {
		return e.vreq(c, "POST", "/v1/auth/approle/login", "", map[string]any{"role_id": roleID, "secret_id": sid})
	}
	if st, _ := login(newSID(map[string]any{"cidr_list": "10.0.0.0/8"})); st != 400 {
		t.Fatalf("login from outside the CIDR: %d", st)
	}
	sid := newSID(nil)
	e.clock.Add(2 * time.Minute)
	if st, _ := login(sid); st != 400 {
		t.Fatalf("expired secret id: %d", st)
	}
	st, out := login(newSID(map[string]any{"cidr_list": []string{"127.0.0.0/8"}}))
	if st != 200 {
		t.Fatalf("login: %d %v", st, out)
	}
	tok := out["auth"].(map[string]any)["client_token"].(string)
	// token_num_uses 2: two requests, then the token is gone.
	for i := range 2 {
		if st, _ := e.vreq(c, "GET", "/v1/auth/token/lookup-self", tok, nil); st != 200 {
			t.Fatalf("use %d: %d", i+1, st)
		}
	}
	if st, _ := e.vreq(c, "GET", "/v1/auth/token/lookup-self", tok, nil); st != 403 {
		t.Fatalf("third use: %d", st)
	}
	if st, _ := login("not-a-secret-id"); st != 400 {
		t.Fatalf("unknown secret id: %d", st)
	}
}

// TestSecretsAttacks: paths, headers and bodies an attacker would try.
func TestSecretsAttacks(t *testing.T) {
	e := start(t, "")
	c := e.client(nil)
	w := e.attest("spiffe://example.org/ns/prod/sa/web")
	pol := "name: web\nsubjects: {spiffe_ids: [spiffe://example.org/ns/prod/sa/web]}\npaths: [{path: secret/data/web/*, capabilities: [read, create, update]}]\n"
	e.vreq(c, "POST", "/v1/sys/policies/apply", e.token, map[string]any{"files": []map[string]string{{"content": pol}}})
	e.vreq(c, "POST", "/v1/secret/data/admin/root", e.token, map[string]any{"data": map[string]any{"x": 1}})
	raw := func(cl *http.Client, method, path string, hdr map[string]string, body string) int {
		t.Helper()
		req, _ := http.NewRequest(method, "https://"+e.addr+"/", strings.NewReader(body))
		req.URL.Opaque = path // sent as is, no client-side cleaning
		for k, v := range hdr {
			req.Header[k] = []string{v}
		}
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	tests := []struct {
		name   string
		method string
		path   string
		hdr    map[string]string
		body   string
		bad    func(int) bool
	}{
		{"dot_segments", "GET", "/v1/secret/data/web/../admin/root", nil, "", func(s int) bool { return s == 200 }},
		{"encoded_dot_segments", "GET", "/v1/secret/data/web/%2e%2e/admin/root", nil, "", func(s int) bool { return s == 200 }},
		{"encoded_slash", "GET", "/v1/secret/data/web%2f..%2fadmin/root", nil, "", func(s int) bool { return s == 200 }},
		{"double_slash", "GET", "/v1/secret/data/web//admin/root", nil, "", func(s int) bool { return s == 200 }},
		{"glob_in_path", "GET", "/v1/secret/data/web/*", nil, "", func(s int) bool { return s != 400 }},
		{"body_too_large", "POST", "/v1/secret/data/web/x", nil, `{"data":{"a":"` + strings.Repeat("a", 3<<20) + `"}}`, func(s int) bool { return s != 413 }},
		{"trailing_json", "POST", "/v1/secret/data/web/x", nil, `{"data":{}}{"data":{}}`, func(s int) bool { return s != 400 }},
		{"unknown_method", "TRACE", "/v1/secret/data/web/x", nil, "", func(s int) bool { return s == 200 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if st := raw(w.http, tc.method, tc.path, tc.hdr, tc.body); tc.bad(st) {
				t.Fatalf("status %d", st)
			}
		})
	}
	// Header spelling: X_Vault_Token is not X-Vault-Token.
	if st := raw(c, "GET", "/v1/secret/data/admin/root", map[string]string{"X_Vault_Token": e.token}, ""); st != 403 {
		t.Fatalf("X_Vault_Token authenticated: %d", st)
	}
	// The admin token works as X-Vault-Token and as a bearer token.
	if st := raw(c, "GET", "/v1/secret/data/admin/root", map[string]string{"Authorization": "Bearer " + e.token}, ""); st != 200 {
		t.Fatalf("bearer admin token: %d", st)
	}
	// A wrong token with a valid client certificate is refused, not
	// downgraded to the certificate's identity.
	if st := raw(w.http, "GET", "/v1/secret/data/web/x", map[string]string{"X-Vault-Token": "mls.bogus"}, ""); st != 403 {
		t.Fatalf("bogus token with a certificate: %d", st)
	}
	// A KV mount named for a path OPA's REST API serves (/v1/data/,
	// /v1/policies/) could never be reached: refused when mounted.
	for _, name := range []string{"data", "policies", "admin", "agent"} {
		if st, _ := e.vreq(c, "POST", "/v1/sys/mounts/"+name, e.token, map[string]any{"type": "kv", "options": map[string]string{"version": "2"}}); st != 400 {
			t.Fatalf("mount %q: status %d, want 400", name, st)
		}
	}
	// The server's own API paths are not the secrets service's.
	if st, _ := e.vreq(c, "GET", "/v1/agent/nothing", "", nil); st != 404 {
		t.Fatalf("/v1/agent/: %d", st)
	}
}

// TestFieldcryptThroughServer: the fieldcrypt package against the server's
// transit API, the HTTP endpoint, and a key rotation in between.
func TestFieldcryptThroughServer(t *testing.T) {
	e := start(t, "")
	c := e.client(nil)
	e.vreq(c, "POST", "/v1/transit/keys/pii", e.token, map[string]any{"derived": true})
	tr := &fieldcrypt.Transit{Addr: "https://" + e.addr, Key: "pii", Token: e.token, Client: c}
	enc := fieldcrypt.Encrypter{Cipher: tr, Fields: []string{"ssn", "credit_card", "phone"}, Context: []byte("customer-7")}
	doc := []byte(`{"name":"Ada","ssn":"123-45-6789","credit_card":"4111111111111111","phone":"+1 555 0100"}`)
	sealed, err := enc.Encrypt(t.Context(), doc)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, []byte("4111")) || !bytes.Contains(sealed, []byte(`"name":"Ada"`)) || !bytes.Contains(sealed, []byte("vault:v1:")) {
		t.Fatalf("sealed doc %s", sealed)
	}
	e.vreq(c, "POST", "/v1/transit/keys/pii/rotate", e.token, nil)
	plain, err := enc.Decrypt(t.Context(), sealed)
	if err != nil || !bytes.Contains(plain, []byte("4111111111111111")) {
		t.Fatalf("decrypt after rotation: %s %v", plain, err)
	}
	// The HTTP endpoint does the same in one call, with the new version.
	st, out := e.vreq(c, "POST", "/v1/fieldcrypt/encrypt/pii", e.token, map[string]any{
		"document": json.RawMessage(doc), "fields": []string{"ssn", "credit_card"}, "context": base64.StdEncoding.EncodeToString([]byte("customer-7"))})
	d := dataOf(out)["document"].(map[string]any)
	if st != 200 || !strings.HasPrefix(d["ssn"].(string), "vault:v2:") || d["phone"] != "+1 555 0100" {
		t.Fatalf("endpoint encrypt: %d %v", st, out)
	}
	st, out = e.vreq(c, "POST", "/v1/fieldcrypt/decrypt/pii", e.token, map[string]any{
		"document": d, "fields": []string{"ssn", "credit_card"}, "context": base64.StdEncoding.EncodeToString([]byte("customer-8"))})
	if st != 400 {
		t.Fatalf("decrypt under another document's context: %d %v", st, out)
	}
}

// testSettings are startTB's settings for dir.
func testSettings(dir string) config.Server {
	st := config.DefaultServer(func(string) string { return "" })
	st.DataDir, st.TrustDomain, st.Listen, st.Store, st.KEKFile, st.AdminIDs = dir, "example.org", "127.0.0.1:0", "", "", nil
	st.Complete()
	return st
}

// TestSecretsTransitAutoRotation: a key with auto_rotate_period gets a new
// version once the period has passed, from the maintenance loop, audited.
func TestSecretsTransitAutoRotation(t *testing.T) {
	e := start(t, "")
	c := e.client(nil)
	if st, out := e.vreq(c, "POST", "/v1/transit/keys/auto", e.token, map[string]any{"auto_rotate_period": "1h"}); st != 200 {
		t.Fatalf("create: %d %v", st, out)
	}
	if st, _ := e.vreq(c, "POST", "/v1/transit/keys/short", e.token, map[string]any{"auto_rotate_period": "10m"}); st != 400 {
		t.Fatalf("auto_rotate_period under 1h accepted: %d", st)
	}
	e.clock.Add(2 * time.Hour) // not past the server certificate's renewal at half life
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, out := e.vreq(c, "GET", "/v1/transit/keys/auto", e.token, nil)
		if dataOf(out)["latest_version"] == 2.0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not rotated: %v", dataOf(out))
		}
		time.Sleep(50 * time.Millisecond)
	}
	var page server.AuditPage
	e.admin("GET", server.PathAdminAudit+"?limit=50", nil, &page)
	for _, r := range page.Records {
		if r.Subject == "transit/keys/auto/rotate" && r.Actor == "moatless-secrets" && r.Details["reason"] == "auto_rotate_period" {
			return
		}
	}
	t.Fatal("no audit record of the automatic rotation")
}

// TestSecretsAnonymousFloodIsBounded: requests without any credential are
// refused and audited up to a rate; beyond it they get 429 and no record,
// so a flood cannot turn into a flood of fsynced audit writes. The test
// clock stands still: the bucket does not refill during the burst.
func TestSecretsAnonymousFloodIsBounded(t *testing.T) {
	e := start(t, "")
	c := e.client(nil)
	limited := 0
	for range 260 {
		st, _ := e.vreq(c, "GET", "/v1/secret/data/x", "", nil)
		switch st {
		case 403:
		case 429:
			limited++
		default:
			t.Fatalf("anonymous request: %d", st)
		}
	}
	if limited == 0 {
		t.Fatal("260 refused anonymous requests in a burst were all audited")
	}
	var page server.AuditPage
	e.admin("GET", server.PathAdminAudit+"?limit=1000", nil, &page)
	n := 0
	for _, r := range page.Records {
		if r.Kind == "secrets.request" && r.Actor == "anonymous" {
			n++
		}
	}
	if n > 260-limited || n < 200 {
		t.Fatalf("%d anonymous refusals audited, %d limited", n, limited)
	}
}

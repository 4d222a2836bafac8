package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/wire"
)

// counts returns how many rows each table the admin API writes holds.
func counts(t *testing.T, e *env) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, table := range []string{"entries", "join_tokens", "revoked_ids", "revoked_serials", "svids", "nodes"} {
		var n int
		if err := e.srv.Store().SQL().QueryRow("SELECT COUNT(*) FROM " + table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		out[table] = n
	}
	vs, _ := e.srv.Store().Versions(context.Background())
	out["version"] = int(vs.Global)
	return out
}

// TestAdminMalformedInput sends bad input to every admin endpoint that
// takes some: each gets a 4xx naming the problem, and nothing is written
// except the audit record of the refused call.
func TestAdminMalformedInput(t *testing.T) {
	e := start(t, "", func(c *config.Server) { c.MaxJWTSVIDTTL = wire.Duration(time.Hour) })
	const agent = "spiffe://example.org/agent/a"
	valid := `"spiffe_id":"spiffe://example.org/w","parent_id":"` + agent + `","selectors":[{"type":"unix","value":"uid:1"}]`
	tests := []struct {
		name, method, path, body string
		status                   int
		want                     string
	}{
		{"entry_empty_body", "POST", server.PathAdminEntries, "", 400, "empty body"},
		{"entry_not_json", "POST", server.PathAdminEntries, "{", 400, "malformed JSON"},
		{"entry_array", "POST", server.PathAdminEntries, "[]", 400, "expected a JSON object"},
		{"entry_unknown_field", "POST", server.PathAdminEntries, `{` + valid + `,"admin":true}`, 400, `unknown field "admin"`},
		{"entry_wrong_type", "POST", server.PathAdminEntries, `{"spiffe_id":7}`, 400, `field "spiffe_id"`},
		{"entry_trailing_data", "POST", server.PathAdminEntries, `{` + valid + `} {}`, 400, "more than one JSON value"},
		{"entry_missing_id", "POST", server.PathAdminEntries, `{"parent_id":"` + agent + `"}`, 400, "spiffe_id: required"},
		{"entry_bad_id", "POST", server.PathAdminEntries, `{"spiffe_id":"spiffe://example.org/a/../b","parent_id":"` + agent + `"}`, 400, "spiffe_id"},
		{"entry_uppercase_td", "POST", server.PathAdminEntries, `{"spiffe_id":"spiffe://Example.org/a","parent_id":"` + agent + `"}`, 400, "spiffe_id"},
		{"entry_other_td", "POST", server.PathAdminEntries, `{"spiffe_id":"spiffe://other.org/a","parent_id":"` + agent + `"}`, 400, "not in trust domain"},
		{"entry_reserved_id", "POST", server.PathAdminEntries, `{"spiffe_id":"spiffe://example.org/moatless/admin","parent_id":"` + agent + `"}`, 400, "reserved"},
		// SPIFFE paths are case-sensitive, but a reservation must not be
		// escaped by spelling it differently: /Moatless/admin reads as an
		// admin ID to a person and to any consumer that folds case.
		{"entry_reserved_id_capitalized", "POST", server.PathAdminEntries, `{"spiffe_id":"spiffe://example.org/Moatless/admin","parent_id":"` + agent + `"}`, 400, "reserved"},
		{"entry_reserved_id_upper_case", "POST", server.PathAdminEntries, `{"spiffe_id":"spiffe://example.org/MOATLESS/ns/x","parent_id":"` + agent + `"}`, 400, "reserved"},
		{"entry_reserved_segment_alone", "POST", server.PathAdminEntries, `{"spiffe_id":"spiffe://example.org/moatless","parent_id":"` + agent + `"}`, 400, "reserved"},
		{"entry_server_parent_mixed_case", "POST", server.PathAdminEntries, `{"spiffe_id":"spiffe://example.org/w","parent_id":"spiffe://example.org/MoatLess/server"}`, 400, "parent_id"},
		{"entry_server_parent", "POST", server.PathAdminEntries, `{"spiffe_id":"spiffe://example.org/w","parent_id":"spiffe://example.org/moatless/server"}`, 400, "parent_id"},
		{"entry_bare_td_parent", "POST", server.PathAdminEntries, `{"spiffe_id":"spiffe://example.org/w","parent_id":"spiffe://example.org"}`, 400, "parent_id"},
		{"entry_self_parent", "POST", server.PathAdminEntries, `{"spiffe_id":"` + agent + `","parent_id":"` + agent + `"}`, 400, "own parent"},
		{"entry_no_selectors", "POST", server.PathAdminEntries, `{"spiffe_id":"spiffe://example.org/w","parent_id":"` + agent + `"}`, 400, "selectors: at least one"},
		{"entry_selector_type", "POST", server.PathAdminEntries, `{"spiffe_id":"spiffe://example.org/w","parent_id":"` + agent + `","selectors":[{"type":"k8s","value":"ns:x"}]}`, 400, "selectors[0]"},
		{"entry_selector_kind", "POST", server.PathAdminEntries, `{"spiffe_id":"spiffe://example.org/w","parent_id":"` + agent + `","selectors":[{"type":"unix","value":"pid:1"}]}`, 400, "unknown unix selector kind"},
		{"entry_selector_uid", "POST", server.PathAdminEntries, `{"spiffe_id":"spiffe://example.org/w","parent_id":"` + agent + `","selectors":[{"type":"unix","value":"uid:-1"}]}`, 400, "decimal"},
		{"entry_selector_path", "POST", server.PathAdminEntries, `{"spiffe_id":"spiffe://example.org/w","parent_id":"` + agent + `","selectors":[{"type":"unix","value":"path:bin/x"}]}`, 400, "absolute"},
		{"entry_selector_sha", "POST", server.PathAdminEntries, `{"spiffe_id":"spiffe://example.org/w","parent_id":"` + agent + `","selectors":[{"type":"unix","value":"sha256:ABC"}]}`, 400, "sha256"},
		{"entry_selector_twice", "POST", server.PathAdminEntries, `{"spiffe_id":"spiffe://example.org/w","parent_id":"` + agent + `","selectors":[{"type":"unix","value":"uid:1"},{"type":"unix","value":"uid:1"}]}`, 400, "listed twice"},
		{"entry_ttl_too_long", "POST", server.PathAdminEntries, `{` + valid + `,"x509_ttl":"999h"}`, 400, "x509_ttl"},
		{"entry_ttl_too_short", "POST", server.PathAdminEntries, `{` + valid + `,"jwt_ttl":"1s"}`, 400, "jwt_ttl"},
		{"entry_ttl_garbage", "POST", server.PathAdminEntries, `{` + valid + `,"x509_ttl":"soon"}`, 400, `field "x509_ttl"`},
		{"entry_namespace", "POST", server.PathAdminEntries, `{` + valid + `,"namespace":"Prod_1"}`, 400, "namespace"},
		{"entry_label_key", "POST", server.PathAdminEntries, `{` + valid + `,"labels":{"-bad":"x"}}`, 400, "labels"},
		{"entry_label_value", "POST", server.PathAdminEntries, `{` + valid + `,"labels":{"app":"a b"}}`, 400, "labels"},
		{"entry_label_prefix", "POST", server.PathAdminEntries, `{` + valid + `,"labels":{"Bad_Prefix/app":"x"}}`, 400, "prefix"},
		{"entry_query_param", "POST", server.PathAdminEntries + "?force=1", `{` + valid + `}`, 400, "force"},
		{"entry_form_body", "POST", server.PathAdminEntries, "x=1", 400, "malformed JSON"},
		{"entry_huge_body", "POST", server.PathAdminEntries, `{"spiffe_id":"` + strings.Repeat("a", server.MaxAdminBody) + `"}`, 400, "larger than"},
		{"entry_list_bad_selector", "GET", server.PathAdminEntries + "?selector=unix:nope", "", 400, "selector"},
		{"entry_list_unknown_param", "GET", server.PathAdminEntries + "?limit=5", "", 400, "limit"},
		{"entry_get_missing", "GET", server.PathAdminEntries + "/nope", "", 404, "no entry"},
		{"entry_delete_missing", "DELETE", server.PathAdminEntries + "/nope", "", 404, "no entry"},
		{"entry_update_missing", "PUT", server.PathAdminEntries + "/nope", `{` + valid + `}`, 404, "no entry"},
		{"entry_update_bad_selector", "PUT", server.PathAdminEntries + "/nope", `{"spiffe_id":"spiffe://example.org/w","parent_id":"` + agent + `","selectors":[{"type":"unix","value":"uid:x"}]}`, 400, "decimal"},
		{"entry_update_bad_revision", "PUT", server.PathAdminEntries + "/nope?revision=abc", `{` + valid + `}`, 400, "revision"},
		{"entry_update_unknown_field", "PUT", server.PathAdminEntries + "/nope", `{` + valid + `,"id":"x"}`, 400, `unknown field "id"`},
		{"token_missing_id", "POST", server.PathAdminJoinTokens, `{}`, 400, "spiffe_id: required"},
		{"token_bad_id", "POST", server.PathAdminJoinTokens, `{"spiffe_id":"agent-1"}`, 400, "spiffe_id"},
		{"token_reserved_id", "POST", server.PathAdminJoinTokens, `{"spiffe_id":"spiffe://example.org/moatless/server"}`, 400, "reserved"},
		{"token_reserved_id_capitalized", "POST", server.PathAdminJoinTokens, `{"spiffe_id":"spiffe://example.org/Moatless/server"}`, 400, "reserved"},
		{"token_ttl_too_long", "POST", server.PathAdminJoinTokens, `{"spiffe_id":"` + agent + `","ttl":"720h"}`, 400, "ttl"},
		{"token_ttl_negative", "POST", server.PathAdminJoinTokens, `{"spiffe_id":"` + agent + `","ttl":"-1s"}`, 400, "ttl"},
		{"token_unknown_field", "POST", server.PathAdminJoinTokens, `{"spiffe_id":"` + agent + `","token":"mine"}`, 400, `unknown field "token"`},
		{"token_list_bad_all", "GET", server.PathAdminJoinTokens + "?all=maybe", "", 400, "all"},
		{"token_delete_missing", "DELETE", server.PathAdminJoinTokens + "/nope", "", 404, "no join token"},
		{"revoke_neither", "POST", server.PathAdminRevocations, `{}`, 400, "exactly one"},
		{"revoke_both", "POST", server.PathAdminRevocations, `{"spiffe_id":"spiffe://example.org/x","serial":"01"}`, 400, "exactly one"},
		{"revoke_bad_id", "POST", server.PathAdminRevocations, `{"spiffe_id":"spiffe://other/x"}`, 400, "trust domain"},
		{"revoke_server", "POST", server.PathAdminRevocations, `{"spiffe_id":"spiffe://example.org/moatless/server"}`, 400, "own ID"},
		{"revoke_bad_serial", "POST", server.PathAdminRevocations, `{"serial":"xyz"}`, 400, "serial"},
		{"revoke_unknown_id", "POST", server.PathAdminRevocations, `{"spiffe_id":"spiffe://example.org/nobody"}`, 404, "no registration entry, node or SVID has this SPIFFE ID"},
		{"revoke_unknown_serial", "POST", server.PathAdminRevocations, `{"serial":"abc123"}`, 404, "not issued by this server"},
		{"revoke_long_reason", "POST", server.PathAdminRevocations, `{"spiffe_id":"spiffe://example.org/x","reason":"` + strings.Repeat("r", 600) + `"}`, 400, "reason"},
		{"unrevoke_missing_param", "DELETE", server.PathAdminRevocations, "", 400, "spiffe_id"},
		{"unrevoke_not_revoked", "DELETE", server.PathAdminRevocations + "?spiffe_id=spiffe://example.org/x", "", 404, "not revoked"},
		{"admin_cert_not_admin", "POST", server.PathAdminCerts, `{"spiffe_id":"spiffe://example.org/me","csr":"AAAA"}`, 400, "admin IDs"},
		{"admin_cert_no_csr", "POST", server.PathAdminCerts, `{"spiffe_id":"spiffe://example.org/moatless/admin"}`, 400, "csr"},
		{"admin_cert_bad_csr", "POST", server.PathAdminCerts, `{"spiffe_id":"spiffe://example.org/moatless/admin","csr":"AAAA"}`, 400, "csr"},
		{"admin_cert_csr_not_base64", "POST", server.PathAdminCerts, `{"spiffe_id":"spiffe://example.org/moatless/admin","csr":"!!"}`, 400, `field "csr"`},
		{"admin_cert_ttl", "POST", server.PathAdminCerts, `{"spiffe_id":"spiffe://example.org/moatless/admin","csr":"AAAA","ttl":"1s"}`, 400, "ttl"},
		{"audit_bad_limit", "GET", server.PathAdminAudit + "?limit=0", "", 400, "limit"},
		{"audit_bad_before", "GET", server.PathAdminAudit + "?before=x", "", 400, "before"},
		{"rotate_with_param", "POST", server.PathAdminCARotate + "?now=1", "", 400, "now"},
		{"unknown_endpoint", "GET", "/v1/admin/nope", "", 404, "no such admin endpoint"},
		{"nodes_with_param", "GET", server.PathAdminNodes + "?all=1", "", 400, "all"},
		{"bundle_with_param", "GET", server.PathAdminBundle + "?format=pem", "", 400, "format"},
		{"ca_with_param", "GET", server.PathAdminCA + "?x=1", "", 400, "takes none"},
		{"revocations_list_with_param", "GET", server.PathAdminRevocations + "?x=1", "", 400, "takes none"},
		{"entry_get_with_param", "GET", server.PathAdminEntries + "/x?y=1", "", 400, "takes none"},
		{"audit_limit_too_big", "GET", server.PathAdminAudit + "?limit=5000", "", 400, "limit"},
		{"audit_param_twice", "GET", server.PathAdminAudit + "?limit=1&limit=2", "", 400, "more than once"},
	}
	before := counts(t, e)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, "https://"+e.addr+tc.path, strings.NewReader(tc.body))
			req.Header.Set("Authorization", "Bearer "+e.token)
			if tc.name == "entry_form_body" {
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			}
			resp, err := e.client(nil).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var eb struct {
				Errors []string `json:"errors"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&eb); err != nil {
				t.Fatalf("error body is not {\"errors\": [...]}: %v", err)
			}
			if resp.StatusCode != tc.status || len(eb.Errors) == 0 || !strings.Contains(eb.Errors[0], tc.want) {
				t.Fatalf("got %d %q, want %d containing %q", resp.StatusCode, eb.Errors, tc.status, tc.want)
			}
		})
	}
	if after := counts(t, e); !mapsEqual(before, after) {
		t.Fatalf("bad input changed the store: %v -> %v", before, after)
	}
	// Every refused call was audited.
	recs, err := audit.List(context.Background(), e.srv.Store(), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	failures := 0
	for _, r := range recs {
		if r.Kind == audit.KindAdminCall && r.Outcome == audit.Failure {
			failures++
			if strings.Contains(r.Details["error"], e.token) {
				t.Fatal("audit record holds the admin token")
			}
		}
	}
	if failures != len(tests) {
		t.Fatalf("%d refused calls audited, want %d", failures, len(tests))
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestAdminAuth: no anonymous admin access; a wrong token is refused even
// with a good certificate; admin client certificates work only for admin
// IDs and only when issued as admin certificates.
func TestAdminAuth(t *testing.T) {
	e := start(t, "")
	// An admin certificate, the way "moatless ca issue-admin" gets one.
	key := newKey(t)
	var ac server.AdminCertResponse
	e.admin("POST", server.PathAdminCerts, server.AdminCertRequest{SPIFFEID: "spiffe://example.org/moatless/admin", CSR: csr(t, key)}, &ac)
	adminCert := &tls.Certificate{Certificate: ac.SVID.CertChain, PrivateKey: key}
	if !strings.Contains(ac.BundlePEM, "BEGIN CERTIFICATE") {
		t.Fatal("no bundle in the admin cert response")
	}
	n := e.attest("spiffe://example.org/agent/n")

	tests := []struct {
		name   string
		cert   *tls.Certificate
		token  string
		header string
		status int
	}{
		{"anonymous", nil, "", "", 401},
		{"wrong_token", nil, "mla_wrong", "", 401},
		{"token_prefix", nil, e.token[:len(e.token)-1], "", 401},
		{"basic_scheme", nil, "", "Basic YWRtaW46YWRtaW4=", 401},
		{"empty_bearer", nil, "", "Bearer ", 401},
		{"good_token", nil, e.token, "", 200},
		{"admin_cert", adminCert, "", "", 200},
		{"admin_cert_wrong_token", adminCert, "mla_wrong", "", 401},
		{"node_cert", n.cert(), "", "", 403},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "https://"+e.addr+server.PathAdminEntries, nil)
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			if tc.header != "" {
				req.Header.Set("Authorization", tc.header)
			}
			resp, err := e.client(tc.cert).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("got %d, want %d", resp.StatusCode, tc.status)
			}
		})
	}
	// Health and metrics are anonymous; nothing else is.
	for path, want := range map[string]int{"/livez": 200, "/healthz": 200, "/readyz?verbose": 200, "/metrics": 200, server.PathAdminCA: 401, "/v1/admin/": 401} {
		st, body := e.do(e.client(nil), "GET", path, "", nil)
		if st != want {
			t.Errorf("GET %s: %d %s, want %d", path, st, body, want)
		}
	}
	st, body := e.do(e.client(nil), "GET", "/readyz?verbose", "", nil)
	if st != 200 || !strings.Contains(string(body), "[+]store ok") {
		t.Errorf("readyz verbose: %s", body)
	}
	_, body = e.do(e.client(nil), "GET", "/metrics", "", nil)
	for _, m := range []string{"moatless_svids_issued_total", "moatless_admin_requests_total", "moatless_attestations_total", "moatless_registration_entries"} {
		if !strings.Contains(string(body), m) {
			t.Errorf("metrics lack %s", m)
		}
	}
	// The admin token file is private and the store holds only its hash.
	fi, err := os.Stat(filepath.Join(e.dir, server.AdminTokenFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin-token mode: %v %v", fi.Mode(), err)
	}
	var v string
	e.srv.Store().SQL().QueryRow("SELECT value FROM meta WHERE key = 'admin_token_sha256'").Scan(&v)
	if v == "" || strings.Contains(v, e.token) {
		t.Fatal("admin token hash missing or token stored in clear")
	}
	// Revoking the admin certificate cuts it off.
	e.admin("POST", server.PathAdminRevocations, server.RevokeRequest{Serial: ac.SVID.Serial}, nil)
	resp, err := e.client(adminCert).Get("https://" + e.addr + server.PathAdminEntries)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("revoked admin cert: %d", resp.StatusCode)
	}
}

// TestServerCertificate: the server's certificate chains to bundle.pem,
// carries the server's SPIFFE ID and the loopback names, and a client
// certificate from a foreign CA fails the handshake.
func TestServerCertificate(t *testing.T) {
	e := start(t, "")
	conn, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: e.pool, ServerName: "localhost"})
	if err != nil {
		t.Fatalf("verify server as localhost: %v", err)
	}
	leaf := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://example.org/moatless/server" {
		t.Fatalf("server URI SAN: %v", leaf.URIs)
	}
	foreign := start(t, "")
	fn := foreign.attest("spiffe://example.org/agent/x") // same trust domain name, another CA
	resp, err := e.client(fn.cert()).Get("https://" + e.addr + "/livez")
	if err == nil {
		resp.Body.Close()
		t.Fatal("a certificate from another CA passed the handshake")
	}
	block, _ := pem.Decode([]byte(readFile(t, filepath.Join(e.dir, server.BundleFile))))
	if _, err := x509.ParseCertificate(block.Bytes); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestReplicasSharePostgres: two servers on one PostgreSQL store and one
// KEK file serve the same CA; a change made through one reaches a watch
// stream on the other. The poll interval is a minute, longer than the
// test's deadlines: changes can only arrive through LISTEN/NOTIFY.
func TestReplicasSharePostgres(t *testing.T) {
	dsn := storetest.PostgresDSN(t)
	kek := filepath.Join(t.TempDir(), "kek")
	opt := func(c *config.Server) {
		c.Store = dsn
		c.KEKFile = kek
		c.PollInterval = wire.Duration(time.Minute)
	}
	a := start(t, "", opt)
	bDir := t.TempDir()
	// Replica b reads the admin token hash from the store; it writes no
	// token file of its own, so give it a's.
	os.WriteFile(filepath.Join(bDir, server.AdminTokenFile), []byte(a.token), 0o600)
	b := start(t, bDir, opt)
	if readFile(t, filepath.Join(a.dir, server.BundleFile)) != readFile(t, filepath.Join(b.dir, server.BundleFile)) {
		t.Fatal("replicas serve different trust bundles")
	}
	n := b.attest("spiffe://example.org/agent/pg")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := b.watch(ctx, n)
	next(t, ch)
	var ent wire.Entry
	a.admin("POST", server.PathAdminEntries, entryReq(n.id, "spiffe://example.org/pg/w", "unix:uid:5"), &ent)
	u := next(t, ch)
	if u.Entries == nil || len(*u.Entries) != 1 || (*u.Entries)[0].ID != ent.ID {
		t.Fatalf("update on replica b: %+v", u)
	}
	// A CA rotation through replica a reaches replica b's agents: b hears
	// of the bundle change, adopts the shared CA state and pushes it.
	var rot server.CAStatus
	a.admin("POST", server.PathAdminCARotate, nil, &rot)
	for {
		u := next(t, ch)
		if u.Bundle != nil && len(u.Bundle.X509Authorities) == 2 {
			break
		}
	}
	if readFile(t, filepath.Join(a.dir, server.BundleFile)) != readFile(t, filepath.Join(b.dir, server.BundleFile)) {
		t.Fatal("replicas' bundle.pem differ after the rotation")
	}
	if _, err := audit.Verify(ctx, a.srv.Store(), audit.VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestServerCertRenewal: past half its life the server certificate is
// replaced by a new one (new key, new serial) without a restart, and the
// new one still verifies against bundle.pem.
func TestServerCertRenewal(t *testing.T) {
	e := start(t, "", func(c *config.Server) { c.PollInterval = wire.Duration(20 * time.Millisecond) })
	serial := func() string {
		conn, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: e.pool, ServerName: "127.0.0.1", Time: e.clock.Now})
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	first := serial()
	e.clock.Add(13 * time.Hour) // past half of the 24h server certificate
	deadline := time.Now().Add(10 * time.Second)
	for serial() == first {
		if time.Now().After(deadline) {
			t.Fatal("server certificate not renewed past half life")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

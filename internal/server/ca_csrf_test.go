package server_test

import (
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/ca"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/token"
)

// An admin client certificate is an ambient credential, as a cookie is:
// a browser it was imported into presents it to whatever page makes the
// request. A page of another site that posts a CA step (a text/plain
// POST needs no preflight, and the body is parsed as JSON whatever its
// Content-Type) must not run it as the admin: the request says where it
// comes from (Sec-Fetch-Site, Origin) and is refused. The CLI and other
// programs send neither.
func TestAdminCertRefusedOnCrossSiteRequests(t *testing.T) {
	e := start(t, "")
	key := newKey(t)
	var ac server.AdminCertResponse
	e.admin("POST", server.PathAdminCerts, server.AdminCertRequest{SPIFFEID: "spiffe://example.org/moatless/admin", CSR: csr(t, key)}, &ac)
	adminCert := &tls.Certificate{Certificate: ac.SVID.CertChain, PrivateKey: key}
	prepared := func() bool {
		var st server.CAStatus
		e.admin("GET", server.PathAdminCA, nil, &st)
		for _, a := range st.Authorities {
			if a.State == ca.StatePrepared {
				return true
			}
		}
		return false
	}
	tests := []struct {
		name    string
		headers map[string]string
		status  int
	}{
		{"cross_site", map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, 403},
		{"cross_site_no_origin", map[string]string{"Sec-Fetch-Site": "cross-site"}, 403},
		{"same_site", map[string]string{"Sec-Fetch-Site": "same-site", "Origin": "https://other." + strings.Split(e.addr, ":")[0]}, 403},
		{"foreign_origin_only", map[string]string{"Origin": "https://evil.example"}, 403},
		{"null_origin", map[string]string{"Origin": "null"}, 403},
		{"program", nil, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", "https://"+e.addr+server.PathAdminCAPrepare, strings.NewReader(`{"kind":"x509"}`))
			req.Header.Set("Content-Type", "text/plain")
			for k, v := range tc.headers {
				req.Header.Set(k, v)
			}
			resp, err := e.client(adminCert).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("got %d, want %d", resp.StatusCode, tc.status)
			}
			if got := prepared(); got != (tc.status == 200) {
				t.Fatalf("an authority prepared: %v", got)
			}
		})
	}
}

// The secrets API takes an admin certificate as the admin credential too
// (when no token is presented): the same refusal of a request a page made.
func TestSecretsAdminCertRefusedOnCrossSiteRequests(t *testing.T) {
	e := start(t, "")
	key := newKey(t)
	var ac server.AdminCertResponse
	e.admin("POST", server.PathAdminCerts, server.AdminCertRequest{SPIFFEID: "spiffe://example.org/moatless/admin", CSR: csr(t, key)}, &ac)
	adminCert := &tls.Certificate{Certificate: ac.SVID.CertChain, PrivateKey: key}
	pol := func(name string) string {
		return `{"files":[{"name":"` + name + `.yaml","content":"name: ` + name + `\npaths:\n  - path: secret/data/x/*\n    capabilities: [read]\n"}]}`
	}
	for _, tc := range []struct {
		name    string
		headers map[string]string
		ok      bool
	}{
		{"cross_site", map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, false},
		{"foreign_origin_only", map[string]string{"Origin": "https://evil.example"}, false},
		{"program", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", "https://"+e.addr+"/v1/sys/policies/apply", strings.NewReader(pol(tc.name)))
			req.Header.Set("Content-Type", "text/plain")
			for k, v := range tc.headers {
				req.Header.Set(k, v)
			}
			resp, err := e.client(adminCert).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if got := resp.StatusCode == 200; got != tc.ok {
				t.Fatalf("got %d, want success %v", resp.StatusCode, tc.ok)
			}
		})
	}
}

// A workload's certificate is as ambient in a browser as an admin's: a
// page of another site that posts a form to the token endpoint, or to the
// secrets API, must not get a token minted (tls_client_auth), a secret
// written, or a secrets token issued (cert login) as the workload. The
// same requests from a program succeed.
func TestWorkloadCertRefusedOnCrossSiteRequests(t *testing.T) {
	e := start(t, "")
	const id = "spiffe://example.org/ns/prod/sa/orders"
	e.admin("POST", "/v1/admin/oauth/clients", token.ClientRequest{Name: "orders", ClientSpec: token.ClientSpec{
		GrantTypes: []string{"client_credentials"}, SPIFFEID: id, Audiences: []string{"payments"}}}, nil)
	pol := "name: orders\nsubjects:\n  spiffe_ids: [\"" + id + "\"]\npaths:\n  - path: secret/data/orders/*\n    capabilities: [create, update, read]\n"
	if st, out := e.vreq(e.client(nil), "POST", "/v1/sys/policies/apply", e.token, map[string]any{"files": []map[string]string{{"name": "p.yaml", "content": pol}}}); st != 200 {
		t.Fatalf("apply: %d %v", st, out)
	}
	n := e.attest(id)
	written := func(name string) bool {
		st, _ := e.vreq(e.client(nil), "GET", "/v1/secret/data/orders/"+name, e.token, nil)
		return st == 200
	}
	pages := []struct {
		name    string
		headers map[string]string
	}{
		{"cross_site_form", map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}},
		{"cross_site_no_origin", map[string]string{"Sec-Fetch-Site": "cross-site"}},
		{"same_site", map[string]string{"Sec-Fetch-Site": "same-site"}},
		{"foreign_origin_only", map[string]string{"Origin": "https://evil.example"}},
		{"null_origin", map[string]string{"Origin": "null"}},
		{"program", nil},
	}
	for _, tc := range pages {
		t.Run(tc.name, func(t *testing.T) {
			program := tc.headers == nil
			post := func(path, ctype, body string) (int, string) {
				req, _ := http.NewRequest("POST", "https://"+e.addr+path, strings.NewReader(body))
				req.Header.Set("Content-Type", ctype)
				for k, v := range tc.headers {
					req.Header.Set(k, v)
				}
				resp, err := n.http.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(b)
			}
			st, body := post("/oauth2/token", "application/x-www-form-urlencoded", "grant_type=client_credentials")
			if got := st == 200 && strings.Contains(body, "access_token"); got != program {
				t.Errorf("token endpoint: %d %s; want a token %v", st, body, program)
			}
			st, body = post("/v1/secret/data/orders/"+tc.name, "text/plain", `{"data":{"dsn":"attacker"}}`)
			if got := written(tc.name); got != program {
				t.Errorf("secret write: %d %s; written %v, want %v", st, body, got, program)
			}
			st, body = post("/v1/auth/cert/login", "text/plain", "")
			if got := st == 200 && strings.Contains(body, "client_token"); got != program {
				t.Errorf("cert login: %d %s; want a token %v", st, body, program)
			}
		})
	}
}

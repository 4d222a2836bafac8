package server_test

import (
	"crypto/tls"
	"net/http"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/ca"
	"github.com/moatless/moatless/internal/server"
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

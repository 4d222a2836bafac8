package dataplane

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/testpki"
)

// A join-mode sidecar fetches keys from servers whose certificates chain to
// the mesh CA only when they carry the moatless server's SPIFFE ID: every
// workload SVID chains to the same roots, and a workload must not be able
// to serve forged keys by taking over a name.
func TestJWKSClientTrustsOnlyTheServerFromTheMesh(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	const serverID = "spiffe://example.org/moatless/server"
	mesh := func() ([]*x509.Certificate, string) { return []*x509.Certificate{ca.Cert}, serverID }
	noMesh := func() ([]*x509.Certificate, string) { return nil, "" }
	tests := []struct {
		name    string
		certID  string
		trust   func() ([]*x509.Certificate, string)
		wantErr string
	}{
		{"server_id_from_mesh_trusted", serverID, mesh, ""},
		{"workload_svid_with_the_name_refused", "spiffe://example.org/ns/prod/sa/evil", mesh, "not the moatless server's"},
		{"no_spiffe_id_refused", "", mesh, "not the moatless server's"},
		{"mesh_roots_unknown_outside_join_mode", serverID, noMesh, "unknown authority"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				io.WriteString(w, `{"keys": []}`)
			}))
			srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.ServerCert(t, tc.certID, "127.0.0.1")}}
			srv.StartTLS()
			defer srv.Close()
			resp, err := jwksClient(tc.trust).Get(srv.URL + "/jwks")
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("fetch: %v", err)
				}
				resp.Body.Close()
				return
			}
			if err == nil {
				resp.Body.Close()
				t.Fatalf("fetch succeeded, want an error containing %q", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %q, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

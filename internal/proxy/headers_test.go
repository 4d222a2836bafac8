package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/testpki"
)

// The app must be able to trust what the sidecar hands it: headers that
// RequestAuthentication writes are stripped from callers even when they
// send no token, and the path served is the normalized path policy
// matched.
func TestInboundServesWhatPolicySaw(t *testing.T) {
	docs := `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: prod}
spec:
  jwtRules:
  - issuer: https://issuer.example
    jwks: '{"keys": []}'
    outputClaimToHeaders: [{header: x-user, claim: sub}]
    outputPayloadToHeader: x-jwt-payload
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: public-but-not-admin, namespace: prod}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
`
	set := compileSet(t, docs)
	// However the policy arrives, the sidecar derives the same strip list
	// and normalization from it.
	forServerPaths(t, func(t *testing.T, sp serverPath) {
		for _, via := range []string{"set_authorizer", "config_authorizer"} {
			t.Run(via, func(t *testing.T) { testInboundServesWhatPolicySaw(t, set, via == "config_authorizer", sp) })
		}
	})
}

func testInboundServesWhatPolicySaw(t *testing.T, set *policy.Set, viaConfig bool, sp serverPath) {

	type seenReq struct{ user, payload, uri string }
	seen := make(chan seenReq, 8)
	l := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- seenReq{r.Header.Get("X-User"), r.Header.Get("X-Jwt-Payload"), r.RequestURI}
		io.WriteString(w, "ok")
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	ca := testpki.NewCA(t, "example.org")
	_, inL := startEngineSidecar(t, ca, set, l.Addr().String(), viaConfig, sp.edit)

	// Raw requests over mTLS, so the request target reaches the sidecar
	// exactly as written (an http.Client would clean some of it).
	cert := ca.SVID(t, frontendID, 0).TLSCertificate()
	raw := func(target string) (int, seenReq) {
		t.Helper()
		conn, err := tls.Dial("tcp", inL.Addr().String(), &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: ca.Pool(), InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: orders\r\nX-User: forged\r\nX-Jwt-Payload: forged\r\nConnection: close\r\n\r\n", target)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return resp.StatusCode, seenReq{}
		}
		return resp.StatusCode, <-seen
	}

	tests := []struct {
		name, target string
		wantCode     int
		wantURI      string
	}{
		{"normal_path_forwarded_as_is", "/orders/1?x=1", 200, "/orders/1?x=1"},
		{"dot_segments_forwarded_resolved", "/a/../orders/2", 200, "/orders/2"},
		{"escaped_unreserved_forwarded_decoded", "/%6frders/3?q", 200, "/orders/3?q"},
		{"traversal_to_denied_path_denied", "/orders/../admin", 403, ""},
		{"escaped_denied_path_denied", "/%61dmin", 403, ""},
		{"nul_in_path_is_400", "/orders/%00", 400, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, got := raw(tc.target)
			if code != tc.wantCode {
				t.Fatalf("status %d, want %d", code, tc.wantCode)
			}
			if code != 200 {
				return
			}
			if got.uri != tc.wantURI {
				t.Errorf("app was served %q, want %q", got.uri, tc.wantURI)
			}
			if got.user != "" || got.payload != "" {
				t.Errorf("forged output headers reached the app: x-user %q, x-jwt-payload %q", got.user, got.payload)
			}
		})
	}
}

package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/token"
	"github.com/moatless/moatless/internal/wire"
)

// tokenService runs our token service (SQLite store) on TLS with the
// mesh CA, verifying client certificates when given, and counts the
// token endpoint's requests.
type tokenService struct {
	svc       *token.Service
	srv       *httptest.Server
	exchanges atomic.Int64
}

func startTokenService(t *testing.T, ca *testpki.CA) *tokenService {
	t.Helper()
	ts := &tokenService{}
	srv := httptest.NewUnstartedServer(nil)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.ServerCert(t, "", "127.0.0.1")}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: ca.Pool()}
	svc, err := token.New(token.Config{Issuer: "https://" + srv.Listener.Addr().String(), Store: storetest.SQLite(t).OAuth(), KEK: bytes.Repeat([]byte{7}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	h := svc.Handler()
	srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/oauth2/token" {
			b, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
			r.Body = io.NopCloser(bytes.NewReader(b))
			if q, _ := url.ParseQuery(string(b)); q.Get("grant_type") == grantTokenExchange {
				ts.exchanges.Add(1)
			}
		}
		h.ServeHTTP(w, r)
	})
	srv.StartTLS()
	t.Cleanup(srv.Close)
	t.Cleanup(func() { svc.Close() })
	ts.svc, ts.srv = svc, srv
	return ts
}

func (ts *tokenService) clientToken(t *testing.T, id, secret string) string {
	t.Helper()
	req, _ := http.NewRequest("POST", ts.srv.URL+"/oauth2/token", strings.NewReader(url.Values{"grant_type": {"client_credentials"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(id, secret)
	resp, err := ts.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ans struct {
		AccessToken string `json:"access_token"`
		Error       string `json:"error_description"`
	}
	json.NewDecoder(resp.Body).Decode(&ans)
	if ans.AccessToken == "" {
		t.Fatalf("no token for %s: %d %s", id, resp.StatusCode, ans.Error)
	}
	return ans.AccessToken
}

func payloadOf(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWS: %d segments", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestGatewayTokenExchange: on a route with token_exchange_audience the
// upstream receives, instead of the caller's token, one our token service
// issued for that audience in exchange (the gateway authenticated by its
// SVID); a second request with the same token reuses the exchanged one;
// a token the service will not exchange is a 403, an unreachable service
// a 503, and the caller's token never reaches the upstream.
func TestGatewayTokenExchange(t *testing.T) {
	ctx := context.Background()
	ca := testpki.NewCA(t, td)
	ts := startTokenService(t, ca)
	edge, err := ts.svc.CreateClient(ctx, token.ClientRequest{Name: "edge", ClientSpec: token.ClientSpec{
		AuthMethod: token.AuthTLSClient, SPIFFEID: gatewayID,
		GrantTypes: []string{token.GrantTokenExchange}, ExchangeAudiences: []string{"orders"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	client := func(name, aud string) string {
		c, err := ts.svc.CreateClient(ctx, token.ClientRequest{Name: name, ClientSpec: token.ClientSpec{
			AuthMethod: token.AuthSecretBasic, GrantTypes: []string{token.GrantClientCredentials}, Audiences: []string{aud},
		}})
		if err != nil {
			t.Fatal(err)
		}
		return ts.clientToken(t, c.ID, c.Secret)
	}
	forEdge, forEdge2, notForEdge := client("checkout", edge.ID), client("billing", edge.ID), client("stranger", "elsewhere")

	resp, err := ts.srv.Client().Get(ts.srv.URL + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	jwks, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	var pemCA []byte
	for _, c := range ca.Bundle().X509Authorities() {
		pemCA = append(pemCA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	os.WriteFile(caFile, pemCA, 0o600)

	v := authn.NewVerifier(authn.Options{Logger: discard()})
	t.Cleanup(func() { v.Close() })
	up := startUpstream(t, ca, ordersID, echoApp(t))
	tg := startGatewayWith(t, ca, up, func(c *config.Gateway) {
		c.TokenExchange = &config.GatewayTokenExchange{TokenURL: ts.srv.URL + "/oauth2/token", ClientID: edge.ID, CAFile: caFile}
		c.Routes[0].TokenExchangeAudience = "orders"
	}, func(o *Options) { o.Verifier = v })
	issuer := ts.srv.URL
	tg.g.SetAuthorizer(2, compile(t, `
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: tokens, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  jwtRules:
  - {issuer: "`+issuer+`", audiences: ["`+edge.ID+`", elsewhere], jwks: '`+strings.TrimSpace(string(jwks))+`'}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ["`+issuer+`/*"]}}]
`))
	call := func(tok string) (int, seen, []byte) {
		resp, body := tg.do(t, "GET", "/orders/1", nil, map[string]string{"Authorization": "Bearer " + tok})
		var s seen
		if resp.StatusCode == 200 {
			s = decodeSeen(t, body)
		}
		return resp.StatusCode, s, body
	}

	code, s, body := call(forEdge)
	if code != 200 {
		t.Fatalf("status %d: %s", code, body)
	}
	got := strings.TrimPrefix(strings.Join(s.Headers["Authorization"], ","), "Bearer ")
	if got == "" || got == forEdge || strings.Contains(string(body), forEdge) {
		t.Fatalf("the upstream got the caller's token or none: %q", got)
	}
	cl, orig := payloadOf(t, got), payloadOf(t, forEdge)
	if aud, _ := cl["aud"].(string); aud != "orders" {
		if auds, _ := cl["aud"].([]any); len(auds) != 1 || auds[0] != "orders" {
			t.Errorf("exchanged token's aud %v, want orders", cl["aud"])
		}
	}
	if cl["sub"] != orig["sub"] {
		t.Errorf("exchanged token's sub %v, want the caller's %v", cl["sub"], orig["sub"])
	}
	if n := ts.exchanges.Load(); n != 1 {
		t.Fatalf("%d exchanges for one request", n)
	}
	if code, s, _ = call(forEdge); code != 200 || ts.exchanges.Load() != 1 || strings.TrimPrefix(s.Headers["Authorization"][0], "Bearer ") != got {
		t.Fatalf("second request: status %d, %d exchanges (want the cached token)", code, ts.exchanges.Load())
	}

	// The exchanged token is revoked (its leak reported by the upstream,
	// say): the gateway no longer forwards it from its cache, it
	// exchanges the caller's token again.
	jti, _ := cl["jti"].(string)
	if jti == "" {
		t.Fatal("the exchanged token has no jti")
	}
	tg.g.SetRevocations(&wire.Revocations{TokenIDs: []wire.RevokedTokenID{{JTI: jti, ExpiresAt: time.Now().Add(time.Hour)}}})
	code, s, body = call(forEdge)
	if code != 200 || ts.exchanges.Load() != 2 {
		t.Fatalf("after the exchanged token's revocation: status %d, %d exchanges (want a new one): %s", code, ts.exchanges.Load(), body)
	}
	if again := strings.TrimPrefix(s.Headers["Authorization"][0], "Bearer "); again == got {
		t.Fatal("the gateway forwarded a revoked exchanged token from its cache")
	}

	// The service refuses: the token was not issued for the gateway.
	if code, _, body = call(notForEdge); code != 403 || strings.Contains(string(body), notForEdge) {
		t.Fatalf("unexchangeable token: status %d: %s", code, body)
	}
	// The service is down: fail closed, for a token not in the cache.
	ts.srv.Close()
	if code, _, body = call(forEdge2); code != 503 {
		t.Fatalf("token service down: status %d: %s", code, body)
	}
	if strings.Contains(tg.logs.String(), forEdge) || strings.Contains(tg.logs.String(), got) {
		t.Error("a token reached the gateway's log")
	}
}

package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/moatless/moatless/internal/authn"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/gateway/waf"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/proxy"
	"github.com/moatless/moatless/internal/testpki"
)

const (
	td         = "moatless.local"
	gatewayID  = "spiffe://moatless.local/ns/istio-system/sa/gateway"
	ordersID   = "spiffe://moatless.local/ns/prod/sa/orders"
	paymentsID = "spiffe://moatless.local/ns/prod/sa/payments"
)

// gatewayPolicy lets anyone reach /orders and /public, refuses DELETE,
// and needs a token for /private.
const gatewayPolicy = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: ALLOW
  rules:
  - to: [{operation: {paths: ["/orders", "/orders/*", "/public/*", "/ws", "/slow", "/big"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - to: [{operation: {methods: ["DELETE"]}}]
`

// upstreamPolicy lets only the gateway call the app.
const upstreamPolicy = `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: prod}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: orders, namespace: prod}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["moatless.local/ns/istio-system/sa/gateway"]}}]
`

// The WAF engines the package's tests compiled, by waf.Config.Key: a
// gateway started with a WAF configuration an earlier test used gets
// that test's engine (an Engine is immutable and safe for concurrent
// use), as a reload keeps an unchanged one. Compiling the Core Rule Set
// takes about 5 s of CPU under -race, and a dozen gateways in these
// tests share three configurations. A test that needs an engine compiled
// afresh sets newWAF to waf.New for its duration.
var (
	wafCacheMu sync.Mutex
	wafCache   = map[string]*waf.Engine{}
)

func init() {
	newWAF = func(c waf.Config) (*waf.Engine, error) {
		wafCacheMu.Lock()
		defer wafCacheMu.Unlock()
		if e := wafCache[c.Key()]; e != nil {
			return e, nil
		}
		e, err := waf.New(c)
		if err == nil {
			wafCache[c.Key()] = e
		}
		return e, err
	}
}

func compile(t testing.TB, yaml string) *policy.Set {
	t.Helper()
	docs, err := policy.Parse(strings.NewReader(yaml))
	if err != nil {
		t.Fatal(err)
	}
	set, err := policy.Compile(docs, policy.Options{RootNamespace: "istio-system", PathNormalization: policy.NormalizeMergeSlashes})
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// staticIdentity is a proxy.Identity from a test CA.
type staticIdentity struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

func (s *staticIdentity) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }
func (s *staticIdentity) GetX509BundleForTrustDomain(d spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if d != s.bundle.TrustDomain() {
		return nil, errors.New("unknown trust domain")
	}
	return s.bundle, nil
}

func identity(ca *testpki.CA, t testing.TB, id string) *staticIdentity {
	return &staticIdentity{svid: ca.SVID(t, id, time.Hour).X509SVID(), bundle: ca.Bundle()}
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func listen(t testing.TB) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// seen is what the echo app reports about a request.
type seen struct {
	Method  string              `json:"method"`
	Path    string              `json:"path"`
	Query   string              `json:"query"`
	Headers map[string][]string `json:"headers"`
	Body    string              `json:"body"`
	// Trailers are the trailer fields the app received, if any.
	Trailers map[string][]string `json:"trailers,omitempty"`
}

// echoApp answers with what it saw; /slow waits for the client to go
// away; /ws is a WebSocket-style echo after a 101.
func echoApp(t testing.TB) string {
	t.Helper()
	l := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" && r.Header.Get("Upgrade") != "" {
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			brw.Flush()
			io.Copy(conn, brw)
			return
		}
		if r.URL.Path == "/slow" {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
			return
		}
		if code, ok := strings.CutPrefix(r.URL.Path, "/orders/status/"); ok {
			// An answer of any status, with a body where it may have one.
			n, _ := strconv.Atoi(code)
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Etag", `"v1"`)
			w.WriteHeader(n)
			io.WriteString(w, "status "+code)
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Server", "nginx/1.2.3")
		w.Header().Set("X-Powered-By", "PHP/5")
		w.Header().Set("Content-Type", "application/json")
		var trailers map[string][]string
		for k, v := range r.Trailer {
			if len(v) > 0 {
				if trailers == nil {
					trailers = map[string][]string{}
				}
				trailers[k] = v
			}
		}
		json.NewEncoder(w).Encode(seen{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Headers: r.Header, Body: string(body), Trailers: trailers})
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// startUpstream runs a real sidecar (identity id) in front of app.
func startUpstream(t testing.TB, ca *testpki.CA, id, app string) string {
	t.Helper()
	_, addr := startUpstreamSidecar(t, identity(ca, t, id), app)
	return addr
}

// startUpstreamSidecar runs a real sidecar with identity id in front of
// app until the test ends, and returns it and its inbound address.
func startUpstreamSidecar(t testing.TB, id proxy.Identity, app string) (*proxy.Sidecar, string) {
	t.Helper()
	l := listen(t)
	s, err := proxy.New(proxy.Config{
		Identity: id, Namespace: "prod", Labels: map[string]string{"app": "orders"},
		Inbound:    []proxy.Inbound{{Listener: l, App: app}},
		Authorizer: compile(t, upstreamPolicy), Logger: discard(), KeepStartupPages: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.Serve(context.Background()); close(done) }()
	t.Cleanup(func() { s.Close(); <-done })
	return s, l.Addr().String()
}

// testGateway is a gateway in front of an upstream sidecar and its echo
// app, with a client that trusts its certificate.
type testGateway struct {
	g        *Gateway
	ca       *testpki.CA
	addr     string
	client   *http.Client
	dir      string
	upstream string
	logs     *syncBuffer
	access   *syncBuffer
	// stop cancels Serve's context (a graceful shutdown, as on SIGTERM);
	// done is closed when Serve has returned, serveErr then set.
	stop     func()
	done     chan struct{}
	serveErr error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// baseConfig is a valid config with one route to upstream.
func baseConfig(dir, upstream string) config.Gateway {
	c := config.DefaultGateway()
	c.Listen = "127.0.0.1:0"
	c.TLS = config.GatewayTLS{Cert: filepath.Join(dir, "gw.pem"), Key: filepath.Join(dir, "gw-key.pem")}
	c.Identity = config.SidecarIdentity{Files: &config.SidecarFiles{Cert: "x", Key: "x", Bundle: "x"}}
	c.Routes = []config.GatewayRoute{
		{Name: "orders", PathPrefix: "/", Upstreams: []string{upstream}, SPIFFEID: ordersID},
	}
	c.Admin = "off"
	return c
}

func writeServerCert(t testing.TB, ca *testpki.CA, dir string) {
	t.Helper()
	c := ca.ServerCert(t, "", "localhost", "127.0.0.1", "api.example.com")
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "gw.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600)
	os.WriteFile(filepath.Join(dir, "gw-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
}

// startGateway runs a gateway with cfg (edited by edit, if given) and the
// test gateway policy.
func startGateway(t testing.TB, edit func(c *config.Gateway)) *testGateway {
	t.Helper()
	ca := testpki.NewCA(t, td)
	app := echoApp(t)
	up := startUpstream(t, ca, ordersID, app)
	return startGatewayWith(t, ca, up, edit)
}

// startGatewayWith is startGateway in front of the upstream sidecar up;
// opts, when given, edit the gateway's Options before New.
func startGatewayWith(t testing.TB, ca *testpki.CA, up string, edit func(c *config.Gateway), opts ...func(o *Options)) *testGateway {
	t.Helper()
	dir := t.TempDir()
	writeServerCert(t, ca, dir)
	cfg := baseConfig(dir, up)
	// The package's tests run on the HTTP/1.1 fast path (the default),
	// with a client that speaks HTTP/1.1 only so that they reach it;
	// MOATLESS_GATEWAY_HTTP1_FAST=0 runs them on net/http's server alone,
	// with a client that speaks HTTP/2 where ALPN offers it ("make test"
	// runs the package both ways).
	cfg.DisableHTTP1FastPath = os.Getenv("MOATLESS_GATEWAY_HTTP1_FAST") == "0"
	if edit != nil {
		edit(&cfg)
	}
	cfg.FillDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	tg := &testGateway{ca: ca, dir: dir, upstream: up, logs: &syncBuffer{}, access: &syncBuffer{}}
	l := listen(t)
	o := Options{
		Config: cfg, Identity: identity(ca, t, gatewayID), Listener: l,
		Logger:    slog.New(slog.NewJSONHandler(tg.logs, nil)),
		AccessLog: tg.access,
	}
	for _, f := range opts {
		f(&o)
	}
	g, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	g.SetAuthorizer(1, compile(t, gatewayPolicy))
	done := make(chan struct{})
	ctx, stop := context.WithCancel(context.Background())
	go func() { tg.serveErr = g.Serve(ctx); close(done) }()
	tg.stop, tg.done = stop, done
	t.Cleanup(func() {
		stop()
		g.Close()
		<-done
		if t.Failed() {
			t.Logf("gateway logs:\n%s", tg.logs.String())
		}
	})
	tg.g = g
	tg.addr = l.Addr().String()
	tg.client = &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"},
		ForceAttemptHTTP2: true,
	}, Timeout: 10 * time.Second}
	if !cfg.DisableHTTP1FastPath {
		tr := tg.client.Transport.(*http.Transport)
		tr.ForceAttemptHTTP2 = false
		tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	}
	t.Cleanup(tg.client.CloseIdleConnections)
	return tg
}

func (tg *testGateway) url(path string) string { return "https://" + tg.addr + path }

// do sends a request and returns the response with its body read.
func (tg *testGateway) do(t testing.TB, method, path string, body io.Reader, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, tg.url(path), body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		if strings.EqualFold(k, "Host") {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := tg.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, b
}

// raw sends bytes on a fresh TLS connection (HTTP/1.1) and returns what
// came back until the server closed or 3s passed.
func (tg *testGateway) raw(t testing.TB, req string) string {
	t.Helper()
	c, err := tls.Dial("tcp", tg.addr, &tls.Config{RootCAs: tg.ca.Pool(), ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	io.WriteString(c, req)
	b, _ := io.ReadAll(c)
	return string(b)
}

// get sends "GET target" with Host host on a fresh connection (closed
// after the answer) and fails the test unless the answer starts with want
// ("HTTP/1.1 400"); it returns the whole answer.
func (tg *testGateway) get(t testing.TB, host, target, want string) string {
	t.Helper()
	got := tg.raw(t, "GET "+target+" HTTP/1.1\r\nHost: "+host+"\r\nConnection: close\r\n\r\n")
	if !strings.HasPrefix(got, want) {
		t.Fatalf("GET %s (Host %s): answer %q, want %q...", target, host, firstLine(got), want)
	}
	return got
}

func decodeSeen(t testing.TB, b []byte) seen {
	t.Helper()
	var s seen
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("app answer %q: %v", b, err)
	}
	return s
}

// hs256Issuer is the shared-secret issuer of startHS256Gateway.
const hs256Issuer = "https://legacy.example"

// signHS256 is a compact HS256 JWT with claims, signed with key.
func signHS256(t testing.TB, key []byte, claims map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(claims)
	obj, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// startHS256Gateway is startGatewayWith (opts applied) verifying request
// tokens of a shared-secret HS256 issuer, which a RequestAuthentication
// beside gatewayPolicy names. sign makes such a token from claims (iss
// and an exp an hour away are added unless given; a claim given as nil is
// left out).
func startHS256Gateway(t *testing.T, opts ...func(o *Options)) (tg *testGateway, sign func(claims map[string]any) string) {
	t.Helper()
	const issuer = hs256Issuer
	secret := []byte("0123456789abcdef0123456789abcdef-legacy")
	v := authn.NewVerifier(authn.Options{SharedSecrets: []authn.SharedSecret{{Issuer: issuer, Secret: secret}}, Logger: discard()})
	t.Cleanup(func() { v.Close() })
	ca := testpki.NewCA(t, td)
	tg = startGatewayWith(t, ca, startUpstream(t, ca, ordersID, echoApp(t)), nil, append([]func(*Options){func(o *Options) { o.Verifier = v }}, opts...)...)
	tg.g.SetAuthorizer(2, compile(t, gatewayPolicy+`---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: legacy, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  jwtRules: [{issuer: "`+issuer+`"}]
`))
	return tg, func(claims map[string]any) string {
		all := map[string]any{"iss": issuer, "exp": time.Now().Add(time.Hour).Unix()}
		for k, v := range claims {
			if v == nil {
				delete(all, k)
			} else {
				all[k] = v
			}
		}
		return signHS256(t, secret, all)
	}
}

// hs256EdgePolicy is the edge policy of the HS256 token tests: tokens of
// issuer for audience orders, their sub written to x-user, and an ALLOW
// for the request principals issuer/principal ("*" for any subject).
func hs256EdgePolicy(issuer, principal string) string {
	return `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: legacy, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  jwtRules:
  - issuer: "` + issuer + `"
    audiences: [orders]
    outputClaimToHeaders: [{header: x-user, claim: sub}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ["` + issuer + `/` + principal + `"]}}]
`
}

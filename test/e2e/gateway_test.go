package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/gateway/ratelimit/redistest"
)

// gatewayPolicy lets anyone GET and POST /api/* through the gateway.
const gatewayPolicy = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: ["GET", "POST"], paths: ["/api/*"]}}]
`

// ordersFromGateway lets only the gateway call orders.
const ordersFromGateway = `
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
  - from: [{source: {principals: ["e2e.test/ns/istio-system/sa/gateway"]}}]
`

type gatewayProc struct {
	*proc
	addr, admin, cfgPath string
	client               *http.Client
}

// startGatewayMesh runs app ← orders' sidecar ← gateway, all processes
// on loopback, and returns the gateway; extra is appended to its config.
func startGatewayMesh(t *testing.T, extra string) (*gatewayProc, *sidecarPKI, string) {
	t.Helper()
	return startGatewayMeshApp(t, sidecarEchoApp(t), extra, true)
}

// startGatewayMeshApp is startGatewayMesh in front of the app at app,
// with the route's WAF on or off.
func startGatewayMeshApp(t *testing.T, app, extra string, waf bool) (*gatewayProc, *sidecarPKI, string) {
	t.Helper()
	k := newSidecarPKI(t)
	ordersFiles, _ := k.files("orders", "spiffe://"+scTD+"/ns/prod/sa/orders")
	pol := t.TempDir()
	os.WriteFile(filepath.Join(pol, "p.yaml"), []byte(ordersFromGateway), 0o600)
	inbound := freeAddr(t)
	startSidecarProc(t, "orders-sidecar", fmt.Sprintf("identity: {files: {cert: %s, key: %s, bundle: %s}}\nnamespace: prod\nlabels: {app: orders}\ninbound: [{listen: %q, app: %q}]\npolicy: {files: [%s]}\n",
		ordersFiles.Cert, ordersFiles.Key, ordersFiles.Bundle, inbound, app, pol), true)
	return startGatewayProcWAF(t, k, inbound, extra, waf), k, inbound
}

func startGatewayProc(t *testing.T, k *sidecarPKI, inbound, extra string) *gatewayProc {
	t.Helper()
	return startGatewayProcWAF(t, k, inbound, extra, true)
}

func startGatewayProcWAF(t *testing.T, k *sidecarPKI, inbound, extra string, waf bool) *gatewayProc {
	t.Helper()
	gwFiles, _ := k.files("gateway-"+filepath.Base(t.TempDir()), "spiffe://"+scTD+"/ns/istio-system/sa/gateway")
	dir := t.TempDir()
	c := k.ca.ServerCert(t, "", "localhost", "127.0.0.1")
	keyDER, _ := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	os.WriteFile(filepath.Join(dir, "tls.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600)
	os.WriteFile(filepath.Join(dir, "tls-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	os.MkdirAll(filepath.Join(dir, "pol"), 0o700)
	os.WriteFile(filepath.Join(dir, "pol", "edge.yaml"), []byte(gatewayPolicy), 0o600)
	g := &gatewayProc{addr: freeAddr(t), admin: freeAddr(t), cfgPath: filepath.Join(dir, "gateway.yaml")}
	cfg := fmt.Sprintf(`listen: %q
tls: {cert: %s, key: %s}
identity: {files: {cert: %s, key: %s, bundle: %s}}
admin: %q
reload_interval: 100ms
policy: {files: [%s]}
%s
routes:
  - {name: api, path_prefix: /api, upstreams: [%q], spiffe_id: "spiffe://%s/ns/prod/sa/orders", waf: {enabled: %t}, rate_limits: %s}
`, g.addr, filepath.Join(dir, "tls.pem"), filepath.Join(dir, "tls-key.pem"), gwFiles.Cert, gwFiles.Key, gwFiles.Bundle, g.admin, filepath.Join(dir, "pol"), extra, inbound, scTD, waf, limitRefs(extra))
	if err := os.WriteFile(g.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := run(t, nil, "", "gateway", "-config", g.cfgPath, "-check"); code != 0 {
		t.Fatalf("gateway -check: %d %s %s", code, out, errOut)
	}
	g.proc = start(t, "gateway", nil, "gateway", "-config", g.cfgPath)
	waitFor(t, 30*time.Second, "gateway ready", func() bool {
		if g.exited() {
			t.Fatalf("gateway exited:\n%s", g.out.String())
		}
		resp, err := http.Get("http://" + g.admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	g.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: k.ca.Pool(), ServerName: "localhost"}, ForceAttemptHTTP2: true}}
	t.Cleanup(g.client.CloseIdleConnections)
	return g
}

func limitRefs(extra string) string {
	if strings.Contains(extra, "rate_limits:") {
		return "[shared]"
	}
	return "[]"
}

func (g *gatewayProc) get(t *testing.T, path string) (int, http.Header, string) {
	t.Helper()
	resp, err := g.client.Get("https://" + g.addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func TestGatewayEndToEnd(t *testing.T) {
	g, _, _ := startGatewayMesh(t, "")
	code, h, body := g.get(t, "/api/orders/1")
	if code != 200 || !strings.Contains(body, "URI=spiffe://e2e.test/ns/istio-system/sa/gateway") {
		t.Fatalf("through the mesh: %d %s", code, body)
	}
	for _, k := range []string{"Strict-Transport-Security", "Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options", "X-Request-Id"} {
		if h.Get(k) == "" {
			t.Errorf("no %s", k)
		}
	}
	if code, h, _ := g.get(t, "/api/orders?id="+url.QueryEscape("1' OR '1'='1")); code != 403 || h.Get("Strict-Transport-Security") == "" {
		t.Errorf("SQL injection: %d", code)
	}
	if code, _, _ := g.get(t, "/admin"); code != 404 {
		t.Errorf("unrouted path: %d", code)
	}
	t.Run("config_hot_reload", func(t *testing.T) {
		good, _ := os.ReadFile(g.cfgPath)
		os.WriteFile(g.cfgPath, append(good, []byte("bogus_key: 1\n")...), 0o600)
		waitFor(t, 10*time.Second, "refused reload logged", func() bool { return strings.Contains(g.out.String(), "config reload refused") })
		if code, _, _ := g.get(t, "/api/orders/1"); code != 200 {
			t.Fatalf("old config stopped serving: %d", code)
		}
		os.WriteFile(g.cfgPath, []byte(strings.Replace(string(good), "path_prefix: /api", "path_prefix: /api/v2", 1)), 0o600)
		waitFor(t, 10*time.Second, "new route", func() bool { c, _, _ := g.get(t, "/api/orders/1"); return c == 404 })
	})
	t.Run("sslscan", func(t *testing.T) {
		bin, err := exec.LookPath("sslscan")
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("sslscan not installed")
			}
			t.Skip("sslscan not installed (apt-get install sslscan)")
		}
		out, _ := exec.Command(bin, "--no-colour", g.addr).CombinedOutput()
		s := string(out)
		for _, bad := range []string{"TLSv1.0   enabled", "TLSv1.1   enabled", "SSLv3     enabled", "CBC", "RC4", "DES"} {
			if strings.Contains(s, bad) {
				t.Errorf("sslscan reports %q:\n%s", bad, s)
			}
		}
		if !strings.Contains(s, "TLSv1.2   enabled") || !strings.Contains(s, "TLSv1.3   enabled") {
			t.Errorf("sslscan output:\n%s", s)
		}
	})
}

// TestGatewayRedisSharedAcrossProcesses: two gateway processes share one
// limit through a real redis-server; killed mid-test, Redis down fails
// open as configured.
func TestGatewayRedisSharedAcrossProcesses(t *testing.T) {
	srv := redistest.Start(t)
	extra := fmt.Sprintf("rate_limits: [{name: shared, key: route, limit: 4, window: 1h, store: %q, on_store_error: allow}]", srv.URL())
	a, k, inbound := startGatewayMesh(t, extra)
	b := startGatewayProc(t, k, inbound, extra)
	ok, limited := 0, 0
	for i := range 8 {
		g := a
		if i%2 == 1 {
			g = b
		}
		code, h, _ := g.get(t, "/api/orders/1")
		switch code {
		case 200:
			ok++
		case 429:
			limited++
			if h.Get("Retry-After") == "" {
				t.Error("429 without Retry-After")
			}
		default:
			t.Fatalf("status %d", code)
		}
	}
	if ok != 4 || limited != 4 {
		t.Fatalf("%d allowed, %d limited through two gateways; want 4 and 4", ok, limited)
	}
	srv.Kill()
	if code, _, _ := a.get(t, "/api/orders/1"); code != 200 {
		t.Errorf("Redis down, fail open: %d", code)
	}
	waitFor(t, 5*time.Second, "store error logged", func() bool { return strings.Contains(a.out.String(), "rate-limit store unreachable") })
}

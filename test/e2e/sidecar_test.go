package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

// The sidecar tests run "moatless sidecar" processes in files mode (PEM
// identity files and policy files written by the test), plus join-token
// mode against a real server. Apps are small servers in the test process
// on 127.0.0.1.

const (
	scTD         = "e2e.test"
	scFrontendID = "spiffe://e2e.test/ns/prod/sa/frontend"
	scOrdersID   = "spiffe://e2e.test/ns/prod/sa/orders"
	scCheckoutID = "spiffe://e2e.test/ns/prod/sa/checkout"
)

// sidecarPolicies: STRICT mTLS in prod; orders lets frontend GET and POST
// under /api/, and nobody DELETE under /api/admin/.
const sidecarPolicies = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: prod}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: orders-allow, namespace: prod}
spec:
  selector: {matchLabels: {app: orders}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["e2e.test/ns/prod/sa/frontend"]}}]
    to: [{operation: {methods: ["GET", "POST", "DELETE"], paths: ["/api/*", "/ws", "/grpc.health.v1.Health/*"]}}]
  - from: [{source: {principals: ["e2e.test/ns/prod/sa/frontend"]}}]
    to: [{operation: {ports: ["9000"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: orders-deny-admin-delete, namespace: prod}
spec:
  action: DENY
  rules:
  - to: [{operation: {ports: ["8080"], methods: ["DELETE"], paths: ["/api/admin/*"]}}]
`

// sidecarPKI is a test CA and the identity files of each workload.
type sidecarPKI struct {
	t   *testing.T
	ca  *testpki.CA
	dir string
}

func newSidecarPKI(t *testing.T) *sidecarPKI {
	return &sidecarPKI{t: t, ca: testpki.NewCA(t, scTD), dir: t.TempDir()}
}

// files writes (or rewrites) the SVID files of id under name and returns
// their paths and the SVID.
func (k *sidecarPKI) files(name, id string) (testpki.Files, *testpki.SVID) {
	s := k.ca.SVID(k.t, id, 0)
	return k.ca.WriteFiles(k.t, k.dir, name, s), s
}

// rewrite replaces name's files atomically (write then rename), as a
// certificate manager would.
func (k *sidecarPKI) rewrite(name, id string) *testpki.SVID {
	tmp := filepath.Join(k.dir, "tmp")
	os.MkdirAll(tmp, 0o700)
	s := k.ca.SVID(k.t, id, 0)
	f := k.ca.WriteFiles(k.t, tmp, name, s)
	for _, p := range []string{f.Cert, f.Key, f.Bundle} {
		if err := os.Rename(p, filepath.Join(k.dir, filepath.Base(p))); err != nil {
			k.t.Fatal(err)
		}
	}
	return s
}

// sidecarProc is a running "moatless sidecar".
type sidecarProc struct {
	*proc
	admin string
}

// startSidecarProc writes cfg (YAML) and starts a sidecar, waiting until
// /readyz says it has an identity (and, with inbound listeners, a policy),
// or with needReady false until /livez answers.
func startSidecarProc(t *testing.T, name, cfg string, needReady bool) *sidecarProc {
	t.Helper()
	return startSidecarProcEnv(t, name, cfg, needReady, nil)
}

// startSidecarProcEnv is startSidecarProc with env added to the process's
// environment.
func startSidecarProcEnv(t *testing.T, name, cfg string, needReady bool, env []string) *sidecarProc {
	t.Helper()
	return startSidecarProcCmd(t, oneBinary(), name, cfg, needReady, env)
}

// The two executables a sidecar runs from: the command line before
// "-config FILE".
func oneBinary() []string  { return []string{bin, "sidecar"} }
func slimBinary() []string { return []string{slimBin} }

// startSidecarProcCmd is startSidecarProcEnv running cmd (oneBinary or
// slimBinary).
func startSidecarProcCmd(t *testing.T, cmd []string, name, cfg string, needReady bool, env []string) *sidecarProc {
	t.Helper()
	admin := freeAddr(t)
	path := filepath.Join(t.TempDir(), name+".yaml")
	cfg += "admin: " + admin + "\nreload_interval: 200ms\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	argv := append(append([]string(nil), cmd...), "-config", path)
	p := &sidecarProc{proc: startArgv(t, name, env, argv), admin: admin}
	probe := "/livez"
	if needReady {
		probe = "/readyz"
	}
	waitFor(t, 30*time.Second, name+" to be ready", func() bool {
		if p.exited() {
			t.Fatalf("%s exited with %d:\n%s", name, p.cmd.ProcessState.ExitCode(), p.out.String())
		}
		resp, err := http.Get("http://" + admin + probe)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return p
}

// metric sums the samples of a metric whose line starts with prefix.
func (p *sidecarProc) metric(t *testing.T, prefix string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + p.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, prefix) {
			var v float64
			fmt.Sscanf(line[strings.LastIndexByte(line, ' ')+1:], "%g", &v)
			sum += v
		}
	}
	return sum
}

// sidecarEchoApp answers with the method, the path and the XFCC header it
// received, and upgrades /ws to a WebSocket echo.
func sidecarEchoApp(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ws", websocket.Handler(func(c *websocket.Conn) { io.Copy(c, c) }))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s xfcc=%s", r.Method, r.URL.Path, r.Header.Get("X-Forwarded-Client-Cert"))
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// sidecarMesh is frontend's sidecar (outbound) → orders' sidecar (inbound)
// → the orders app.
type sidecarMesh struct {
	pki         *sidecarPKI
	policyDir   string
	revocations string
	orders      *sidecarProc
	frontend    *sidecarProc
	inbound     string // orders' mTLS listener
	outbound    string // frontend's plaintext listener for orders
}

func startSidecarMesh(t *testing.T, app string) *sidecarMesh {
	t.Helper()
	return startSidecarMeshWith(t, app, sidecarPolicies)
}

// startSidecarMeshWith is startSidecarMesh enforcing policies (YAML).
func startSidecarMeshWith(t *testing.T, app, policies string) *sidecarMesh {
	t.Helper()
	return startSidecarMeshEnv(t, app, policies, nil, nil)
}

// startSidecarMeshEnv is startSidecarMeshWith with extra environment for
// the orders and the frontend sidecar.
func startSidecarMeshEnv(t *testing.T, app, policies string, ordersEnv, frontendEnv []string) *sidecarMesh {
	t.Helper()
	return startSidecarMeshConf(t, app, policies, "", ordersEnv, frontendEnv)
}

// startSidecarMeshConf is startSidecarMeshEnv with extra top-level config
// (YAML lines) for both sidecars.
func startSidecarMeshConf(t *testing.T, app, policies, extra string, ordersEnv, frontendEnv []string) *sidecarMesh {
	t.Helper()
	return startSidecarMeshCmd(t, oneBinary(), app, policies, extra, ordersEnv, frontendEnv)
}

// startSidecarMeshCmd is startSidecarMeshConf with both sidecars run by
// cmd (oneBinary or slimBinary).
func startSidecarMeshCmd(t *testing.T, cmd []string, app, policies, extra string, ordersEnv, frontendEnv []string) *sidecarMesh {
	t.Helper()
	m := &sidecarMesh{pki: newSidecarPKI(t), policyDir: t.TempDir(), inbound: freeAddr(t), outbound: freeAddr(t)}
	m.revocations = filepath.Join(m.pki.dir, "revocations.json")
	if err := os.WriteFile(filepath.Join(m.policyDir, "policies.yaml"), []byte(policies), 0o600); err != nil {
		t.Fatal(err)
	}
	of, _ := m.pki.files("orders", scOrdersID)
	ff, _ := m.pki.files("frontend", scFrontendID)
	m.orders = startSidecarProcCmd(t, cmd, "orders-sidecar", fmt.Sprintf(`identity:
  files: {cert: %s, key: %s, bundle: %s}
namespace: prod
labels: {app: orders}
inbound:
  - {name: http, listen: "%s", app: "%s", protocol: http, port: 8080}
policy:
  files: [%s]
  revocations_file: %s
decision_log: {allow_sample_rate: 1}
%s`, of.Cert, of.Key, of.Bundle, m.inbound, app, m.policyDir, m.revocations, extra), true, ordersEnv)
	m.frontend = startSidecarProcCmd(t, cmd, "frontend-sidecar", fmt.Sprintf(`identity:
  files: {cert: %s, key: %s, bundle: %s}
namespace: prod
labels: {app: frontend}
outbound:
  - {name: orders, listen: "%s", upstream: "%s", spiffe_id: "%s"}
%s`, ff.Cert, ff.Key, ff.Bundle, m.outbound, m.inbound, scOrdersID, extra), true, frontendEnv)
	return m
}

// mtlsClient is a Go client with its own SVID (any ID the test picks)
// talking straight to an inbound listener, verifying the server as orders.
func (k *sidecarPKI) mtlsClient(t *testing.T, id string) *http.Client {
	t.Helper()
	svid := k.ca.SVID(t, id, 0).X509SVID()
	conf := tlsconfig.MTLSClientConfig(svid, k.ca.Bundle(), tlsconfig.AuthorizeID(spiffeid.RequireFromString(scOrdersID)))
	tr := &http.Transport{TLSClientConfig: conf, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func sidecarDo(t *testing.T, c *http.Client, method, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	req.Header.Set("X-Forwarded-Client-Cert", "By=spiffe://e2e.test/forged;URI=spiffe://e2e.test/ns/prod/sa/admin")
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestSidecarFilesModeDecisions: allowed and denied calls through a pair of
// sidecars run from files, a forged XFCC replaced by the verified one,
// plaintext refused under STRICT, another identity refused, and an
// outbound refusing an upstream with the wrong SPIFFE ID; run by "moatless
// sidecar" and by moatless-sidecar.
func TestSidecarFilesModeDecisions(t *testing.T) {
	// The same decisions from both executables: moatless-sidecar is the
	// same sidecar without the rest of moatless.
	for _, exe := range []struct {
		name string
		cmd  func() []string
	}{{"moatless_sidecar", oneBinary}, {"moatless-sidecar", slimBinary}} {
		t.Run(exe.name, func(t *testing.T) { testSidecarFilesModeDecisions(t, exe.cmd()) })
	}
}

func testSidecarFilesModeDecisions(t *testing.T, cmd []string) {
	app := sidecarEchoApp(t)
	m := startSidecarMeshCmd(t, cmd, app, sidecarPolicies, "", nil, nil)
	plain := &http.Client{Timeout: 10 * time.Second}

	tests := []struct {
		name     string
		client   *http.Client
		method   string
		url      string
		wantCode int
		want     string
	}{
		{"allowed_get_reaches_app_with_verified_caller", plain, "GET", "http://" + m.outbound + "/api/orders",
			200, "GET /api/orders xfcc=By=" + scOrdersID + ";Hash="},
		{"xfcc_from_outside_is_replaced", plain, "POST", "http://" + m.outbound + "/api/orders",
			200, ";URI=" + scFrontendID},
		{"path_outside_allow_rule_denied", plain, "GET", "http://" + m.outbound + "/internal",
			403, "RBAC: access denied"},
		{"deny_policy_wins", plain, "DELETE", "http://" + m.outbound + "/api/admin/users",
			403, "RBAC: access denied"},
		{"method_outside_allow_rule_denied", plain, "PUT", "http://" + m.outbound + "/api/orders",
			403, "RBAC: access denied"},
		{"caller_with_another_identity_denied", m.pki.mtlsClient(t, scCheckoutID), "GET", "https://" + m.inbound + "/api/orders",
			403, "RBAC: access denied"},
		{"plaintext_refused_under_strict", plain, "GET", "http://" + m.inbound + "/api/orders",
			0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body := sidecarDo(t, tc.client, tc.method, tc.url)
			if code != tc.wantCode || !strings.Contains(body, tc.want) {
				t.Fatalf("got %d %q, want %d containing %q", code, body, tc.wantCode, tc.want)
			}
			if strings.Contains(body, "forged") {
				t.Fatalf("forged XFCC reached the app: %q", body)
			}
		})
	}

	if got := m.orders.metric(t, `moatless_sidecar_decisions_total{decision="deny",policy="prod/orders-deny-admin-delete",reason="deny_rule"}`); got != 1 {
		t.Errorf("deny metric for the DENY policy = %v, want 1", got)
	}
	// The sidecar's GC target is its own default (50) unless GOGC is set.
	if os.Getenv("GOGC") == "" {
		if got := m.orders.metric(t, "go_gc_gogc_percent"); got != 50 {
			t.Errorf("go_gc_gogc_percent = %v, want the sidecar's default 50", got)
		}
	}
	// The log line travels through a pipe: wait for it rather than race it.
	waitFor(t, 10*time.Second, "the decision log line of the DENY policy", func() bool {
		return strings.Contains(m.orders.out.String(), `"decision":"deny","policy":"prod/orders-deny-admin-delete"`)
	})

	t.Run("outbound_refuses_upstream_with_wrong_id", func(t *testing.T) {
		out := freeAddr(t)
		ff, _ := m.pki.files("frontend2", scFrontendID)
		startSidecarProcCmd(t, cmd, "frontend-wrong-upstream", fmt.Sprintf(`identity:
  files: {cert: %s, key: %s, bundle: %s}
outbound:
  - {listen: "%s", upstream: "%s", spiffe_id: "spiffe://e2e.test/ns/prod/sa/payments"}
`, ff.Cert, ff.Key, ff.Bundle, out, m.inbound), false, nil)
		// Live is not listening: poll until the outbound listener answers.
		var code int
		var body string
		waitFor(t, 10*time.Second, "the outbound listener", func() bool {
			code, body = sidecarDo(t, plain, "GET", "http://"+out+"/api/orders")
			return code != 0
		})
		if code != 503 || !strings.Contains(body, "upstream SPIFFE ID is not spiffe://e2e.test/ns/prod/sa/payments") {
			t.Fatalf("got %d %q", code, body)
		}
	})

	t.Run("policy_file_change_applies_without_restart", func(t *testing.T) {
		tightened := strings.Replace(sidecarPolicies, `"GET", "POST", "DELETE"`, `"POST"`, 1)
		if err := os.WriteFile(filepath.Join(m.policyDir, "policies.yaml"), []byte(tightened), 0o600); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the tightened policy", func() bool {
			code, _ := sidecarDo(t, plain, "GET", "http://"+m.outbound+"/api/orders")
			return code == 403
		})
		// A broken policy file is refused; the tightened policy stays.
		if err := os.WriteFile(filepath.Join(m.policyDir, "policies.yaml"), []byte("kind: AuthorizationPolicy\nspec: {bogus: 1}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the reload failure to be counted", func() bool {
			return m.orders.metric(t, `moatless_sidecar_reload_failures_total{what="policy"}`) >= 1
		})
		if code, body := sidecarDo(t, plain, "POST", "http://"+m.outbound+"/api/orders"); code != 200 {
			t.Fatalf("after a bad reload: %d %q", code, body)
		}
	})
}

// pathNormPolicies allow everything in prod except paths "/admin" and
// "/admin/*", which a DENY refuses.
const pathNormPolicies = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: prod}
spec:
  action: ALLOW
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: prod}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
`

// TestSidecarPathNormalization: policy.path_normalization decides which
// spellings of a path a DENY on "/admin" catches, and the app is served
// the path the policy matched, as Istio's meshConfig.pathNormalization.
func TestSidecarPathNormalization(t *testing.T) {
	// The app echoes the request target exactly as it arrived: no
	// ServeMux, whose redirects to cleaned paths would hide what the
	// sidecar forwarded.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.Method, r.RequestURI)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	app := l.Addr().String()
	pki := newSidecarPKI(t)
	policyDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(policyDir, "p.yaml"), []byte(pathNormPolicies), 0o600); err != nil {
		t.Fatal(err)
	}
	of, _ := pki.files("orders", scOrdersID)
	client := pki.mtlsClient(t, scFrontendID)
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	type check struct {
		path     string
		wantCode int
		want     string // in the body: the path the app was served
	}
	tests := []struct {
		name   string
		config string // the policy.path_normalization line, "" for the default
		checks []check
	}{
		{"default_base", "", []check{
			{"/admin", 403, "RBAC: access denied"},
			{"/a/../admin", 403, "RBAC: access denied"},
			{"//admin", 403, "RBAC: access denied"}, // read with slashes merged too, as routers merge them
			{"/ADMIN", 403, "RBAC: access denied"},  // read ignoring case too
			{"/api//orders", 200, "GET /api//orders"},
		}},
		{"merge_slashes", "MERGE_SLASHES", []check{
			{"/admin", 403, "RBAC: access denied"},
			{"//admin", 403, "RBAC: access denied"},
			{"/admin//users", 403, "RBAC: access denied"},
			// %2F stays encoded in what the app is sent, but policy also
			// reads the path decoded, as WSGI and PHP apps do.
			{"/%2Fadmin", 403, "RBAC: access denied"},
			{"/api%2Forders", 200, "GET /api%2Forders"},
			{"/api//orders", 200, "GET /api/orders"},
		}},
		{"decode_and_merge_slashes", "decode_and_merge_slashes", []check{
			{"//admin", 403, "RBAC: access denied"},
			{"/%2Fadmin", 403, "RBAC: access denied"},
			{"/api/%2F/orders", 200, "GET /api/orders"},
		}},
		{"none", "NONE", []check{
			{"/admin", 403, "RBAC: access denied"},
			{"/a/../admin", 200, "GET /a/../admin"},
			{"//admin", 403, "RBAC: access denied"},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			inbound := freeAddr(t)
			norm := ""
			if tc.config != "" {
				norm = "  path_normalization: " + tc.config + "\n"
			}
			startSidecarProc(t, "orders-sidecar-"+tc.name, fmt.Sprintf(`identity:
  files: {cert: %s, key: %s, bundle: %s}
namespace: prod
labels: {app: orders}
inbound:
  - {listen: "%s", app: "%s", port: 8080}
policy:
  files: [%s]
%s`, of.Cert, of.Key, of.Bundle, inbound, app, policyDir, norm), true)
			for _, c := range tc.checks {
				code, body := sidecarDo(t, client, "GET", "https://"+inbound+c.path)
				if code != c.wantCode || !strings.Contains(body, c.want) {
					t.Errorf("GET %s: got %d %q, want %d containing %q", c.path, code, body, c.wantCode, c.want)
				}
			}
		})
	}

	t.Run("unknown_mode_refused_at_start", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "bad.yaml")
		cfg := fmt.Sprintf("identity:\n  files: {cert: %s, key: %s, bundle: %s}\nnamespace: prod\ninbound:\n  - {listen: \"%s\", app: \"%s\"}\npolicy:\n  path_normalization: FULL\n",
			of.Cert, of.Key, of.Bundle, freeAddr(t), app)
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, "sidecar", "-config", path, "-check").CombinedOutput()
		if err == nil || !strings.Contains(string(out), `policy.path_normalization: "FULL"`) {
			t.Fatalf("got %v %q, want a usage error naming policy.path_normalization", err, out)
		}
	})
}

// TestSidecarRotationUnderLoad: both sidecars' certificate files are
// replaced several times while requests flow; new handshakes get the new
// certificate and no request fails.
func TestSidecarRotationUnderLoad(t *testing.T) {
	app := sidecarEchoApp(t)
	m := startSidecarMesh(t, app)
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 10 * time.Second}
			for i := 0; ctx.Err() == nil && i < 100000; i++ {
				code, body := sidecarDo(t, c, "GET", "http://"+m.outbound+"/api/orders")
				if code == 200 {
					ok.Add(1)
				} else {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%d %s", code, body))
				}
			}
		}()
	}
	waitFor(t, 10*time.Second, "traffic", func() bool { return ok.Load() > 50 })
	for round := range 3 {
		newOrders := m.pki.rewrite("orders", scOrdersID)
		m.pki.rewrite("frontend", scFrontendID)
		want := newOrders.Chain[0].SerialNumber
		waitFor(t, 10*time.Second, fmt.Sprintf("round %d: orders serving the new certificate", round), func() bool {
			conf := tlsconfig.MTLSClientConfig(m.pki.ca.SVID(t, scFrontendID, 0).X509SVID(), m.pki.ca.Bundle(), tlsconfig.AuthorizeID(spiffeid.RequireFromString(scOrdersID)))
			c, err := tls.Dial("tcp", m.inbound, conf)
			if err != nil {
				return false
			}
			defer c.Close()
			return c.ConnectionState().PeerCertificates[0].SerialNumber.Cmp(want) == 0
		})
		before := ok.Load()
		waitFor(t, 10*time.Second, "traffic after rotation", func() bool { return ok.Load() > before+50 })
	}
	cancel()
	wg.Wait()
	t.Logf("%d requests, %d failed", ok.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Fatalf("%d requests failed during rotation; first: %v", failed.Load(), firstErr.Load())
	}
}

// TestSidecarRevocationClosesLiveConnections: a WebSocket from frontend
// through both sidecars stays open until frontend's SPIFFE ID is written to
// orders' revocation file; then it is closed, and new calls are refused.
func TestSidecarRevocationClosesLiveConnections(t *testing.T) {
	app := sidecarEchoApp(t)
	m := startSidecarMesh(t, app)
	ws, err := websocket.Dial("ws://"+m.outbound+"/ws", "", "http://localhost/")
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	echo := func(msg string) error {
		if err := websocket.Message.Send(ws, msg); err != nil {
			return err
		}
		var got string
		ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		if err := websocket.Message.Receive(ws, &got); err != nil {
			return err
		}
		if got != msg {
			return fmt.Errorf("got %q, want %q", got, msg)
		}
		return nil
	}
	if err := echo("before"); err != nil {
		t.Fatal(err)
	}
	rv, _ := json.Marshal(wire.Revocations{SPIFFEIDs: []string{scFrontendID}})
	if err := os.WriteFile(m.revocations, rv, 0o600); err != nil {
		t.Fatal(err)
	}
	var got string
	ws.SetReadDeadline(time.Now().Add(15 * time.Second))
	err = websocket.Message.Receive(ws, &got)
	if err == nil {
		t.Fatalf("live WebSocket still open after revocation (got %q)", got)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("live WebSocket not closed within 15s of the revocation")
	}
	if n := m.orders.metric(t, "moatless_sidecar_revoked_connections_closed_total"); n < 1 {
		t.Errorf("revoked_connections_closed_total = %v", n)
	}
	code, body := sidecarDo(t, &http.Client{Timeout: 10 * time.Second}, "GET", "http://"+m.outbound+"/api/orders")
	if code == 200 {
		t.Fatalf("revoked caller still served: %d %q", code, body)
	}
}

// TestSidecarProtocols: gRPC (h2c from the app, HTTP/2 between sidecars,
// h2c to the app, status in trailers) and raw TCP with L4 policy.
func TestSidecarProtocols(t *testing.T) {
	pki := newSidecarPKI(t)
	policyDir := t.TempDir()
	os.WriteFile(filepath.Join(policyDir, "p.yaml"), []byte(sidecarPolicies), 0o600)

	gl, _ := net.Listen("tcp", "127.0.0.1:0")
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("orders", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	go gs.Serve(gl)
	t.Cleanup(gs.Stop)

	tl, _ := net.Listen("tcp", "127.0.0.1:0")
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				fmt.Fprintf(c, "tcp-echo %s", line)
			}()
		}
	}()
	t.Cleanup(func() { tl.Close() })

	grpcIn, tcpIn, grpcOut, tcpOut := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	of, _ := pki.files("orders", scOrdersID)
	ff, _ := pki.files("frontend", scFrontendID)
	startSidecarProc(t, "orders-sidecar", fmt.Sprintf(`identity:
  files: {cert: %s, key: %s, bundle: %s}
namespace: prod
labels: {app: orders}
inbound:
  - {name: grpc, listen: "%s", app: "%s", protocol: grpc, port: 8080}
  - {name: tcp, listen: "%s", app: "%s", protocol: tcp, port: 9000}
policy: {files: [%s]}
`, of.Cert, of.Key, of.Bundle, grpcIn, gl.Addr(), tcpIn, tl.Addr(), policyDir), true)
	startSidecarProc(t, "frontend-sidecar", fmt.Sprintf(`identity:
  files: {cert: %s, key: %s, bundle: %s}
outbound:
  - {name: grpc, listen: "%s", upstream: "%s", spiffe_id: "%s"}
  - {name: tcp, listen: "%s", upstream: "%s", spiffe_id: "%s", protocol: tcp}
`, ff.Cert, ff.Key, ff.Bundle, grpcOut, grpcIn, scOrdersID, tcpOut, tcpIn, scOrdersID), false)

	t.Run("grpc_status_and_trailers", func(t *testing.T) {
		cc, err := grpc.NewClient(grpcOut, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		hc := healthpb.NewHealthClient(cc)
		// WaitForReady: the sidecar is live before its listeners are bound.
		resp, err := hc.Check(deadline(t, 10*time.Second), &healthpb.HealthCheckRequest{Service: "orders"}, grpc.WaitForReady(true))
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Check: %v %v", resp, err)
		}
		_, err = hc.Check(deadline(t, 10*time.Second), &healthpb.HealthCheckRequest{Service: "missing"})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("want NotFound from the app's trailers, got %v", err)
		}
	})
	t.Run("tcp_allowed_by_port_rule", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", tcpOut, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "hello\n")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "tcp-echo hello\n" {
			t.Fatalf("got %q %v", line, err)
		}
	})
	t.Run("tcp_from_other_identity_refused", func(t *testing.T) {
		conf := tlsconfig.MTLSClientConfig(pki.ca.SVID(t, scCheckoutID, 0).X509SVID(), pki.ca.Bundle(), tlsconfig.AuthorizeID(spiffeid.RequireFromString(scOrdersID)))
		c, err := tls.Dial("tcp", tcpIn, conf)
		if err != nil {
			return // refused at the handshake is fine too
		}
		defer c.Close()
		fmt.Fprintf(c, "hello\n")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if b, _ := io.ReadAll(c); len(b) != 0 {
			t.Fatalf("denied TCP caller got %q", b)
		}
	})
}

// TestSidecarJoinTokenMode: two sidecars attest to a real server with
// their own join tokens and use the SVIDs it issues; with no policy applied
// yet every request is denied (deny by default) and the deny is reported
// to the server's audit log; a policy applied on the
// server reaches both sidecars, is acknowledged by each (policy status
// converges) and decides the next request; a revocation pushed by the
// server closes the caller's live connection at the callee and its next
// handshake is refused.
func TestSidecarJoinTokenMode(t *testing.T) {
	p := startPlane(t)
	bundle := filepath.Join(p.dataDir, "bundle.pem")
	app := sidecarEchoApp(t)
	inbound, outbound := freeAddr(t), freeAddr(t)
	orders := startSidecarProc(t, "orders-sidecar", fmt.Sprintf(`identity:
  join: {server: "%s", token_file: %s, server_bundle: %s}
namespace: prod
labels: {app: orders}
inbound:
  - {listen: "%s", app: "%s", port: 8080}
policy: {path_normalization: MERGE_SLASHES}
`, p.addr, p.joinTokenFile(scOrdersID), bundle, inbound, app), false)
	startSidecarProc(t, "frontend-sidecar", fmt.Sprintf(`identity:
  join: {server: "%s", token_file: %s, server_bundle: %s}
outbound:
  - {listen: "%s", upstream: "%s", spiffe_id: "%s"}
`, p.addr, p.joinTokenFile(scFrontendID), bundle, outbound, inbound, scOrdersID), false)

	plain := &http.Client{Timeout: 10 * time.Second}
	var code int
	var body string
	waitFor(t, 30*time.Second, "a decision through the joined pair", func() bool {
		code, body = sidecarDo(t, plain, "GET", "http://"+outbound+"/api/orders")
		return code == 403
	})
	if body != "RBAC: access denied" {
		t.Fatalf("without policies: %d %q", code, body)
	}
	waitFor(t, 10*time.Second, "the callee's decision log naming the caller's server-issued identity", func() bool {
		return strings.Contains(orders.out.String(), `"source":"`+scFrontendID+`"`)
	})
	// The deny reaches the server's audit log, reported by orders' sidecar
	// about the frontend.
	waitFor(t, 15*time.Second, "the deny in the server's audit log", func() bool {
		var page struct {
			Records []struct {
				Kind    string `json:"kind"`
				Actor   string `json:"actor"`
				Subject string `json:"subject"`
			} `json:"items"`
		}
		if err := json.Unmarshal([]byte(p.admin("audit", "list", "-o", "json")), &page); err != nil {
			t.Fatal(err)
		}
		for _, r := range page.Records {
			if r.Kind == "decision.deny" && r.Actor == scOrdersID && r.Subject == scFrontendID {
				return true
			}
		}
		return false
	})

	// A policy change reaches both sidecars, each acknowledges it, and the
	// next request is decided by it.
	pf := filepath.Join(t.TempDir(), "policies.yaml")
	if err := os.WriteFile(pf, []byte(sidecarPolicies), 0o600); err != nil {
		t.Fatal(err)
	}
	p.admin("policy", "apply", "-f", pf)
	var st struct {
		Version   uint64 `json:"version"`
		Converged bool   `json:"converged"`
		Nodes     []struct {
			SPIFFEID      string `json:"spiffe_id"`
			Component     string `json:"component"`
			PolicyVersion uint64 `json:"policy_version"`
		} `json:"nodes"`
	}
	waitFor(t, 20*time.Second, "both sidecars to acknowledge the new policy version", func() bool {
		if err := json.Unmarshal([]byte(p.admin("policy", "status", "-o", "json")), &st); err != nil {
			t.Fatal(err)
		}
		acked := 0
		for _, n := range st.Nodes {
			if n.Component == "sidecar" && n.PolicyVersion == st.Version && st.Version > 0 {
				acked++
			}
		}
		return st.Converged && acked == 2
	})
	code, body = sidecarDo(t, plain, "GET", "http://"+outbound+"/api/orders")
	if code != 200 || !strings.Contains(body, ";URI="+scFrontendID) {
		t.Fatalf("after the policy push: %d %q", code, body)
	}
	if code, body = sidecarDo(t, plain, "DELETE", "http://"+outbound+"/api/admin/x"); code != 403 {
		t.Fatalf("DENY policy after the push: %d %q", code, body)
	}
	// Policies from the server are compiled with the sidecar's
	// path_normalization: under MERGE_SLASHES "/api//admin/x" is
	// "/api/admin/x" to the DENY rule (under BASE it would reach the app).
	noRedirect := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if code, body = sidecarDo(t, noRedirect, "DELETE", "http://"+outbound+"/api//admin/x"); code != 403 {
		t.Fatalf("DENY policy on a path with a doubled slash under MERGE_SLASHES: %d %q", code, body)
	}

	// A live WebSocket through the pair: upgraded, it is never idle, so
	// the frontend's own sidecar (which learns of the revocation too and
	// cuts its egress by closing idle upstream connections) cannot be the
	// one to close it; the callee must.
	ws, err := websocket.Dial("ws://"+outbound+"/ws", "", "http://localhost/")
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if err := websocket.Message.Send(ws, "before"); err != nil {
		t.Fatal(err)
	}
	var echoed string
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := websocket.Message.Receive(ws, &echoed); err != nil || echoed != "before" {
		t.Fatalf("WebSocket echo before the revocation: %q %v", echoed, err)
	}

	p.admin("revoke", "--spiffe-id", scFrontendID)
	waitFor(t, 15*time.Second, "the revocation to close the caller's connection", func() bool {
		return orders.metric(t, "moatless_sidecar_revoked_connections_closed_total") >= 1
	})
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := websocket.Message.Receive(ws, &echoed); err == nil {
		t.Fatalf("live WebSocket still open after the revocation (got %q)", echoed)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("live WebSocket not closed within 10s of the revocation")
	}
	code, body = sidecarDo(t, plain, "GET", "http://"+outbound+"/api/orders")
	if code != 503 || !strings.Contains(body, "upstream connect error") {
		t.Fatalf("revoked caller: %d %q, want 503 (handshake refused)", code, body)
	}
}

// TestSidecarWorkloadAPIRotationUnderLoad: both sidecars get their SVID
// from a real moatless agent over the SPIFFE Workload API (as they would
// from SPIRE's), with a 10-second TTL; requests flow through the pair while
// the SVID rotates, and none fails.
func TestSidecarWorkloadAPIRotationUnderLoad(t *testing.T) {
	p := startPlane(t)
	a := p.startAgent(p.joinToken(agentID), t.TempDir())
	id := "spiffe://e2e.test/ns/prod/sa/orders"
	p.admin("entry", "create", "--parent", agentID, "--spiffe-id", id, "--selector", uidSelector(), "--x509-ttl", "10s")
	first := fetchX509(t, a.client(t)).DefaultSVID()

	policyDir := t.TempDir()
	os.WriteFile(filepath.Join(policyDir, "p.yaml"), []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: orders, namespace: prod}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["e2e.test/ns/prod/sa/orders"]}}]
`), 0o600)
	app := sidecarEchoApp(t)
	inbound, outbound := freeAddr(t), freeAddr(t)
	startSidecarProc(t, "orders-sidecar", fmt.Sprintf(`identity: {workload_api: "unix://%s"}
namespace: prod
inbound: [{listen: "%s", app: "%s", port: 8080}]
policy: {files: [%s]}
`, a.sock, inbound, app, policyDir), true)
	startSidecarProc(t, "caller-sidecar", fmt.Sprintf(`identity: {workload_api: "unix://%s"}
outbound: [{listen: "%s", upstream: "%s", spiffe_id: "%s"}]
`, a.sock, outbound, inbound, id), false)
	// /livez answers before the outbound listener is bound: load sent in
	// between was refused (2 of 1,382 requests in one CI run).
	waitFor(t, 30*time.Second, "the caller's outbound listener", func() bool {
		c, err := net.DialTimeout("tcp", outbound, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 10 * time.Second}
			for ctx.Err() == nil {
				code, body := sidecarDo(t, c, "GET", "http://"+outbound+"/api/orders")
				if code == 200 {
					ok.Add(1)
				} else {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%d %s", code, body))
				}
				time.Sleep(5 * time.Millisecond) // pace the load, not a clock wait
			}
		}()
	}
	// Wait for the inbound to serve a certificate other than the first.
	waitFor(t, 30*time.Second, "the sidecar to serve a rotated SVID", func() bool {
		x := fetchX509(t, a.client(t))
		conf := tlsconfig.MTLSClientConfig(x.DefaultSVID(), x.Bundles, tlsconfig.AuthorizeID(spiffeid.RequireFromString(id)))
		c, err := tls.Dial("tcp", inbound, conf)
		if err != nil {
			return false
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0
	})
	before := ok.Load()
	waitFor(t, 10*time.Second, "traffic after rotation", func() bool { return ok.Load() > before+20 })
	cancel()
	wg.Wait()
	t.Logf("%d requests across the rotation, %d failed", ok.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Fatalf("%d requests failed; first: %v", failed.Load(), firstErr.Load())
	}
}

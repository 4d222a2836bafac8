package e2e

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSidecarOPAAPIRefusesOtherLocalUsers: a user of the host with no
// business with the workload must not read the sidecar's Rego modules and
// data, nor query them, through the OPA API on its loopback admin
// listener. Root and the sidecar's uid get in; uid 65534 gets 403 and a
// log line naming it — until outbound_allowed_uids lists it. pprof
// (admin_pprof) answers the same users. /metrics stays open to every local
// user (Prometheus runs as its own).
func TestSidecarOPAAPIRefusesOtherLocalUsers(t *testing.T) {
	needRootForOtherUser(t)
	m := startSidecarMeshConf(t, sidecarEchoApp(t), sidecarPolicies, "admin_pprof: true\n", nil, nil)
	admin := m.frontend.admin
	// A plain GET: sidecarDo forges x-forwarded-client-cert, a proxy's
	// mark, which the admin APIs refuse whoever sends it.
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + admin + "/v1/policies")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("the sidecar's own uid: %d %s", resp.StatusCode, body)
	}
	if code, _ := sidecarDo(t, &http.Client{Timeout: 10 * time.Second}, "GET", "http://"+admin+"/v1/policies"); code != 403 {
		t.Fatalf("the sidecar's own uid, relayed by a proxy (x-forwarded-client-cert): %d, want 403", code)
	}
	waitFor(t, 10*time.Second, "the refusal log line of the relayed request", func() bool {
		return strings.Contains(m.frontend.out.String(), `"reason":"forwarded","header":"X-Forwarded-Client-Cert"`)
	})
	for _, path := range []string{"/v1/policies", "/v1/data", "/debug/pprof/heap", "/debug/pprof/profile?seconds=1"} {
		if got := callAsUserHost(t, nobodyUID, admin, admin, path); got != "HTTP/1.1 403 Forbidden" {
			t.Fatalf("uid %d read %s: %q, want 403", nobodyUID, path, got)
		}
	}
	if out := m.frontend.out.String(); !strings.Contains(out, `"msg":"OPA API request refused"`) || !strings.Contains(out, `"uid":65534`) {
		t.Fatalf("no refusal log line naming uid 65534:\n%s", out)
	}
	if got := callAsUserHost(t, nobodyUID, admin, admin, "/metrics"); got != "HTTP/1.1 200 OK" {
		t.Fatalf("uid %d scraping /metrics: %q, want 200", nobodyUID, got)
	}

	// outbound_allowed_uids: the app's user reads the policy it is held to.
	ff, _ := m.pki.files("frontend", scFrontendID)
	other := startSidecarProc(t, "frontend-listed-uid", fmt.Sprintf(`identity:
  files: {cert: %s, key: %s, bundle: %s}
outbound:
  - {name: orders, listen: "%s", upstream: "%s", spiffe_id: "%s"}
outbound_allowed_uids: [%d]
`, ff.Cert, ff.Key, ff.Bundle, freeAddr(t), m.inbound, scOrdersID, nobodyUID), true)
	if got := callAsUserHost(t, nobodyUID, other.admin, "localhost", "/v1/policies"); got != "HTTP/1.1 200 OK" {
		t.Fatalf("listed uid %d: %q, want 200", nobodyUID, got)
	}
}

// TestAdminListenersRefuseReboundHost is the attack of a web page a
// browser on the host opens, whose name the attacker's DNS re-resolves
// to 127.0.0.1: the browser then calls the admin listener from loopback
// with the page's name as Host and hands the answers to the page —
// /metrics (SPIFFE IDs, paths), /readyz, pprof (goroutines, the
// heap). Every route of the sidecar's, the gateway's and "moatless
// authz"'s admin listeners refuses such a Host with 421; calls by address
// (as Prometheus scrapes) and as localhost keep working.
func TestAdminListenersRefuseReboundHost(t *testing.T) {
	m := startSidecarMeshConf(t, sidecarEchoApp(t), sidecarPolicies, "admin_pprof: true\n", nil, nil)
	pprofed := m.frontend
	_, port, _ := strings.Cut(pprofed.admin, ":")
	gw, _, _ := startGatewayMesh(t, "")
	authzAdmin := freeAddr(t)
	pol := writeTestFile(t, t.TempDir(), "p.yaml", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n")
	authz := start(t, "authz", nil, "authz", "-f", pol, "--listen", "unix:"+filepath.Join(shortTempDir(t), "authz.sock"), "--admin", authzAdmin)
	waitFor(t, 30*time.Second, "authz's admin listener", func() bool {
		if authz.exited() {
			t.Fatalf("authz exited:\n%s", authz.out.String())
		}
		resp, err := http.Get("http://" + authzAdmin + "/livez")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	c := &http.Client{Timeout: 10 * time.Second}
	for _, tc := range []struct {
		name, addr, path, host string
		want                   int
	}{
		{"metrics_by_address", m.frontend.admin, "/metrics", m.frontend.admin, 200},
		{"metrics_as_localhost", m.frontend.admin, "/metrics", "localhost", 200},
		{"metrics_rebound", m.frontend.admin, "/metrics", "attacker.example:" + port, 421},
		{"readyz_rebound", m.frontend.admin, "/readyz", "attacker.example", 421},
		{"healthz_rebound", m.frontend.admin, "/healthz", "attacker.example", 421},
		{"opa_api_rebound", m.frontend.admin, "/v1/policies", "attacker.example", 421},
		{"pprof_by_address", pprofed.admin, "/debug/pprof/heap", pprofed.admin, 200},
		{"pprof_rebound", pprofed.admin, "/debug/pprof/goroutine", "attacker.example:" + port, 421},
		{"pprof_heap_rebound", pprofed.admin, "/debug/pprof/heap", "localhost.attacker.example", 421},
		{"gateway_metrics_by_address", gw.admin, "/metrics", gw.admin, 200},
		{"gateway_metrics_rebound", gw.admin, "/metrics", "attacker.example", 421},
		{"authz_metrics_as_localhost", authzAdmin, "/metrics", "localhost", 200},
		{"authz_metrics_rebound", authzAdmin, "/metrics", "attacker.example", 421},
		{"authz_opa_api_rebound", authzAdmin, "/v1/policies", "attacker.example", 421},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "http://"+tc.addr+tc.path, nil)
			req.Host = tc.host
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
}

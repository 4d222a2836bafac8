package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestGatewayTrafficRecordsReachServer: a gateway and a sidecar in join
// mode, both processes; the gateway's traffic records reach the server:
// a routed request as an edge from the gateway to the sidecar's SPIFFE
// ID, an unrouted one as an edge from the internet to the gateway.
func TestGatewayTrafficRecordsReachServer(t *testing.T) {
	p := startPlane(t)
	api := newPlaneAPI(t, p)
	api.admin("POST", "/v1/admin/policies", map[string]any{"files": []map[string]string{{"name": "allow.yaml", "content": "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-all, namespace: istio-system}\nspec: {action: ALLOW, rules: [{}]}\n"}}}, nil)
	bundle := filepath.Join(p.dataDir, "bundle.pem")
	joinFile := func(id string) string {
		var tok struct {
			Token string `json:"token"`
		}
		api.admin("POST", "/v1/admin/jointokens", map[string]string{"spiffe_id": id}, &tok)
		f := filepath.Join(t.TempDir(), "token")
		os.WriteFile(f, []byte(tok.Token+"\n"), 0o600)
		return f
	}
	ordersID := "spiffe://" + trustDomain + "/ns/prod/sa/orders"
	gatewayID := "spiffe://" + trustDomain + "/ns/istio-system/sa/gateway"
	inbound := freeAddr(t)
	startSidecarProc(t, "orders-sidecar", fmt.Sprintf(`identity:
  join: {server: "%s", token_file: %s, server_bundle: %s}
namespace: prod
labels: {app: orders}
inbound:
  - {listen: "%s", app: "%s", port: 8080}
`, p.addr, joinFile(ordersID), bundle, inbound, sidecarEchoApp(t)), true)

	k := newSidecarPKI(t)
	dir := t.TempDir()
	c := k.ca.ServerCert(t, "", "localhost", "127.0.0.1")
	keyDER, _ := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	os.WriteFile(filepath.Join(dir, "tls.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600)
	os.WriteFile(filepath.Join(dir, "tls-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	addr, admin := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "gateway.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`listen: %q
tls: {cert: %s, key: %s}
identity:
  join: {server: "%s", token_file: %s, server_bundle: %s}
admin: %q
routes:
  - {name: api, path_prefix: /api, upstreams: [%q], spiffe_id: %q}
`, addr, filepath.Join(dir, "tls.pem"), filepath.Join(dir, "tls-key.pem"), p.addr, joinFile(gatewayID), bundle, admin, inbound, ordersID)), 0o600)
	g := start(t, "gateway", nil, "gateway", "-config", cfg)
	waitFor(t, 30*time.Second, "gateway ready", func() bool {
		if g.exited() {
			t.Fatalf("gateway exited:\n%s", g.out.String())
		}
		resp, err := http.Get("http://" + admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: k.ca.Pool(), ServerName: "localhost"}}}
	defer client.CloseIdleConnections()
	get := func(path string) int {
		resp, err := client.Get("https://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("/api/orders/42"); code != 200 {
		t.Fatalf("through the gateway: %d", code)
	}
	if code := get("/elsewhere"); code != 404 {
		t.Fatalf("unrouted: %d", code)
	}

	// The gateway reports every 5 s.
	type edge struct {
		Direction, Source, Destination, Method, Path, Decision, Reason string
		Requests                                                       uint64
	}
	var routed, unrouted bool
	waitFor(t, 30*time.Second, "the gateway's edges on the server", func() bool {
		var page struct{ Items []edge }
		api.admin("GET", "/v1/admin/detect/edges?since=1h", nil, &page)
		for _, e := range page.Items {
			switch {
			case e.Direction == "outbound" && e.Source == gatewayID && e.Destination == ordersID && e.Path == "/api/orders/{*}" && e.Decision == "allow":
				routed = true
			case e.Direction == "inbound" && e.Source == "" && e.Destination == gatewayID && e.Path == "/elsewhere" && e.Decision == "deny" && e.Reason == "no_route":
				unrouted = true
			}
		}
		return routed && unrouted
	})
}

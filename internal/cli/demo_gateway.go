package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/server"
)

// The demo's edge: "moatless gateway" in join mode in front of the
// frontend's sidecar. The browser reaches the shop only through it (the
// frontend's port is STRICT mTLS and admits only the gateway's SPIFFE
// ID); it terminates TLS with a certificate made for the demo, runs the
// WAF on /search, a per-client rate limit, a body limit, an IP deny list
// (X-Forwarded-For believed from 127.0.0.1, standing in for a load
// balancer) and requires a token on /checkout.

const demoGatewayID = "spiffe://" + demoTrustDomain + "/ns/istio-system/sa/gateway"

// demoGateway is the gateway as the demo started it.
type demoGateway struct {
	addr    string // the public HTTPS listener
	client  *http.Client
	logPath string
}

// startGateway writes the gateway's config and starts it. Its admin
// listener joins d.sidecars as "gateway", so waitConverged waits for it
// and decision() reads its decision log.
func (d *demo) startGateway(ctx context.Context) error {
	dir := filepath.Join(d.dir, "gateway")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	admin, err := freeAddr()
	if err != nil {
		return err
	}
	certPEM, keyPEM, pool, err := demoServerCert()
	if err != nil {
		return err
	}
	certFile, keyFile := filepath.Join(dir, "public.pem"), filepath.Join(dir, "public-key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return err
	}
	var jt server.JoinTokenResponse
	if err := d.admin.do(ctx, "POST", server.PathAdminJoinTokens, server.JoinTokenRequest{SPIFFEID: demoGatewayID}, &jt); err != nil {
		return fmt.Errorf("join token for the gateway: %w", err)
	}
	tokenFile := filepath.Join(dir, "join-token")
	if err := os.WriteFile(tokenFile, []byte(jt.Token+"\n"), 0o600); err != nil {
		return err
	}
	fe := d.sidecars["frontend"]
	route := func(name, prefix, extra string) string {
		return fmt.Sprintf("  - {name: %s, path_prefix: %s, upstreams: [%q], spiffe_id: %q%s}\n", name, prefix, fe.inbound, fe.spiffeID, extra)
	}
	cfg := fmt.Sprintf(`listen: %q
tls: {cert: %q, key: %q}
identity:
  join: {server: %q, token_file: %q, server_bundle: %q, state_dir: %q}
trusted_proxies: ["127.0.0.1/32"]
ip: {deny: ["203.0.113.0/24"]}
limits: {max_body_bytes: 65536}
rate_limits:
  - {name: per-client, key: "header:X-Api-Key", limit: 3, window: 1m}
routes:
%s%s%sadmin: %q
decision_log: {allow_sample_rate: 1}
`, addr, certFile, keyFile, d.serverAddr, tokenFile, d.bundlePath, filepath.Join(dir, "state"),
		route("shop", "/", ""),
		route("search", "/search", ", waf: {enabled: true}, rate_limits: [per-client]"),
		route("checkout", "/checkout", ", require_token: true"), admin)
	cfgPath := filepath.Join(dir, "gateway.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	logPath, err := d.start("gateway", "gateway", "-config", cfgPath)
	if err != nil {
		return err
	}
	d.gateway = &demoGateway{addr: addr, logPath: logPath, client: &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}}}
	d.sidecars["gateway"] = &demoSidecar{name: "gateway", spiffeID: demoGatewayID, admin: admin, logPath: logPath}
	d.logf("started the gateway as %s on https://%s (WAF on /search, per-client limit, 64 KiB bodies, 203.0.113.0/24 denied, a token required on /checkout)", demoGatewayID, addr)
	return nil
}

// demoServerCert is a self-signed certificate for localhost and
// 127.0.0.1, the gateway's public one, and the pool that trusts it.
func demoServerCert() (certPEM, keyPEM []byte, pool *x509.CertPool, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: "moatless demo gateway"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(7 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), pool, nil
}

// viaGateway sends a request to the gateway and returns the status, the
// answer's headers and the request ID the gateway gave it (the ID the
// frontend's sidecar logs too).
func (d *demo) viaGateway(ctx context.Context, method, path, bearer string, hdr map[string]string, body string) (int, http.Header, string) {
	req, _ := http.NewRequestWithContext(ctx, method, "https://"+d.gateway.addr+path, strings.NewReader(body))
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	status, h := call(d.gateway.client, req)
	if h == nil {
		return status, nil, ""
	}
	return status, h, h.Get(hdrRequestID)
}

// gatewayBlock is why the gateway answered a request itself, from its
// access log: the block reason and, for the WAF, the matched rules.
func (d *demo) gatewayBlock(rid string) string {
	return findLogLine(d.gateway.logPath, rid, func(line []byte) (string, bool) {
		var ev struct {
			Msg       string `json:"msg"`
			RequestID string `json:"request_id"`
			Reason    string `json:"block_reason"`
			Detail    string `json:"detail"`
		}
		if json.Unmarshal(line, &ev) != nil || ev.Msg != "access" || ev.RequestID != rid {
			return "", false
		}
		if ev.Detail != "" {
			return "gateway: " + ev.Reason + " (" + ev.Detail + ")", true
		}
		return "gateway: " + ev.Reason, true
	})
}

// gatewayRows are the edge's refusals: each answered by the gateway
// before anything reached the mesh.
func (d *demo) gatewayRows(ctx context.Context, step int) []demoRow {
	var rows []demoRow
	row := func(caller, method, path, note, expected string, status int, rid string) {
		step++
		rows = append(rows, demoRow{Step: step, Caller: caller, Callee: "gateway", Method: method, Path: path,
			Note: note, Expected: expected, Result: outcome(status), Policy: d.gatewayBlock(rid)})
	}
	st, _, rid := d.viaGateway(ctx, "GET", "/search?q=1%27%20OR%20%271%27%3D%271", "", nil, "")
	row("client (internet)", "GET", "/search?q=1' OR '1'='1", "SQL injection: the WAF (OWASP Core Rule Set, paranoia 1) blocks it", "deny", st, rid)

	for range 3 {
		d.viaGateway(ctx, "GET", "/search?q=shoes", "", map[string]string{"X-Api-Key": "demo-client"}, "")
	}
	st, h, rid := d.viaGateway(ctx, "GET", "/search?q=shoes", "", map[string]string{"X-Api-Key": "demo-client"}, "")
	note := "the 4th request in a minute with X-Api-Key demo-client: the per-client limit is 3"
	if h != nil && h.Get("Retry-After") != "" {
		note += ", Retry-After " + h.Get("Retry-After") + " s"
	}
	row("client (internet)", "GET", "/search?q=shoes", note, "429", st, rid)

	st, _, rid = d.viaGateway(ctx, "POST", "/checkout", "", map[string]string{"Content-Type": "application/json"}, `{"note":"`+strings.Repeat("x", 200<<10)+`"}`)
	row("client (internet)", "POST", "/checkout", "a 200 KiB body over the 64 KiB limit: refused before it is read", "413", st, rid)

	st, _, rid = d.viaGateway(ctx, "GET", "/", "", map[string]string{"X-Forwarded-For": "203.0.113.7"}, "")
	row("203.0.113.7 (via a trusted proxy)", "GET", "/", "X-Forwarded-For believed from 127.0.0.1 only; 203.0.113.0/24 is denied", "deny", st, rid)

	st, _, rid = d.viaGateway(ctx, "POST", "/checkout", "", nil, "{}")
	row("client (internet)", "POST", "/checkout", "no token: /checkout requires one (401, WWW-Authenticate: Bearer)", "unauthenticated", st, rid)
	return rows
}

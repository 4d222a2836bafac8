package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// planeAPI calls a plane's admin and agent APIs over HTTPS directly (no
// CLI process per call: the containment measurement starts at the call).
type planeAPI struct {
	t     *testing.T
	addr  string
	token string
	pool  *x509.CertPool
	https *http.Client
}

func newPlaneAPI(t *testing.T, p *plane) *planeAPI {
	t.Helper()
	tok, err := os.ReadFile(filepath.Join(p.dataDir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	b, err := os.ReadFile(filepath.Join(p.dataDir, "bundle.pem"))
	if err != nil || !pool.AppendCertsFromPEM(b) {
		t.Fatalf("bundle: %v", err)
	}
	return &planeAPI{t: t, addr: p.addr, token: strings.TrimSpace(string(tok)), pool: pool,
		https: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
}

// admin makes an admin call that must succeed.
func (a *planeAPI) admin(method, path string, in, out any) {
	a.t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "https://"+a.addr+path, body)
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.https.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		a.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			a.t.Fatalf("%s %s: %v: %s", method, path, err, raw)
		}
	}
}

// attest gets an SVID for id with a join token, as a node would.
func (a *planeAPI) attest(id string) tls.Certificate {
	a.t.Helper()
	var tok struct {
		Token string `json:"token"`
	}
	a.admin("POST", "/v1/admin/jointokens", map[string]string{"spiffe_id": id}, &tok)
	return attestJoin(a.t, a.https, a.addr, id, tok.Token)
}

// attestJoin attests with a join token through the agent API at addr, as
// a node would, and returns the SVID with its new key.
func attestJoin(t *testing.T, https *http.Client, addr, id, joinToken string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	body, _ := json.Marshal(map[string]any{"join_token": joinToken, "csr": csr})
	resp, err := https.Post("https://"+addr+"/v1/agent/attest", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ar struct {
		SVID struct {
			CertChain [][]byte `json:"cert_chain"`
		} `json:"svid"`
	}
	json.NewDecoder(resp.Body).Decode(&ar)
	if len(ar.SVID.CertChain) == 0 {
		t.Fatalf("attest %s: %d", id, resp.StatusCode)
	}
	return tls.Certificate{Certificate: ar.SVID.CertChain, PrivateKey: key}
}

// liveConn is an attacker's keep-alive connection to a sidecar, with one
// request answered; closed is when the sidecar closed it.
type liveConn struct {
	closed chan time.Time
}

// dialLive connects to a sidecar's inbound listener as cert, makes one
// request and waits in the background for the sidecar to close the
// connection. It fails when the handshake or the request does.
func dialLive(addr string, pool *x509.CertPool, cert tls.Certificate) (*liveConn, error) {
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"},
		// The sidecar's SVID names a workload, not a host.
		InsecureSkipVerify: true, VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			return err
		}})
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET /live HTTP/1.1\r\nHost: app\r\n\r\n"); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Close {
		c.Close()
		return nil, fmt.Errorf("status %d (close %v)", resp.StatusCode, resp.Close)
	}
	c.SetDeadline(time.Time{})
	l := &liveConn{closed: make(chan time.Time, 1)}
	go func() {
		br.ReadByte() // blocks until the sidecar closes the connection
		l.closed <- time.Now()
		c.Close()
	}()
	return l, nil
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q", name, v)
	}
	return n
}

func quantiles(lat []time.Duration) string {
	slices.Sort(lat)
	n := len(lat)
	q := func(p float64) time.Duration { return lat[min(n-1, int(p*float64(n)))].Round(time.Millisecond) }
	return fmt.Sprintf("p50 %s, p99 %s, max %s (%d samples)", q(0.5), q(0.99), lat[n-1].Round(time.Millisecond), n)
}

// TestContainmentAcrossSidecars measures containment end to end: from the
// start of the admin call that isolates an identity until each of N
// sidecar processes has closed that identity's live connection (and then
// refuses a new one), while M more watch clients load the server's
// fan-out; then releases it, reconnects, and repeats. 5 sidecars and 50
// watch clients, 2 rounds by default; MOATLESS_CONTAIN_SIDECARS=100
// MOATLESS_CONTAIN_WATCHERS=1000 MOATLESS_CONTAIN_ROUNDS=5 is the run in
// docs/benchmarks.md. Latencies are logged, not asserted.
func TestContainmentAcrossSidecars(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server and sidecars")
	}
	nSidecars := envInt(t, "MOATLESS_CONTAIN_SIDECARS", 5)
	nWatchers := envInt(t, "MOATLESS_CONTAIN_WATCHERS", 50)
	rounds := envInt(t, "MOATLESS_CONTAIN_ROUNDS", 2)

	p := startPlane(t)
	api := newPlaneAPI(t, p)
	// Allow everything: the attacker's calls succeed until it is isolated.
	api.admin("POST", "/v1/admin/policies", map[string]any{"files": []map[string]string{{"name": "allow.yaml", "content": "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-all, namespace: istio-system}\nspec: {action: ALLOW, rules: [{}]}\n"}}}, nil)

	app := sidecarEchoApp(t)
	bundle := filepath.Join(p.dataDir, "bundle.pem")
	inbound := make([]string, nSidecars)
	for i := range nSidecars {
		inbound[i] = freeAddr(t)
		id := fmt.Sprintf("spiffe://%s/ns/prod/sa/svc-%d", trustDomain, i)
		var tok struct {
			Token string `json:"token"`
		}
		api.admin("POST", "/v1/admin/jointokens", map[string]string{"spiffe_id": id}, &tok)
		tf := filepath.Join(t.TempDir(), "token")
		os.WriteFile(tf, []byte(tok.Token+"\n"), 0o600)
		startSidecarProc(t, fmt.Sprintf("svc-%d-sidecar", i), fmt.Sprintf(`identity:
  join: {server: "%s", token_file: %s, server_bundle: %s}
namespace: prod
labels: {app: svc-%d}
inbound:
  - {listen: "%s", app: "%s", port: 8080}
`, p.addr, tf, bundle, i, inbound[i], app), true)
	}
	t.Logf("%d sidecars ready", nSidecars)

	// Watch clients: node identities (at most 100; streams per node are
	// independent), each stream on its own TLS connection.
	identities := min(nWatchers, 100)
	certs := make([]tls.Certificate, identities)
	for i := range identities {
		certs[i] = api.attest(fmt.Sprintf("spiffe://%s/agent/watch-%d", trustDomain, i))
	}
	attacker := fmt.Sprintf("spiffe://%s/ns/prod/sa/reports", trustDomain)
	attackerCert := api.attest(attacker)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu     sync.Mutex
		seenAt = make([]time.Time, nWatchers)
		armed  atomic.Bool
		wg     sync.WaitGroup
	)
	defer wg.Wait()
	defer cancel()
	needle := []byte(`"` + attacker + `"`)
	streams := watchClients(ctx, t, &wg, nWatchers, 32, []string{p.addr}, api.pool, certs, func(c int, line []byte) {
		if armed.Load() && bytes.Contains(line, needle) {
			mu.Lock()
			if seenAt[c].IsZero() {
				seenAt[c] = time.Now()
			}
			mu.Unlock()
		}
	})
	streams.waitConnected(t, 5*time.Minute, nWatchers)

	var sidecarLat, watchLat []time.Duration
	for round := range rounds {
		conns := make([]*liveConn, nSidecars)
		for i, addr := range inbound {
			waitFor(t, 30*time.Second, "the attacker's connection to sidecar "+strconv.Itoa(i), func() bool {
				var err error
				conns[i], err = dialLive(addr, api.pool, attackerCert)
				return err == nil
			})
		}
		mu.Lock()
		clear(seenAt)
		mu.Unlock()
		armed.Store(true)

		t0 := time.Now()
		var inc struct {
			ID    string `json:"id"`
			State string `json:"state"`
		}
		api.admin("POST", "/v1/admin/incidents", map[string]string{"identity": attacker, "action": "isolate", "reason": "containment benchmark"}, &inc)
		decided := time.Since(t0)
		for i, c := range conns {
			select {
			case at := <-c.closed:
				sidecarLat = append(sidecarLat, at.Sub(t0))
			case <-time.After(30 * time.Second):
				t.Fatalf("round %d: sidecar %d did not close the isolated identity's connection", round, i)
			}
		}
		// Every sidecar refuses a new connection of the identity.
		for i, addr := range inbound {
			if _, err := dialLive(addr, api.pool, attackerCert); err == nil {
				t.Fatalf("round %d: sidecar %d accepted the isolated identity again", round, i)
			}
		}
		waitFor(t, time.Minute, "every watch client to get the revocation", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return !slices.ContainsFunc(seenAt, time.Time.IsZero)
		})
		armed.Store(false)
		mu.Lock()
		for _, at := range seenAt {
			watchLat = append(watchLat, at.Sub(t0))
		}
		mu.Unlock()
		t.Logf("round %d: isolate call %s; sidecars closed: %s", round, decided.Round(time.Millisecond), quantiles(append([]time.Duration(nil), sidecarLat[len(sidecarLat)-nSidecars:]...)))
		api.admin("POST", "/v1/admin/incidents/"+inc.ID+"/release", map[string]string{"reason": "next round"}, nil)
	}
	t.Logf("containment, %d sidecars, %d watch clients, %d rounds: isolate call → sidecar closed the connection: %s; → watch client had the revocation: %s",
		nSidecars, nWatchers, rounds, quantiles(sidecarLat), quantiles(watchLat))
}

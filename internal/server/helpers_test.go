package server_test

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
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/wire"
)

func TestMain(m *testing.M) { storetest.Main(m) }

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// env is a running server for a test.
type env struct {
	t      testing.TB
	dir    string
	srv    *server.Server
	addr   string
	token  string
	pool   *x509.CertPool
	clock  *clock
	cancel context.CancelFunc
	done   chan error
	// opts are the options the server was started with (restart).
	opts []envOpt
}

type envOpt func(*config.Server)

// start runs a server on 127.0.0.1:0 in dir (a new temp dir when "").
func start(t *testing.T, dir string, opts ...envOpt) *env { return startTB(t, dir, nil, opts...) }

// startB is start for benchmarks.
func startB(b *testing.B) *env { return startTB(b, "", nil) }

func (e *env) attestB(b *testing.B, id string) *node                 { return e.attest(id) }
func (e *env) adminB(b *testing.B, method, path string, in, out any) { e.admin(method, path, in, out) }

func startTB(t testing.TB, dir string, srvOpt func(*server.Config), opts ...envOpt) *env {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	st := config.DefaultServer(func(string) string { return "" })
	st.DataDir = dir
	st.TrustDomain = "example.org"
	st.Listen = "127.0.0.1:0"
	st.Store = ""
	st.KEKFile = ""
	st.AdminIDs = nil
	for _, o := range opts {
		o(&st)
	}
	st.Complete()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Now()}
	logger := slog.New(slog.NewJSONHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	sc := server.Config{Settings: st, Listener: ln, Now: clk.Now, Logger: logger, HeartbeatInterval: testHeartbeat}
	if srvOpt != nil {
		srvOpt(&sc)
	}
	srv, err := server.New(context.Background(), sc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &env{t: t, dir: dir, srv: srv, addr: ln.Addr().String(), clock: clk, cancel: cancel, done: make(chan error, 1), opts: opts}
	go func() { e.done <- srv.Serve(ctx) }()
	tok, err := os.ReadFile(filepath.Join(dir, server.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	e.token = strings.TrimSpace(string(tok))
	e.pool = x509.NewCertPool()
	pemBytes, err := os.ReadFile(filepath.Join(dir, server.BundleFile))
	if err != nil || !e.pool.AppendCertsFromPEM(pemBytes) {
		t.Fatalf("bundle.pem: %v", err)
	}
	t.Cleanup(e.stop)
	e.waitReady()
	return e
}

func (e *env) stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	select {
	case err := <-e.done:
		if err != nil {
			e.t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		e.t.Error("server did not stop")
	}
	e.srv.Close()
	e.srv.Close() // idempotent
	e.cancel = nil
}

func (e *env) waitReady() {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := e.client(nil).Get("https://" + e.addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Fatal("server never became ready")
}

// client returns an HTTP client trusting the bundle, presenting cert if
// non-nil.
func (e *env) client(cert *tls.Certificate) *http.Client {
	conf := &tls.Config{RootCAs: e.pool, ServerName: "127.0.0.1"}
	if cert != nil {
		conf.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: conf, ForceAttemptHTTP2: true}, Timeout: 30 * time.Second}
}

// do sends a request and returns status and body.
func (e *env) do(c *http.Client, method, path, token string, body any) (int, []byte) {
	e.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		r = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, "https://"+e.addr+path, r)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if r != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// admin sends an admin request with the admin token and decodes a 2xx
// answer into out; it fails the test on other statuses.
func (e *env) admin(method, path string, in, out any) {
	e.t.Helper()
	st, body := e.do(e.client(nil), method, path, e.token, in)
	if st/100 != 2 {
		e.t.Fatalf("%s %s: %d %s", method, path, st, body)
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			e.t.Fatalf("decode %s: %v", body, err)
		}
	}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func csr(t testing.TB, key *ecdsa.PrivateKey) []byte {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// node is an attested agent for tests.
type node struct {
	id   string
	key  *ecdsa.PrivateKey
	svid wire.X509SVID
	http *http.Client
}

func (n *node) cert() *tls.Certificate {
	return &tls.Certificate{Certificate: n.svid.CertChain, PrivateKey: n.key}
}

// attest creates a join token for id and attests with it.
func (e *env) attest(id string) *node {
	e.t.Helper()
	var tok server.JoinTokenResponse
	e.admin("POST", server.PathAdminJoinTokens, server.JoinTokenRequest{SPIFFEID: id}, &tok)
	n := &node{id: id, key: newKey(e.t)}
	st, body := e.do(e.client(nil), "POST", wire.PathAttest, "", wire.AttestRequest{JoinToken: tok.Token, CSR: csr(e.t, n.key)})
	if st != 200 {
		e.t.Fatalf("attest: %d %s", st, body)
	}
	var resp wire.AttestResponse
	if err := json.Unmarshal(body, &resp); err != nil {
		e.t.Fatal(err)
	}
	n.svid = resp.SVID
	n.http = e.client(n.cert())
	return n
}

// watch opens a watch stream as n and returns a channel of updates.
func (e *env) watch(ctx context.Context, n *node) <-chan wire.Update {
	e.t.Helper()
	return e.watchQuery(ctx, n, "")
}

// watchQuery is watch with a query string ("since=3").
func (e *env) watchQuery(ctx context.Context, n *node, query string) <-chan wire.Update {
	e.t.Helper()
	u := "https://" + e.addr + wire.PathWatch
	if query != "" {
		u += "?" + query
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
	resp, err := n.http.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		e.t.Fatalf("watch: %d %s", resp.StatusCode, b)
	}
	ch := make(chan wire.Update, 16)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 4<<20)
		for sc.Scan() {
			var u wire.Update
			if err := json.Unmarshal(sc.Bytes(), &u); err != nil {
				e.t.Errorf("watch: bad line %q: %v", sc.Bytes(), err)
				return
			}
			ch <- u
		}
	}()
	return ch
}

// testHeartbeat is the test servers' watch heartbeat interval.
const testHeartbeat = 200 * time.Millisecond

// next returns the next update that is not a heartbeat.
func next(t *testing.T, ch <-chan wire.Update) wire.Update {
	t.Helper()
	for {
		u := nextAny(t, ch)
		if !u.Heartbeat {
			return u
		}
	}
}

// nextAny returns the next message, heartbeat or not.
func nextAny(t *testing.T, ch <-chan wire.Update) wire.Update {
	t.Helper()
	select {
	case u, ok := <-ch:
		if !ok {
			t.Fatal("watch stream ended")
		}
		return u
	case <-time.After(10 * time.Second):
		t.Fatal("no watch update within 10s")
	}
	return wire.Update{}
}

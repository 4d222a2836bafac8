package ui_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/wire"
)

func TestMain(m *testing.M) { storetest.Main(m) }

// env is a real control plane serving the dashboard on 127.0.0.1.
type env struct {
	t     testing.TB
	dir   string
	srv   *server.Server
	addr  string
	base  string // https://ADDR
	token string
	pool  *x509.CertPool
}

func startServer(t testing.TB, opts ...func(*config.Server)) *env {
	t.Helper()
	return startServerAt(t, nil, opts...)
}

// clock is a settable test clock: real time plus an offset the test
// moves forward.
type clock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
}

// startServerAt is startServer with the server on clk (nil: time.Now).
func startServerAt(t testing.TB, clk *clock, opts ...func(*config.Server)) *env {
	t.Helper()
	dir := t.TempDir()
	st := config.DefaultServer(func(string) string { return "" })
	st.DataDir, st.TrustDomain, st.Listen = dir, "example.org", "127.0.0.1:0"
	st.Store, st.KEKFile, st.AdminIDs = "", "", nil
	for _, o := range opts {
		o(&st)
	}
	st.Complete()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewJSONHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	cfg := server.Config{Settings: st, Listener: ln, Logger: logger, HeartbeatInterval: 200 * time.Millisecond}
	if clk != nil {
		cfg.Now = clk.Now
	}
	srv, err := server.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("server did not stop")
		}
		srv.Close()
	})
	dir = st.DataDir // an option may have named the replica's own
	e := &env{t: t, dir: dir, srv: srv, addr: ln.Addr().String()}
	e.base = "https://" + e.addr
	tok, err := os.ReadFile(filepath.Join(dir, server.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	e.token = strings.TrimSpace(string(tok))
	e.pool = x509.NewCertPool()
	b, err := os.ReadFile(filepath.Join(dir, server.BundleFile))
	if err != nil || !e.pool.AppendCertsFromPEM(b) {
		t.Fatalf("bundle.pem: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := e.client().Get(e.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("server never became ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return e
}

// client is an HTTPS client trusting the server, keeping cookies, never
// following redirects (the tests look at them).
func (e *env) client() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.pool, ServerName: "127.0.0.1"}},
		Jar:           jar,
		Timeout:       20 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// admin calls the admin API with the admin token.
func (e *env) admin(method, path string, in, out any) int {
	e.t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, e.base+path, body)
	req.Header.Set("Authorization", "Bearer "+e.token)
	resp, err := e.client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			e.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return resp.StatusCode
}

// revoked reports whether id is on the revocation list.
func (e *env) revoked(id string) bool {
	e.t.Helper()
	var l struct {
		IDs []struct {
			SPIFFEID string `json:"spiffe_id"`
		} `json:"spiffe_ids"`
	}
	if st := e.admin("GET", server.PathAdminRevocations, nil, &l); st != http.StatusOK {
		e.t.Fatalf("list revocations: %d", st)
	}
	for _, r := range l.IDs {
		if r.SPIFFEID == id {
			return true
		}
	}
	return false
}

// auditRecords returns the newest audit records.
func (e *env) auditRecords() []server.AuditRecord {
	e.t.Helper()
	var page server.AuditPage
	if st := e.admin("GET", server.PathAdminAudit+"?limit=200", nil, &page); st != http.StatusOK {
		e.t.Fatalf("audit: %d", st)
	}
	return page.Records
}

// createEntry registers a workload entry for id.
func (e *env) createEntry(id string) {
	e.t.Helper()
	req := server.EntryRequest{SPIFFEID: id, ParentID: "spiffe://example.org/agent/node1",
		Selectors: []wire.Selector{{Type: "unix", Value: "uid:1000"}}, Namespace: "prod"}
	if st := e.admin("POST", server.PathAdminEntries, req, nil); st != http.StatusCreated {
		e.t.Fatalf("create entry %s: %d", id, st)
	}
}

// reportDecision records a decision as the server records one a sidecar
// reported (server/reports.go): the reporter is the actor, the caller the
// subject.
func (e *env) reportDecision(kind, caller, callee, policy, path string) {
	e.t.Helper()
	d := map[string]string{"decision": strings.TrimPrefix(kind, "decision."), "decision_time": time.Now().UTC().Format(time.RFC3339Nano),
		"listener": "inbound", "destination": "prod:8080", "protocol": "http", "reason_code": "deny_rule", "rule": "0",
		"policy_version": "1", "source": caller, "method": "GET", "path": path, "remote": "127.0.0.1",
		"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}
	out := audit.Denied
	if kind == audit.KindDecisionAudit {
		d["decision"], d["audit_policy"], d["reason_code"], out = "allow", policy, "audit_rule", audit.Success
	} else if policy != "" {
		d["policy"] = policy
	}
	if err := e.srv.Audit().Append(context.Background(), audit.Event{Kind: kind, Actor: callee, Subject: caller, Outcome: out, Details: d}); err != nil {
		e.t.Fatal(err)
	}
}

// form posts a form to the dashboard from c with the given headers.
func (e *env) form(c *http.Client, path string, v url.Values, hdr map[string]string) (*http.Response, string) {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.base+path, strings.NewReader(v.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return e.send(c, req, hdr)
}

// send sends req with c, with the given headers set, and returns the
// response and its body.
func (e *env) send(c *http.Client, req *http.Request, hdr map[string]string) (*http.Response, string) {
	e.t.Helper()
	for k, val := range hdr {
		req.Header.Set(k, val)
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// get fetches a dashboard page with c.
func (e *env) get(c *http.Client, path string) (*http.Response, string) {
	e.t.Helper()
	resp, err := c.Get(e.base + path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

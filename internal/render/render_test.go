package render_test

import (
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
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/render"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/wire"
)

func TestMain(m *testing.M) { storetest.Main(m) }

type testServer struct {
	srv   *server.Server
	addr  string
	dir   string
	token string
	http  *http.Client
}

func startServer(t *testing.T, now func() time.Time) *testServer {
	t.Helper()
	dir := t.TempDir()
	st := config.DefaultServer(func(string) string { return "" })
	st.DataDir, st.TrustDomain, st.Listen = dir, "example.org", "127.0.0.1:0"
	st.Complete()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(context.Background(), server.Config{Settings: st, Listener: ln, Now: now, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; srv.Close() })
	tok, _ := os.ReadFile(filepath.Join(dir, server.AdminTokenFile))
	pool := x509.NewCertPool()
	pemb, _ := os.ReadFile(filepath.Join(dir, server.BundleFile))
	pool.AppendCertsFromPEM(pemb)
	ts := &testServer{srv: srv, addr: ln.Addr().String(), dir: dir, token: strings.TrimSpace(string(tok)),
		http: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if resp, err := ts.http.Get("https://" + ts.addr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return ts
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("server not ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (ts *testServer) call(t *testing.T, method, path string, body any) map[string]any {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, "https://"+ts.addr+"/v1/"+path, bytes.NewReader(b))
	req.Header.Set("X-Vault-Token", ts.token)
	resp, err := ts.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("%s %s: %d %v", method, path, resp.StatusCode, out)
	}
	return out
}

// fakeSource hands out SVIDs the test server's CA signed; rotate swaps in
// a new one, as the Workload API does.
type fakeSource struct {
	mu     sync.Mutex
	ca     *server.Server
	id     spiffeid.ID
	svid   *x509svid.SVID
	t      *testing.T
	update chan struct{}
}

func (f *fakeSource) rotate() {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	iss, err := f.ca.CA().SignX509SVID(csr, f.id, time.Hour)
	if err != nil {
		f.t.Fatal(err)
	}
	f.mu.Lock()
	f.svid = &x509svid.SVID{ID: f.id, Certificates: iss.Chain, PrivateKey: key}
	f.mu.Unlock()
}

func (f *fakeSource) GetX509SVID() (*x509svid.SVID, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.svid, nil
}

func (f *fakeSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return x509bundle.FromX509Authorities(td, f.ca.CA().Bundle().X509Authorities()), nil
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// TestRenderKVAndSVIDRotation: a template with a KV secret and the SVID is
// rendered 0600 through mTLS identity alone; a new secret version is
// picked up at the next refresh, an SVID rotation at once; each change
// runs the command, an unchanged pass does not.
func TestRenderKVAndSVIDRotation(t *testing.T) {
	ts := startServer(t, nil)
	id := spiffeid.RequireFromString("spiffe://example.org/ns/prod/sa/app")
	ts.call(t, "POST", "sys/policies/apply", map[string]any{"files": []map[string]string{{"content": "name: app\nsubjects: {spiffe_ids: [" + id.String() + "]}\npaths: [{path: secret/data/app/*, capabilities: [read]}]\n"}}})
	ts.call(t, "POST", "secret/data/app/db", map[string]any{"data": map[string]any{"password": "one"}})

	out := t.TempDir()
	marker := filepath.Join(out, "changes")
	src := &fakeSource{ca: ts.srv, id: id, t: t}
	src.rotate()
	clk := &clock{t: time.Now()}
	cfg := render.Config{
		Server: "https://" + ts.addr, WorkloadAPI: "unix:///unused", Refresh: wire.Duration(time.Minute),
		Templates: []render.Template{{
			Contents:    `password={{ with secret "secret/data/app/db" }}{{ .Data.data.password }}{{ end }}` + "\n" + `id={{ spiffeID }}` + "\n",
			Destination: filepath.Join(out, "app.env"),
			Command:     []string{"/bin/sh", "-c", "echo changed >> " + marker},
		}},
		SVID: &render.SVIDFiles{CertFile: filepath.Join(out, "svid.pem"), KeyFile: filepath.Join(out, "svid.key"), BundleFile: filepath.Join(out, "bundle.pem")},
	}
	r, err := render.New(context.Background(), cfg, render.Options{Now: clk.now, Source: src, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	once := func() []string {
		t.Helper()
		ch, err := r.Once(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return ch
	}
	read := func(name string) string { b, _ := os.ReadFile(filepath.Join(out, name)); return string(b) }
	runs := func() int { return strings.Count(read("changes"), "changed") }

	if ch := once(); len(ch) != 4 {
		t.Fatalf("first pass wrote %v", ch)
	}
	if got := read("app.env"); got != "password=one\nid="+id.String()+"\n" {
		t.Fatalf("app.env = %q", got)
	}
	for _, f := range []string{"app.env", "svid.key"} {
		if fi, _ := os.Stat(filepath.Join(out, f)); fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %v", f, fi.Mode().Perm())
		}
	}
	if runs() != 1 {
		t.Fatalf("command ran %d times", runs())
	}
	// A new version: not before the refresh, then rendered and announced.
	ts.call(t, "POST", "secret/data/app/db", map[string]any{"data": map[string]any{"password": "two"}})
	if ch := once(); len(ch) != 0 {
		t.Fatalf("rewrote before the refresh: %v", ch)
	}
	clk.add(2 * time.Minute)
	if ch := once(); len(ch) != 1 || read("app.env") != "password=two\nid="+id.String()+"\n" || runs() != 2 {
		t.Fatalf("after refresh: %v %q runs %d", ch, read("app.env"), runs())
	}
	// SVID rotation: the files change at the next pass.
	before := read("svid.pem")
	src.rotate()
	if ch := once(); len(ch) != 2 || read("svid.pem") == before {
		t.Fatalf("after SVID rotation: %v", ch)
	}
}

// TestRenderDatabaseLease: database credentials are renewed at two thirds
// of their lease and replaced (and the file rewritten) before they expire.
func TestRenderDatabaseLease(t *testing.T) {
	pg := storetest.PostgresPassword(t)
	db := fmt.Sprintf("render%d", time.Now().UnixNano()%1e9)
	if err := pg.Psql(pg.Password, "CREATE DATABASE "+db); err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Now()}
	ts := startServer(t, clk.now)
	ts.call(t, "POST", "database/config/app", map[string]any{"plugin_name": "postgresql-database-plugin",
		"connection_url": fmt.Sprintf("postgres://{{username}}:{{password}}@127.0.0.1:%d/%s?sslmode=disable", pg.Port, db),
		"username":       pg.Superuser, "password": pg.Password, "allowed_roles": "*"})
	ts.call(t, "POST", "database/roles/app", map[string]any{"db_name": "app", "default_ttl": "30m", "max_ttl": "50m",
		"creation_statements": `CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`})
	out := t.TempDir()
	tok := filepath.Join(out, "token")
	os.WriteFile(tok, []byte(ts.token), 0o600)
	cfg := render.Config{Server: "https://" + ts.addr, TokenFile: tok, CAFile: filepath.Join(ts.dir, server.BundleFile),
		Templates: []render.Template{{Contents: `{{ with secret "database/creds/app" }}{{ .Data.username }}{{ end }}`, Destination: filepath.Join(out, "user"), Perms: "0640"}}}
	r, err := render.New(context.Background(), cfg, render.Options{Now: clk.now, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Once(context.Background()); err != nil {
		t.Fatal(err)
	}
	user1, _ := os.ReadFile(filepath.Join(out, "user"))
	if fi, _ := os.Stat(filepath.Join(out, "user")); !strings.HasPrefix(string(user1), "v-app-") || fi.Mode().Perm() != 0o640 {
		t.Fatalf("user file %q", user1)
	}
	// 21 minutes in: renewed (same user), file unchanged.
	clk.add(21 * time.Minute)
	if ch, err := r.Once(context.Background()); err != nil || len(ch) != 0 {
		t.Fatalf("renewal pass: %v %v", ch, err)
	}
	// Past 90% of what max_ttl allows: a new user replaces the old one.
	clk.add(25 * time.Minute)
	if ch, err := r.Once(context.Background()); err != nil || len(ch) != 1 {
		t.Fatalf("replacement pass: %v %v", ch, err)
	}
	if user2, _ := os.ReadFile(filepath.Join(out, "user")); string(user2) == string(user1) {
		t.Fatal("credentials not replaced before expiry")
	}
}

func TestConfigValidate(t *testing.T) {
	ok := render.Template{Contents: "x", Destination: "/tmp/x"}
	tests := []struct {
		name string
		cfg  render.Config
	}{
		{"http_server", render.Config{Server: "http://x", TokenFile: "t", CAFile: "c", Templates: []render.Template{ok}}},
		{"no_auth", render.Config{Server: "https://x", Templates: []render.Template{ok}}},
		{"token_without_ca", render.Config{Server: "https://x", TokenFile: "t", Templates: []render.Template{ok}}},
		{"world_writable", render.Config{Server: "https://x", TokenFile: "t", CAFile: "c", Templates: []render.Template{{Contents: "x", Destination: "d", Perms: "0666"}}}},
		{"signal_without_pid_file", render.Config{Server: "https://x", TokenFile: "t", CAFile: "c", Templates: []render.Template{{Contents: "x", Destination: "d", Signal: "HUP"}}}},
		{"unknown_signal", render.Config{Server: "https://x", TokenFile: "t", CAFile: "c", Templates: []render.Template{{Contents: "x", Destination: "d", Signal: "KILL", PIDFile: "p"}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

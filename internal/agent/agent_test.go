package agent

import (
	"bufio"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/moatless/moatless/internal/wire"
)

const nodeID = "spiffe://example.org/agent/node1"

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func (f *fakeServer) nodeConfig(t *testing.T, token, dataDir string) NodeConfig {
	return NodeConfig{
		ServerAddr: f.addr(), TrustBundle: []*x509.Certificate{f.ca.Cert}, JoinToken: token, DataDir: dataDir,
		Logger: quiet(), BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
	}
}

func TestNodeAttestPersistAndRestart(t *testing.T) {
	f := newFakeServer(t)
	f.tokens["tok-1"] = nodeID
	dir := t.TempDir()
	ctx := context.Background()

	n, err := NewNode(f.nodeConfig(t, "tok-1", dir))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Attest(ctx); err != nil {
		t.Fatal(err)
	}
	if n.ID().String() != nodeID {
		t.Fatalf("node ID %s, want %s", n.ID(), nodeID)
	}
	fi, err := os.Stat(filepath.Join(dir, nodeFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("persisted SVID: %v %v, want mode 0600", fi, err)
	}

	tests := []struct {
		name    string
		token   string
		dataDir string
		want    error
	}{
		{"reused_token_without_data_dir", "tok-1", "", ErrJoinTokenRejected},
		{"unknown_token", "nope", "", ErrJoinTokenRejected},
		{"no_token_no_data", "", "", ErrNoCredential},
		{"restart_uses_persisted_svid", "", dir, nil},
		{"restart_ignores_used_token", "tok-1", dir, nil},
	}
	// While n holds the data directory, no other node may use it.
	busy, _ := NewNode(f.nodeConfig(t, "", dir))
	if err := busy.Attest(ctx); !errors.Is(err, ErrDataDirInUse) {
		t.Fatalf("Attest on a data directory in use = %v, want ErrDataDirInUse", err)
	}
	n.Close()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n2, err := NewNode(f.nodeConfig(t, tt.token, tt.dataDir))
			if err != nil {
				t.Fatal(err)
			}
			defer n2.Close()
			err = n2.Attest(ctx)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Attest = %v, want %v", err, tt.want)
			}
			if err == nil && n2.ID() != n.ID() {
				t.Fatalf("restarted as %s", n2.ID())
			}
		})
	}

	t.Run("tampered_file_is_not_used", func(t *testing.T) {
		bad := t.TempDir()
		raw, _ := os.ReadFile(filepath.Join(dir, nodeFile))
		os.WriteFile(filepath.Join(bad, nodeFile), raw[:len(raw)/2], 0o600)
		braw, _ := os.ReadFile(filepath.Join(dir, bundleFile))
		os.WriteFile(filepath.Join(bad, bundleFile), braw, 0o600)
		n3, _ := NewNode(f.nodeConfig(t, "", bad))
		if err := n3.Attest(ctx); !errors.Is(err, ErrNoCredential) {
			t.Fatalf("Attest with a truncated SVID file = %v, want ErrNoCredential", err)
		}
	})
	t.Run("world_readable_file_is_not_used", func(t *testing.T) {
		loose := t.TempDir()
		raw, _ := os.ReadFile(filepath.Join(dir, nodeFile))
		os.WriteFile(filepath.Join(loose, nodeFile), raw, 0o644)
		os.Chmod(filepath.Join(loose, nodeFile), 0o644)
		braw, _ := os.ReadFile(filepath.Join(dir, bundleFile))
		os.WriteFile(filepath.Join(loose, bundleFile), braw, 0o600)
		n3, _ := NewNode(f.nodeConfig(t, "", loose))
		if err := n3.Attest(ctx); !errors.Is(err, ErrNoCredential) {
			t.Fatalf("Attest with a 0644 key file = %v, want ErrNoCredential", err)
		}
	})
}

func TestNodeRenewsAtHalfLife(t *testing.T) {
	f := newFakeServer(t)
	f.tokens["t"] = nodeID
	f.nodeTTL = 4 * time.Second
	n, _ := NewNode(f.nodeConfig(t, "t", ""))
	if err := n.Attest(context.Background()); err != nil {
		t.Fatal(err)
	}
	first := n.SVID()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go n.Run(ctx)
	for n.SVID() == first {
		select {
		case <-ctx.Done():
			t.Fatal("node SVID not renewed")
		case <-time.After(20 * time.Millisecond):
		}
	}
	if n.SVID().Certificates[0].NotAfter.Before(first.Certificates[0].NotAfter) {
		t.Fatal("renewed SVID does not outlive the old one")
	}
	if n.SVID().Certificates[0].NotBefore.After(first.Certificates[0].NotAfter) {
		t.Fatal("renewed only after expiry")
	}
}

// agentFixture runs a full agent against the fake server.
type agentFixture struct {
	f      *fakeServer
	a      *Agent
	sock   string
	cancel context.CancelFunc
	done   chan error
}

func startAgent(t *testing.T, f *fakeServer, token, dataDir string) *agentFixture {
	t.Helper()
	return startAgentWith(t, f, token, dataDir, nil)
}

// startAgentWith is startAgent with the agent's Config changed by edit.
func startAgentWith(t *testing.T, f *fakeServer, token, dataDir string, edit func(*Config)) *agentFixture {
	t.Helper()
	sd, err := os.MkdirTemp("", "ag")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sd) })
	af := &agentFixture{f: f, sock: filepath.Join(sd, "agent.sock"), done: make(chan error, 1)}
	cfg := Config{Node: f.nodeConfig(t, token, dataDir), SocketPath: af.sock, HealthListen: "127.0.0.1:0", Logger: quiet()}
	if edit != nil {
		edit(&cfg)
	}
	af.a, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	af.cancel = cancel
	go func() { af.done <- af.a.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-af.done
	})
	select {
	case <-af.a.Ready():
	case err := <-af.done:
		t.Fatalf("agent stopped: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("agent not ready")
	}
	return af
}

func uidEntry(id, spiffeID string, ttl time.Duration) wire.Entry {
	return wire.Entry{ID: id, SPIFFEID: spiffeID, ParentID: nodeID, X509TTL: wire.Duration(ttl), Revision: 1,
		Selectors: []wire.Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(os.Geteuid())}}}
}

// startWebAgent runs the fake server with one entry (web, 1 h X509-SVIDs),
// an agent joined to it with token "t", and a Workload API client of the
// agent; ctx ends after d, or with the test.
func startWebAgent(t *testing.T, d time.Duration) (*fakeServer, *agentFixture, *workloadapi.Client, context.Context) {
	t.Helper()
	f := newFakeServer(t)
	f.tokens["t"] = nodeID
	f.entries = []wire.Entry{uidEntry("e1", "spiffe://example.org/web", time.Hour)}
	af := startAgent(t, f, "t", "")
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return f, af, client(t, af.sock), ctx
}

func client(t *testing.T, sock string) *workloadapi.Client {
	c, err := workloadapi.New(context.Background(), workloadapi.WithAddr("unix://"+sock))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

type x509Watcher struct {
	updates chan *workloadapi.X509Context
	errs    chan error
}

func (w x509Watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w.updates <- c }
func (w x509Watcher) OnX509ContextWatchError(err error) {
	select {
	case w.errs <- err:
	default:
	}
}

func TestAgentServesRotatesRevokes(t *testing.T) {
	f := newFakeServer(t)
	f.tokens["t"] = nodeID
	f.entries = []wire.Entry{uidEntry("e1", "spiffe://example.org/web", 3*time.Second)}
	af := startAgent(t, f, "t", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	w := x509Watcher{make(chan *workloadapi.X509Context, 16), make(chan error, 16)}
	go client(t, af.sock).WatchX509Context(ctx, w)
	next := func() *workloadapi.X509Context {
		t.Helper()
		for {
			select {
			case u := <-w.updates:
				return u
			case err := <-w.errs:
				// Before the first SVID is signed the caller has no identity.
				if status.Code(err) != codes.PermissionDenied {
					t.Fatalf("watch error: %v", err)
				}
			case <-ctx.Done():
				t.Fatal("no update before the deadline")
			}
		}
	}
	first := next().DefaultSVID()
	if first.ID.String() != "spiffe://example.org/web" {
		t.Fatalf("got %s", first.ID)
	}
	// Rotation at half life, pushed on the stream before the old expires.
	second := next().DefaultSVID()
	if second.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) == 0 {
		t.Fatal("same SVID sent twice")
	}
	if !time.Now().Before(first.Certificates[0].NotAfter) {
		t.Fatal("rotated SVID arrived after the old one expired")
	}
	if second.PrivateKey.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(first.PrivateKey.Public()) {
		t.Fatal("rotation reused the private key")
	}

	// Acks follow the versions applied.
	f.mu.Lock()
	acks := len(f.acks)
	f.mu.Unlock()
	if acks == 0 {
		t.Fatal("no ack for the applied updates")
	}

	// Revoking the SPIFFE ID stops serving it at once.
	f.push(func() { f.rev = wire.Revocations{SPIFFEIDs: []string{"spiffe://example.org/web"}} })
	for {
		select {
		case err := <-w.errs:
			if status.Code(err) == codes.PermissionDenied {
				goto revoked
			}
		case u := <-w.updates:
			if u.DefaultSVID().ID.String() == "spiffe://example.org/web" && time.Now().After(u.DefaultSVID().Certificates[0].NotBefore.Add(2*time.Second)) {
				continue // a rotation raced the revocation; keep waiting
			}
		case <-ctx.Done():
			t.Fatal("revocation did not stop the stream")
		}
	}
revoked:
	_, err := client(t, af.sock).FetchX509SVID(ctx)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("revoked ID still served: %v", err)
	}
	f.mu.Lock()
	last := f.acks[len(f.acks)-1]
	ver := f.version
	f.mu.Unlock()
	for last.Version != ver {
		time.Sleep(10 * time.Millisecond)
		f.mu.Lock()
		last = f.acks[len(f.acks)-1]
		f.mu.Unlock()
	}
	if last.Component != "agent" {
		t.Fatalf("ack component %q", last.Component)
	}
}

func TestAgentRidesOutServerOutage(t *testing.T) {
	f, af, c, ctx := startWebAgent(t, 20*time.Second)
	var before *workloadapi.X509Context
	for before == nil {
		x, err := c.FetchX509Context(ctx)
		if err == nil {
			before = x
			break
		}
		if ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	jwt1, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"})
	if err != nil {
		t.Fatal(err)
	}

	f.srv.CloseClientConnections()
	f.srv.Close()
	// The server is gone: cached SVIDs are still served, JWTs reused.
	after, err := c.FetchX509Context(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.DefaultSVID().Certificates[0].SerialNumber.Cmp(before.DefaultSVID().Certificates[0].SerialNumber) != 0 {
		t.Fatal("a different SVID while the server was down")
	}
	jwt2, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"})
	if err != nil || jwt2.Marshal() != jwt1.Marshal() {
		t.Fatalf("JWT-SVID not served from cache during the outage: %v", err)
	}
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "never-asked"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("new audience during an outage: %v, want Unavailable", err)
	}
	_, jwtCalls, _, _ := f.counts()
	if jwtCalls != 1 {
		t.Fatalf("server signed %d JWTs, want 1 (the second must come from the cache)", jwtCalls)
	}
	// readyz stays OK and says the stream is down. The stream's reader
	// notices the closed connection on its own goroutine, which may come
	// after the calls above failed, so poll (with a deadline) for it;
	// readyz must answer 200 throughout.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + af.a.HealthAddr().String() + "/readyz?verbose")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("readyz during outage: %d %s", resp.StatusCode, body)
		}
		if strings.Contains(string(body), "disconnected") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("readyz still does not say the stream is down 10s into the outage: %s", body)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAgentRefusesBadSVIDsFromServer(t *testing.T) {
	f := newFakeServer(t)
	f.tokens["t"] = nodeID
	f.entries = []wire.Entry{uidEntry("e1", "spiffe://example.org/web", time.Hour)}
	other := newFakeServer(t)
	tests := []struct {
		name   string
		tamper func(*wire.X509SVID)
	}{
		{"wrong_key", func(s *wire.X509SVID) {
			s.CertChain = [][]byte{f.ca.SVID(t, "spiffe://example.org/web", time.Hour).Chain[0].Raw}
		}},
		{"wrong_spiffe_id", func(s *wire.X509SVID) {
			s.CertChain = [][]byte{f.ca.SVID(t, "spiffe://example.org/admin", time.Hour).Chain[0].Raw}
		}},
		{"other_ca", func(s *wire.X509SVID) {
			s.CertChain = [][]byte{other.ca.SVID(t, "spiffe://example.org/web", time.Hour).Chain[0].Raw}
		}},
		{"garbage", func(s *wire.X509SVID) { s.CertChain = [][]byte{[]byte("nope")} }},
		{"empty", func(s *wire.X509SVID) { s.CertChain = nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache(fakeSigner{f, tt.tamper}, CacheConfig{Logger: quiet()})
			c.SetBundle(f.bundle())
			c.SetEntries(f.entries)
			c.syncOnce(context.Background())
			if c.Served() != 0 {
				t.Fatal("a bad SVID from the server was kept")
			}
		})
	}
}

// fakeSigner signs directly with the fake server's CA, then tampers.
type fakeSigner struct {
	f      *fakeServer
	tamper func(*wire.X509SVID)
}

func (s fakeSigner) SignX509(_ context.Context, reqs []wire.X509SVIDRequest) ([]wire.X509SVID, error) {
	var out []wire.X509SVID
	for _, r := range reqs {
		e, _ := s.f.entry(nodeID, r.EntryID)
		v, err := s.f.sign(r.CSR, e.SPIFFEID, time.Hour)
		if err != nil {
			return nil, err
		}
		s.tamper(&v)
		out = append(out, v)
	}
	return out, nil
}

func (s fakeSigner) SignJWT(context.Context, string, []string) (*wire.SignJWTResponse, error) {
	return nil, errors.New("no")
}

func TestHalfLife(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	cert := func(nb, na time.Time) *x509.Certificate { return &x509.Certificate{NotBefore: nb, NotAfter: na} }
	tests := []struct {
		name     string
		c        *x509.Certificate
		received time.Time
		want     time.Time
	}{
		{"unknown_receipt_uses_not_before", cert(t0, t0.Add(time.Hour)), time.Time{}, t0.Add(30 * time.Minute)},
		{"received_at_not_before", cert(t0, t0.Add(time.Hour)), t0, t0.Add(30 * time.Minute)},
		// A server that backdates NotBefore by 30s must not make a 20s SVID
		// look past half life on arrival.
		{"backdated_short_svid", cert(t0.Add(-30*time.Second), t0.Add(20*time.Second)), t0, t0.Add(10 * time.Second)},
		{"received_before_not_before", cert(t0, t0.Add(time.Hour)), t0.Add(-time.Minute), t0.Add(30 * time.Minute)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := halfLife(tt.c, tt.received); !got.Equal(tt.want) {
				t.Fatalf("halfLife = %s, want %s", got, tt.want)
			}
		})
	}
}

// The node accepts the server only if its certificate, besides chaining
// to the trust bundle and naming the host, carries the server's SPIFFE
// ID: a workload SVID from the same CA with the server's DNS name and IP
// is refused before any request (join token, CSR) is sent.
func TestNodeRequiresServerSPIFFEID(t *testing.T) {
	for _, tc := range []struct {
		name, certID string
		ok           bool
	}{
		{"server_id", fakeServerID, true},
		{"workload_svid_with_server_names", "spiffe://example.org/ns/prod/sa/web", false},
		{"node_svid_with_server_names", nodeID, false},
		{"server_path_prefix", fakeServerID + "/x", false},
		{"server_path_in_another_segment", "spiffe://example.org/ns/moatless/server", false},
		{"no_spiffe_id", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeServer(t)
			f.tokens["tok"] = nodeID
			f.setServerID(tc.certID)
			cfg := f.nodeConfig(t, "tok", "")
			cfg.ServerName = fakeServerName // the certificate's DNS name: only the SPIFFE ID differs
			n, err := NewNode(cfg)
			if err != nil {
				t.Fatal(err)
			}
			err = n.Attest(context.Background())
			if tc.ok {
				if err != nil {
					t.Fatalf("Attest = %v", err)
				}
				return
			}
			if err == nil || errors.Is(err, ErrJoinTokenRejected) || !strings.Contains(err.Error(), "Moatless server") {
				t.Fatalf("Attest = %v, want the server's certificate refused", err)
			}
			// Nothing reached the impostor: the token is still unused.
			f.setServerID(fakeServerID)
			if err := n.Attest(context.Background()); err != nil {
				t.Fatalf("Attest with the real server afterwards = %v", err)
			}
		})
	}
}

// After attestation the whole server ID is pinned, trust domain included.
func TestNodePinsServerIDAfterAttest(t *testing.T) {
	f := newFakeServer(t)
	f.tokens["tok"] = nodeID
	n, err := NewNode(f.nodeConfig(t, "tok", ""))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Attest(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, certID string
		ok           bool
	}{
		{"server_path_other_trust_domain", "spiffe://other.org/moatless/server", false},
		{"workload_svid", "spiffe://example.org/ns/prod/sa/web", false},
		{"server_id", fakeServerID, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.setServerID(tc.certID)
			f.srv.CloseClientConnections() // the next request handshakes again
			err := n.Renew(context.Background())
			if tc.ok != (err == nil) {
				t.Fatalf("Renew = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "not the Moatless server ("+fakeServerID+")") {
				t.Fatalf("Renew = %v, want the server's ID named", err)
			}
		})
	}
}

// TestJWTSVIDBudgetSpentIsResourceExhausted: the server refuses a node
// JWT-SVIDs past its signing budget with 429. The workload hears that as
// ResourceExhausted, not as an unreachable server (Unavailable).
func TestJWTSVIDBudgetSpentIsResourceExhausted(t *testing.T) {
	f, _, c, ctx := startWebAgent(t, 20*time.Second)
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"}); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.jwtStatus = http.StatusTooManyRequests
	f.mu.Unlock()
	_, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "another"})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "budget") {
		t.Fatalf("FetchJWTSVID over the budget: %v, want ResourceExhausted naming the budget", err)
	}
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"}); err != nil {
		t.Fatalf("a cached JWT-SVID is still served: %v", err)
	}
}

// TestHealthListenerBoundsConnections: any local user may connect to the
// health listener, and each connection it holds is one of the agent's
// file descriptors. Past maxHealthConns open connections, a new one waits
// in the kernel's accept queue (costing the agent nothing) and is served
// once another closes.
func TestHealthListenerBoundsConnections(t *testing.T) {
	f := newFakeServer(t)
	f.tokens["t"] = nodeID
	af := startAgent(t, f, "t", t.TempDir())
	addr := af.a.HealthAddr().String()
	get := []byte("GET /healthz HTTP/1.1\r\nHost: " + addr + "\r\n\r\n")
	// answered reads one response on c within d.
	answered := func(c net.Conn, br *bufio.Reader, d time.Duration) bool {
		c.SetReadDeadline(time.Now().Add(d))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return false
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	var held []net.Conn
	for i := range maxHealthConns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.Write(get)
		if !answered(c, bufio.NewReader(c), 10*time.Second) {
			t.Fatalf("connection %d of %d not answered", i+1, maxHealthConns)
		}
		held = append(held, c) // kept alive, idle
	}
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	extra.Write(get)
	br := bufio.NewReader(extra)
	if answered(extra, br, 200*time.Millisecond) {
		t.Fatalf("a connection past %d open ones was served: the agent holds a descriptor for each", maxHealthConns)
	}
	held[0].Close()
	if !answered(extra, br, 10*time.Second) {
		t.Fatal("the waiting connection was not served after another closed")
	}
}

// TestJWTSVIDShareOfOneIdentity: the server's JWT-SVID budget is per node,
// and any workload with an identity may ask for a token per audience set
// it makes up. One that asks for new audiences without end gets its share
// (jwtShareBurst at once, on a clock that does not move) and then
// ResourceExhausted, without the agent asking the server for more; another
// identity on the node still gets new JWT-SVIDs, and the spent one still
// gets those it has cached.
func TestJWTSVIDShareOfOneIdentity(t *testing.T) {
	f := newFakeServer(t)
	f.tokens["t"] = nodeID
	f.entries = []wire.Entry{
		uidEntry("e1", "spiffe://example.org/greedy", time.Hour),
		uidEntry("e2", "spiffe://example.org/other", time.Hour),
	}
	frozen := time.Now()
	af := startAgentWith(t, f, "t", "", func(c *Config) { c.Now = func() time.Time { return frozen } })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := client(t, af.sock)
	greedy, _ := spiffeid.FromString("spiffe://example.org/greedy")
	other, _ := spiffeid.FromString("spiffe://example.org/other")
	served := 0
	var err error
	for i := range jwtShareBurst + 50 {
		if _, err = c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: fmt.Sprintf("made-up-%d", i), Subject: greedy}); err != nil {
			break
		}
		served++
	}
	if served != jwtShareBurst || status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "share") {
		t.Fatalf("served %d new JWT-SVIDs, then %v; want %d, then ResourceExhausted naming the share", served, err, jwtShareBurst)
	}
	if _, jwtCalls, _, _ := f.counts(); jwtCalls != jwtShareBurst {
		t.Fatalf("the server was asked for %d JWT-SVIDs, want %d", jwtCalls, jwtShareBurst)
	}
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "made-up-0", Subject: greedy}); err != nil {
		t.Fatalf("a cached JWT-SVID of the spent identity: %v", err)
	}
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "made-up-0", Subject: other}); err != nil {
		t.Fatalf("another identity on the node: %v", err)
	}
}

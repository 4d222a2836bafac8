package server_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/agent"
	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/wire"
)

// pausableProxy forwards TCP connections to target until frozen; frozen,
// it keeps every connection open and forwards nothing, as a server does
// whose host hangs or whose network partitioned without a FIN or RST.
type pausableProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	frozen bool
	wake   chan struct{}
	conns  []net.Conn
}

func newPausableProxy(t *testing.T, target string) *pausableProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &pausableProxy{ln: ln, target: target, wake: make(chan struct{})}
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *pausableProxy) addr() string { return p.ln.Addr().String() }

func (p *pausableProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	if !p.frozen {
		return
	}
	p.frozen = false
	close(p.wake)
}

func (p *pausableProxy) freeze(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen == on {
		return
	}
	p.frozen = on
	if !on {
		close(p.wake)
		p.wake = make(chan struct{})
	}
}

// gate blocks while the proxy is frozen.
func (p *pausableProxy) gate() {
	p.mu.Lock()
	frozen, wake := p.frozen, p.wake
	p.mu.Unlock()
	if frozen {
		<-wake
	}
}

func (p *pausableProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			p.gate() // a frozen host accepts (the kernel does) but never answers
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				return
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					if n > 0 {
						p.gate()
						if _, werr := dst.Write(buf[:n]); werr != nil {
							break
						}
					}
					if err != nil {
						break
					}
				}
				dst.Close()
				src.Close()
			}
			go pipe(up, c)
			go pipe(c, up)
		}()
	}
}

func readPEMFile(t testing.TB, path string) []*x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*x509.Certificate
	for blk, rest := pem.Decode(b); blk != nil; blk, rest = pem.Decode(rest) {
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// connectEvent is one watch stream a node established.
type connectEvent struct {
	addr    string
	resumed bool
	at      time.Time
}

// TestNodeFailsOverBetweenReplicas: an agent knowing two replicas on one
// PostgreSQL store moves to the other when its server goes silent (a hung
// host: connections stay open, nothing flows) and when its server shuts
// down, each time resuming from the version it holds (a delta, not a
// snapshot), and keeps getting changes made through either replica.
func TestNodeFailsOverBetweenReplicas(t *testing.T) {
	rs := startReplicas(t, 2)
	a, b := rs[0], rs[1]
	// Each replica behind a proxy the test can freeze.
	replicas := map[string]*env{}
	proxies := map[string]*pausableProxy{}
	var addrs []string
	for _, e := range []*env{a, b} {
		p := newPausableProxy(t, e.addr)
		replicas[p.addr()], proxies[p.addr()] = e, p
		addrs = append(addrs, p.addr())
	}
	other := func(addr string) string {
		if addr == addrs[0] {
			return addrs[1]
		}
		return addrs[0]
	}

	const nodeID = "spiffe://example.org/agent/ha"
	var tok server.JoinTokenResponse
	a.admin("POST", server.PathAdminJoinTokens, server.JoinTokenRequest{SPIFFEID: nodeID}, &tok)
	connects := make(chan connectEvent, 16)
	entries := make(chan []wire.Entry, 16)
	n, err := agent.NewNode(agent.NodeConfig{
		ServerAddrs: addrs,
		TrustBundle: readPEMFile(t, filepath.Join(a.dir, server.BundleFile)),
		JoinToken:   tok.Token,
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		BackoffBase: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		OnConnect: func(addr string, resumed bool) {
			connects <- connectEvent{addr, resumed, time.Now()}
		},
		OnEntries: func(es []wire.Entry) { entries <- es },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := n.Attest(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { n.Run(ctx); close(done) }()
	defer func() { cancel(); <-done; n.Close() }()

	first := waitConnect(t, connects)
	if first.resumed {
		t.Fatal("the first stream of a new node resumed from nothing")
	}
	if es := waitEntries(t, entries); len(es) != 0 {
		t.Fatalf("snapshot entries: %+v", es)
	}

	// The node's server hangs: after three silent heartbeats the node is
	// on the other replica, with a delta.
	hung := first.addr
	frozenAt := time.Now()
	proxies[hung].freeze(true)
	ev := waitConnect(t, connects)
	if ev.addr != other(hung) || !ev.resumed {
		t.Fatalf("after %s hung: connected to %s resumed=%v, want %s resumed", hung, ev.addr, ev.resumed, other(hung))
	}
	t.Logf("left a silent server after %s (heartbeat %s)", ev.at.Sub(frozenAt).Round(time.Millisecond), testHeartbeat)
	var ent wire.Entry
	replicas[ev.addr].admin("POST", server.PathAdminEntries, entryReq(nodeID, "spiffe://example.org/ha/w1", "unix:uid:1"), &ent)
	if es := waitEntries(t, entries); len(es) != 1 || es[0].ID != ent.ID {
		t.Fatalf("entries after failover: %+v", es)
	}

	// The hung host recovers; the node's new server shuts down: the node
	// returns, resuming, and hears of a change made on the survivor.
	proxies[hung].freeze(false)
	stoppedAt := time.Now()
	replicas[ev.addr].stop()
	ev = waitConnect(t, connects)
	if ev.addr != hung || !ev.resumed {
		t.Fatalf("after shutdown: connected to %s resumed=%v, want %s resumed", ev.addr, ev.resumed, hung)
	}
	t.Logf("left a stopped server after %s", ev.at.Sub(stoppedAt).Round(time.Millisecond))
	replicas[hung].admin("DELETE", server.PathAdminEntries+"/"+ent.ID, nil, nil)
	if es := waitEntries(t, entries); len(es) != 0 {
		t.Fatalf("entries after the delete: %+v", es)
	}
}

func waitConnect(t *testing.T, ch <-chan connectEvent) connectEvent {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(20 * time.Second):
		t.Fatal("node did not connect within 20s")
	}
	return connectEvent{}
}

func waitEntries(t *testing.T, ch <-chan []wire.Entry) []wire.Entry {
	t.Helper()
	select {
	case es := <-ch:
		return es
	case <-time.After(20 * time.Second):
		t.Fatal("no entries within 20s")
	}
	return nil
}

// TestConcurrentRotationAcrossReplicas: admins rotating the CA through
// three replicas at the same moment, several times over, leave one CA
// state: every replica serves the same bundle (bundle.pem and the admin
// API), with one prepared authority per kind at most (a second rotation
// brings the prepared one forward instead of adding another), and the
// audit chain verifies.
func TestConcurrentRotationAcrossReplicas(t *testing.T) {
	envs := startReplicas(t, 3)
	for round := range 3 {
		var wg sync.WaitGroup
		codes := make([]int, len(envs))
		for i, e := range envs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				codes[i], _ = e.do(e.client(nil), "POST", server.PathAdminCARotate, e.token, nil)
			}()
		}
		wg.Wait()
		for i, c := range codes {
			// A replica that lost the compare-and-swap adopts the winner's
			// state; an admin may see 409 and retry, never a split CA.
			if c != 200 && c != 409 {
				t.Fatalf("round %d: rotate through replica %d: %d", round, i, c)
			}
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		var sts []server.CAStatus
		for _, e := range envs {
			var st server.CAStatus
			e.admin("GET", server.PathAdminCA, nil, &st)
			sts = append(sts, st)
		}
		same := true
		for _, st := range sts[1:] {
			same = same && st.BundlePEM == sts[0].BundlePEM && st.BundleSequence == sts[0].BundleSequence
		}
		files := readFile(t, filepath.Join(envs[0].dir, server.BundleFile))
		for _, e := range envs[1:] {
			same = same && readFile(t, filepath.Join(e.dir, server.BundleFile)) == files
		}
		if same {
			prepared := map[string]int{}
			for _, a := range sts[0].Authorities {
				if a.State == "prepared" {
					prepared[string(a.Kind)]++
				}
			}
			if prepared["x509"] > 1 || prepared["jwt"] > 1 {
				t.Fatalf("rotations through three replicas prepared %v authorities", prepared)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replicas serve different CAs after concurrent rotations: sequences %d %d %d", sts[0].BundleSequence, sts[1].BundleSequence, sts[2].BundleSequence)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := audit.Verify(context.Background(), envs[0].srv.Store(), audit.VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
}

// startReplicas starts n servers on one PostgreSQL store (skipping the
// test without one) sharing the key-encryption key and the admin token:
// replicas of one control plane.
func startReplicas(t *testing.T, n int) []*env {
	t.Helper()
	dsn := storetest.PostgresDSN(t)
	kek := filepath.Join(t.TempDir(), "kek")
	opt := func(c *config.Server) { c.Store = dsn; c.KEKFile = kek }
	envs := []*env{start(t, "", opt)}
	for range n - 1 {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, server.AdminTokenFile), []byte(envs[0].token), 0o600); err != nil {
			t.Fatal(err)
		}
		envs = append(envs, start(t, dir, opt))
	}
	return envs
}

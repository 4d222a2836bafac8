package server_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/moatless/moatless/internal/agent"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store/storetest"
)

// x509Watcher forwards every X.509 context the Workload API pushes.
type x509Watcher struct{ ch chan *workloadapi.X509Context }

func (w x509Watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w.ch <- c }
func (w x509Watcher) OnX509ContextWatchError(error)                  {}

// BenchmarkCrossReplicaPropagation: an entry created through replica B
// reaches a workload on an agent connected to replica A: the time from the
// admin API's answer on B to the workload's Workload API update carrying
// an SVID for the new entry (B's commit, the notification, A's refresh,
// A's watch stream, the agent signing the SVID through A, the push to the
// workload). One change per iteration; p50 and p99 are reported. The poll
// interval is a minute, so nothing arrives by polling.
//
//	go test -run '^$' -bench CrossReplicaPropagation -benchtime 200x ./internal/server/
func BenchmarkCrossReplicaPropagation(b *testing.B) {
	dsn := storetest.PostgresDSN(b)
	kek := filepath.Join(b.TempDir(), "kek")
	opt := func(c *config.Server) { c.Store = dsn; c.KEKFile = kek; c.PollInterval = 60_000_000_000 }
	a := startTB(b, "", nil, opt)
	bDir := b.TempDir()
	os.WriteFile(filepath.Join(bDir, server.AdminTokenFile), []byte(a.token), 0o600)
	rb := startTB(b, bDir, nil, opt)

	const nodeID = "spiffe://example.org/agent/bench"
	var tok server.JoinTokenResponse
	a.admin("POST", server.PathAdminJoinTokens, server.JoinTokenRequest{SPIFFEID: nodeID}, &tok)
	sock := filepath.Join(shortDir(b), "agent.sock")
	ag, err := agent.New(agent.Config{
		Node: agent.NodeConfig{
			ServerAddrs: []string{a.addr}, // the agent is on A only
			TrustBundle: readPEMFile(b, filepath.Join(a.dir, server.BundleFile)),
			JoinToken:   tok.Token,
		},
		SocketPath: sock,
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { ag.Serve(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	// A first entry, so the workload has an identity to watch from.
	uid := "uid:" + strconv.Itoa(os.Getuid())
	rb.admin("POST", server.PathAdminEntries, entryReq(nodeID, "spiffe://example.org/bench/0", "unix:"+uid), nil)
	w := x509Watcher{ch: make(chan *workloadapi.X509Context, 64)}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	go workloadapi.WatchX509Context(wctx, w, workloadapi.WithAddr("unix://"+sock))
	waitSVIDs(b, w.ch, 1)

	var lat []time.Duration
	b.ResetTimer()
	for i := range b.N {
		id := fmt.Sprintf("spiffe://example.org/bench/%d", i+1)
		rb.admin("POST", server.PathAdminEntries, entryReq(nodeID, id, "unix:"+uid), nil)
		t0 := time.Now()
		waitSVIDs(b, w.ch, i+2)
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	b.ReportMetric(float64(q(0.5).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(q(0.99).Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
}

// waitSVIDs reads updates until the workload holds n SVIDs.
func waitSVIDs(b *testing.B, ch <-chan *workloadapi.X509Context, n int) {
	b.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case c := <-ch:
			if len(c.SVIDs) >= n {
				return
			}
		case <-deadline:
			b.Fatalf("the workload never held %d SVIDs", n)
		}
	}
}

func shortDir(b testing.TB) string {
	d, err := os.MkdirTemp("", "mlb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(d) })
	return d
}

package agent

import (
	"context"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/wire"
)

// TestAgentHoldsCallsUntilFirstSync: a workload that asks as the agent
// starts, while its SVID is still being signed, waits for it instead of
// being told it has no identity; a call that outlasts FirstSyncWait is
// answered from what the agent holds.
func TestAgentHoldsCallsUntilFirstSync(t *testing.T) {
	f := newFakeServer(t)
	f.tokens["t"] = nodeID
	f.entries = []wire.Entry{uidEntry("e1", "spiffe://example.org/web", time.Hour)}
	gate := make(chan struct{})
	f.signGate = gate
	af := startAgent(t, f, "t", "")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	type result struct {
		id  string
		err error
	}
	got := make(chan result, 1)
	go func() {
		s, err := client(t, af.sock).FetchX509SVID(ctx)
		if err != nil {
			got <- result{err: err}
			return
		}
		got <- result{id: s.ID.String()}
	}()
	// The call is held while signing is.
	select {
	case r := <-got:
		t.Fatalf("answered before the first sync: %+v", r)
	case <-time.After(300 * time.Millisecond):
	}
	close(gate)
	r := <-got
	if r.err != nil || r.id != "spiffe://example.org/web" {
		t.Fatalf("after the first sync: %+v, want the entry's SVID", r)
	}
}

// TestWorkloadCallsAnsweredWhenSyncNeverCompletes: with the server
// unreachable for signing, calls are answered after FirstSyncWait (no
// identity yet) instead of hanging.
func TestWorkloadCallsAnsweredWhenSyncNeverCompletes(t *testing.T) {
	f := newFakeServer(t)
	f.tokens["t"] = nodeID
	f.entries = []wire.Entry{uidEntry("e1", "spiffe://example.org/web", time.Hour)}
	gate := make(chan struct{})
	t.Cleanup(func() { close(gate) })
	f.signGate = gate
	af := startAgentWith(t, f, "t", "", func(c *Config) { c.FirstSyncWait = 200 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := client(t, af.sock).FetchX509SVID(ctx); err == nil {
		t.Fatal("an SVID that was never signed was served")
	}
	if d := time.Since(start); d < 200*time.Millisecond || ctx.Err() != nil {
		t.Fatalf("answered after %s (context %v), want after FirstSyncWait", d, ctx.Err())
	}
}

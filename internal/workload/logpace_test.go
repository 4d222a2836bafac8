package workload

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/moatless/moatless/internal/wire"
)

// countHandler counts the records logged at Info and above.
type countHandler struct{ n *atomic.Int64 }

func (h countHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }
func (h countHandler) Handle(context.Context, slog.Record) error {
	h.n.Add(1)
	return nil
}
func (h countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countHandler) WithGroup(string) slog.Handler      { return h }

// TestCallerLogLinesArePaced: a local process with no identity calling
// the Workload API in a loop makes the agent write at most callerLogBurst
// lines at once (callerLogRate a second after), not one a call; once time
// passes, lines are written again.
func TestCallerLogLinesArePaced(t *testing.T) {
	var lines atomic.Int64
	var clock atomic.Int64
	t0 := time.Now()
	clock.Store(t0.UnixNano())
	f := newFixtureWith(t, func(c *Config) {
		c.Logger = slog.New(countHandler{&lines})
		c.Now = func() time.Time { return time.Unix(0, clock.Load()) }
	})
	f.publish(1, nil, f.identity("spiffe://example.org/other", time.Hour, wire.Selector{Type: "unix", Value: "uid:4242424"}))
	c := f.raw(t)
	ctx := withHeader(ctxT(t))
	// The first answer comes after the server's own start-up lines.
	if _, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"aud"}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("FetchJWTSVID: %v, want PermissionDenied", err)
	}
	base := lines.Load() - 1
	const calls = 3 * callerLogBurst
	for range calls - 1 {
		_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"aud"}})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("FetchJWTSVID: %v, want PermissionDenied", err)
		}
	}
	if got := lines.Load() - base; got > callerLogBurst {
		t.Fatalf("%d calls refused wrote %d log lines, want at most %d", calls, got, callerLogBurst)
	}
	clock.Add(int64(time.Second))
	before := lines.Load()
	if _, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"aud"}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	if lines.Load() == before {
		t.Fatal("no line after the bound refilled")
	}
}

func TestLogPacerCountsSuppressed(t *testing.T) {
	var got []int64
	h := recordHandler{f: func(r slog.Record) {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "suppressed" {
				got = append(got, a.Value.Int64())
			}
			return true
		})
	}}
	l := slog.New(h)
	p := newLogPacer()
	t0 := time.Unix(1000, 0)
	for range callerLogBurst + 7 {
		p.log(l, t0, slog.LevelInfo, "x")
	}
	p.log(l, t0.Add(time.Second), slog.LevelInfo, "x")
	if len(got) != 1 || got[0] != 7 {
		t.Fatalf("suppressed counts logged: %v, want [7]", got)
	}
}

type recordHandler struct{ f func(slog.Record) }

func (h recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.f(r)
	return nil
}
func (h recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h recordHandler) WithGroup(string) slog.Handler      { return h }

package workload

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Bounds of the log lines callers cause (callerLogRate a second
// sustained, callerLogBurst at once), all callers together.
const (
	callerLogRate  = 10
	callerLogBurst = 100
)

// logPacer bounds the log lines that Workload API callers cause: a denied
// attestation, a caller with no identity, a JWT-SVID that could not be
// had. Any local process may call the API as fast as it likes; unpaced,
// each call would be a line, and a loop would fill the agent's log (and
// disk) and bury everything else in it. Lines past the bound are counted
// and the count goes on the next line written ("suppressed"). Metrics
// (OnAttestFailure) still count every event. Safe for concurrent use.
type logPacer struct {
	mu         sync.Mutex
	lim        *rate.Limiter
	suppressed int
}

func newLogPacer() *logPacer {
	return &logPacer{lim: rate.NewLimiter(callerLogRate, callerLogBurst)}
}

// log writes the line at level unless the bound is spent at now.
func (p *logPacer) log(l *slog.Logger, now time.Time, level slog.Level, msg string, args ...any) {
	p.mu.Lock()
	if !p.lim.AllowN(now, 1) {
		p.suppressed++
		p.mu.Unlock()
		return
	}
	n := p.suppressed
	p.suppressed = 0
	p.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	l.Log(context.Background(), level, msg, args...)
}

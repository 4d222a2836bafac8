package server

import (
	"net/http"
	"sync"
	"time"

	"github.com/moatless/moatless/internal/wire"
)

// Per-request I/O deadlines for everything but the watch stream: a client
// that trickles its body or stops reading the answer loses its request
// instead of holding a goroutine forever. (http.Server.ReadTimeout would
// also cut long-lived watch streams, so it stays unset.)
const (
	requestReadTimeout  = 30 * time.Second
	requestWriteTimeout = 60 * time.Second
)

func (s *Server) withDeadlines(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !(r.Method == http.MethodGet && r.URL.Path == wire.PathWatch) {
			rc := http.NewResponseController(w)
			now := time.Now()
			_ = rc.SetReadDeadline(now.Add(requestReadTimeout))
			_ = rc.SetWriteDeadline(now.Add(requestWriteTimeout))
		}
		next.ServeHTTP(w, r)
	})
}

// failLimiter bounds how many refused anonymous requests (failed
// attestations, admin calls without a valid credential) are processed and
// audited per second. Each refusal is an fsynced audit record, so without
// a bound an unauthenticated flood would turn into a disk-write flood.
// Over the bound, such requests get 429 and are only counted in the
// metrics. Authenticated callers and successful attestations are never
// limited. Safe for concurrent use.
type failLimiter struct {
	mu     sync.Mutex
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	last   time.Time
}

func newFailLimiter(rate, burst float64) *failLimiter {
	return &failLimiter{rate: rate, burst: burst, tokens: burst}
}

// allow takes one token at now, reporting whether one was left.
func (l *failLimiter) allow(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() {
		if d := now.Sub(l.last).Seconds(); d > 0 {
			l.tokens = min(l.burst, l.tokens+d*l.rate)
		}
	}
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}

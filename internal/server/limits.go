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

// keyedLimiter is a token bucket per key (a node's SPIFFE ID): rate tokens
// per second up to burst, a new key starting full. It bounds what one
// authenticated caller may add to the audit log, however many requests it
// spreads that over. Buckets that have refilled are equivalent to absent
// ones, so they are dropped when the map reaches max keys; if every bucket
// is still in use, new keys are refused until one refills. Safe for
// concurrent use.
type keyedLimiter struct {
	rate, burst float64
	max         int

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newKeyedLimiter(rate, burst float64, max int) *keyedLimiter {
	return &keyedLimiter{rate: rate, burst: burst, max: max, buckets: map[string]*bucket{}}
}

// take takes n tokens from key's bucket at now if it holds them. If it
// does not, it takes nothing and says how long until it will (0 when n
// exceeds the burst and never will).
func (l *keyedLimiter) take(key string, now time.Time, n float64) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= l.max {
			l.sweep(now)
		}
		if len(l.buckets) >= l.max {
			return false, time.Duration(float64(time.Second) / l.rate)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	l.refill(b, now)
	switch {
	case n > l.burst:
		return false, 0
	case b.tokens < n:
		return false, time.Duration((n - b.tokens) / l.rate * float64(time.Second))
	}
	b.tokens -= n
	return true, 0
}

func (l *keyedLimiter) refill(b *bucket, now time.Time) {
	if d := now.Sub(b.last).Seconds(); d > 0 {
		b.tokens = min(l.burst, b.tokens+d*l.rate)
		b.last = now
	}
}

// sweep drops the buckets that are full at now.
func (l *keyedLimiter) sweep(now time.Time) {
	for k, b := range l.buckets {
		if l.refill(b, now); b.tokens >= l.burst {
			delete(l.buckets, k)
		}
	}
}

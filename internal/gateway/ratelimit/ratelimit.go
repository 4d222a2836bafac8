// Package ratelimit counts requests in sliding windows, in memory or in
// Redis shared by several gateway replicas.
//
// The window is the sliding-window counter: the count of the current
// fixed window plus the previous window's count weighted by how much of
// it still overlaps the sliding window. It needs two counters per key,
// never lets more than the limit through in any window-long span by more
// than the approximation's error, and has no burst at window edges, unlike
// a fixed window.
package ratelimit

import (
	"context"
	"hash/maphash"
	"math"
	"sync"
	"time"
)

// Result is the outcome of one Take.
type Result struct {
	Allowed bool
	Limit   int64
	// Remaining is how many more requests the window allows now.
	Remaining int64
	// Reset is when the current fixed window ends (RateLimit-Reset).
	Reset time.Duration
	// RetryAfter, when not Allowed, is how long until one more request
	// would be allowed (Retry-After).
	RetryAfter time.Duration
}

// Store counts one request under key against limit per window. It is
// safe for concurrent use. An error means the store could not answer;
// the caller decides to fail open or closed.
type Store interface {
	Take(ctx context.Context, key string, limit int64, window time.Duration) (Result, error)
}

// decide is the sliding-window arithmetic shared by both stores. prev and
// cur are the counts of the previous and current fixed windows before
// this request; elapsed is how far into the current window it is.
func decide(prev, cur int64, elapsed, window time.Duration, limit int64) Result {
	w := float64(window)
	weight := (w - float64(elapsed)) / w
	est := float64(prev)*weight + float64(cur)
	r := Result{Limit: limit, Reset: window - elapsed}
	if est+1 <= float64(limit) {
		r.Allowed = true
		r.Remaining = int64(math.Floor(float64(limit) - est - 1))
		return r
	}
	// Denied: how long until the estimate leaves room for one more.
	var d float64
	if cur+1 <= limit && prev > 0 {
		// Within this window, as the previous window's weight decays.
		d = w - float64(elapsed) - float64(limit-cur-1)*w/float64(prev)
	} else {
		// Not before the next window, where cur becomes the previous
		// count and decays from its start.
		next := 0.0
		if cur > 0 {
			next = w * (1 - float64(limit-1)/float64(cur))
		}
		d = w - float64(elapsed) + math.Max(next, 0)
	}
	r.RetryAfter = time.Duration(math.Max(d, float64(time.Millisecond)))
	return r
}

// Memory is a Store in this process's memory: each gateway replica
// counts alone. Keys are sharded; a shard holding more than its part of
// MaxKeys drops the keys of windows that are over, and when that is not
// enough every new key counts against one shared overflow counter, so a
// flood of distinct keys (spoofed API keys) costs bounded memory and is
// limited rather than let through.
type Memory struct {
	now    func() time.Time
	max    int
	seed   maphash.Seed
	shards [64]memShard
}

type memShard struct {
	mu sync.Mutex
	m  map[string]*counter
}

type counter struct {
	idx       int64 // the current fixed window's index
	prev, cur int64
	window    time.Duration
}

// DefaultMaxKeys bounds the keys a Memory store holds.
const DefaultMaxKeys = 1 << 20

// NewMemory returns a Memory store; now nil means time.Now, maxKeys <= 0
// means DefaultMaxKeys.
func NewMemory(now func() time.Time, maxKeys int) *Memory {
	if now == nil {
		now = time.Now
	}
	if maxKeys <= 0 {
		maxKeys = DefaultMaxKeys
	}
	m := &Memory{now: now, max: maxKeys, seed: maphash.MakeSeed()}
	for i := range m.shards {
		m.shards[i].m = map[string]*counter{}
	}
	return m
}

const overflowKey = "\x00overflow"

// Take implements Store; it never fails.
func (m *Memory) Take(_ context.Context, key string, limit int64, window time.Duration) (Result, error) {
	now := m.now().UnixNano()
	idx := now / int64(window)
	elapsed := time.Duration(now - idx*int64(window))
	s := &m.shards[maphash.String(m.seed, key)%uint64(len(m.shards))]
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.m[key]
	if c == nil {
		if len(s.m) >= m.max/len(m.shards) {
			s.evict(now)
		}
		if len(s.m) >= m.max/len(m.shards) {
			key = overflowKey
			c = s.m[key]
		}
		if c == nil {
			c = &counter{idx: idx, window: window}
			s.m[key] = c
		}
	}
	switch {
	case c.idx == idx:
	case c.idx == idx-1:
		c.prev, c.cur, c.idx = c.cur, 0, idx
	default:
		c.prev, c.cur, c.idx = 0, 0, idx
	}
	r := decide(c.prev, c.cur, elapsed, window, limit)
	if r.Allowed {
		c.cur++
	}
	return r, nil
}

// evict drops counters whose last two windows are over.
func (s *memShard) evict(now int64) {
	for k, c := range s.m {
		if now/int64(c.window) > c.idx+1 {
			delete(s.m, k)
		}
	}
}

// Len is the number of keys held, for tests and metrics.
func (m *Memory) Len() int {
	n := 0
	for i := range m.shards {
		m.shards[i].mu.Lock()
		n += len(m.shards[i].m)
		m.shards[i].mu.Unlock()
	}
	return n
}

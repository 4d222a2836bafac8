package ratelimit

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/gateway/ratelimit/redistest"
)

func TestDecide(t *testing.T) {
	tests := []struct {
		name            string
		prev, cur       int64
		elapsed         time.Duration
		limit           int64
		allowed         bool
		remaining       int64
		retryAfterAtMin time.Duration
	}{
		{"empty", 0, 0, 0, 10, true, 9, 0},
		{"last_in_window", 0, 9, time.Second, 10, true, 0, 0},
		{"full_window", 0, 10, time.Second, 10, false, 0, 59 * time.Second},
		{"previous_window_weighs", 10, 0, 0, 10, false, 0, time.Millisecond},
		{"previous_window_half_gone", 10, 4, 30 * time.Second, 10, true, 0, 0},
		{"previous_window_half_gone_full", 10, 5, 30 * time.Second, 10, false, 0, time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := decide(tt.prev, tt.cur, tt.elapsed, time.Minute, tt.limit)
			if r.Allowed != tt.allowed || (r.Allowed && r.Remaining != tt.remaining) {
				t.Fatalf("decide = %+v", r)
			}
			if !r.Allowed && (r.RetryAfter < tt.retryAfterAtMin || r.RetryAfter > 2*time.Minute) {
				t.Fatalf("retry after %s", r.RetryAfter)
			}
			if !r.Allowed {
				// Waiting RetryAfter makes room: the estimate then fits.
				e := tt.elapsed + r.RetryAfter
				prev, cur := tt.prev, tt.cur
				if e >= time.Minute {
					prev, cur, e = cur, 0, e-time.Minute
				}
				if r2 := decide(prev, cur, e+time.Millisecond, time.Minute, tt.limit); !r2.Allowed {
					t.Fatalf("still denied after Retry-After %s: %+v", r.RetryAfter, r2)
				}
			}
		})
	}
}

// fakeClock is an injected clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestMemorySlidingWindow(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	m := NewMemory(clk.now, 0)
	ctx := context.Background()
	take := func() Result { r, _ := m.Take(ctx, "k", 5, time.Minute); return r }
	for i := range 5 {
		if r := take(); !r.Allowed || r.Remaining != int64(4-i) {
			t.Fatalf("request %d: %+v", i, r)
		}
	}
	r := take()
	if r.Allowed || r.RetryAfter <= 0 {
		t.Fatalf("sixth request: %+v", r)
	}
	// At the next window's start the previous window still counts fully.
	clk.add(time.Minute)
	if take().Allowed {
		t.Fatal("window edge burst allowed")
	}
	// Most of the previous window has slid out.
	clk.add(50 * time.Second)
	if !take().Allowed {
		t.Fatal("denied once the old window slid out")
	}
	// Other keys are counted apart.
	if r, _ := m.Take(ctx, "other", 5, time.Minute); !r.Allowed {
		t.Fatal("other key limited")
	}
}

func TestMemoryBoundsKeys(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	m := NewMemory(clk.now, 64*4)
	ctx := context.Background()
	denied := 0
	for i := range 10000 {
		if r, _ := m.Take(ctx, fmt.Sprint("key-", i), 100, time.Minute); !r.Allowed {
			denied++
		}
	}
	if n := m.Len(); n > 64*4+64 {
		t.Fatalf("%d keys held, bound %d", n, 64*4)
	}
	if denied == 0 {
		t.Fatal("a flood of distinct keys was never limited")
	}
	clk.add(3 * time.Minute)
	if r, _ := m.Take(ctx, "fresh", 100, time.Minute); !r.Allowed {
		t.Fatal("fresh key denied after old windows are over")
	}
}

func TestRedisSharedLimit(t *testing.T) {
	srv := redistest.Start(t)
	a, err := NewRedis(srv.URL(), "test:")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, _ := NewRedis(srv.URL(), "test:")
	defer b.Close()
	ctx := context.Background()
	allowed := 0
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			s := a
			if i%2 == 1 {
				s = b
			}
			r, err := s.Take(ctx, "user", 25, time.Hour)
			if err != nil {
				t.Error(err)
				return
			}
			if r.Allowed {
				mu.Lock()
				allowed++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if allowed != 25 {
		t.Fatalf("%d of 40 allowed through two clients, want exactly 25", allowed)
	}
	r, _ := a.Take(ctx, "user", 25, time.Hour)
	if r.Allowed || r.RetryAfter <= 0 || r.Limit != 25 {
		t.Fatalf("over the limit: %+v", r)
	}
	srv.Kill()
	if _, err := a.Take(ctx, "user", 25, time.Hour); err == nil {
		t.Fatal("no error with Redis gone")
	}
}

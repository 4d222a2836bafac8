package ratelimit

import (
	"context"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/gateway/ratelimit/redistest"
)

// cpuTime is the process's user and system CPU time (getrusage): on the
// shared machine, cpu-ns/op is steadier than wall time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchTake takes from s for 1,000 client keys in turn, as a per-IP limit
// sees them, and reports this process's cpu-ns/op (for Redis, the
// client's side; the server's CPU is bench/gateway.sh's).
func benchTake(b *testing.B, s interface {
	Take(ctx context.Context, key string, limit int64, window time.Duration) (Result, error)
}) {
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = "ip:198.51.100." + strconv.Itoa(i)
	}
	ctx := context.Background()
	b.ReportAllocs()
	start, n := cpuTime(), 0
	for b.Loop() {
		if _, err := s.Take(ctx, keys[n%len(keys)], 1<<40, time.Minute); err != nil {
			b.Fatal(err)
		}
		n++
	}
	b.ReportMetric(float64(cpuTime()-start)/float64(n), "cpu-ns/op")
}

func BenchmarkTakeMemory(b *testing.B) {
	benchTake(b, NewMemory(time.Now, 0))
}

func BenchmarkTakeRedis(b *testing.B) {
	srv := redistest.Start(b)
	r, err := NewRedis(srv.URL(), "bench:")
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	benchTake(b, r)
}

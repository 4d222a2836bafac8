package detect

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
)

// engineBytesPerEdge fills an engine with edges (callers × paths to one
// destination, each judged in two minutes so its minute's evidence and
// its baselines are live) and returns the heap it takes per edge.
func engineBytesPerEdge(callers, paths, perMinute int) float64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	e := NewEngine(config.DetectSettings{})
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	for m := range 2 {
		now := t0.Add(time.Duration(m) * time.Minute)
		recs := make([]Record, 0, paths)
		for c := range callers {
			recs = recs[:0]
			src := fmt.Sprintf("spiffe://example.org/ns/prod/sa/caller-%d", c)
			for p := range paths * perMinute {
				p %= paths
				recs = append(recs, Record{Time: now, Reporter: "spiffe://example.org/ns/prod/sa/orders", Source: src,
					Destination: "spiffe://example.org/ns/prod/sa/orders", Method: "GET", Path: fmt.Sprintf("/api/v%d", p),
					Decision: "allow", Status: 2, Requests: 3, RespBytes: 1000})
			}
			e.Ingest(now, recs)
		}
	}
	e.Tick(t0.Add(2 * time.Minute)) // the steady state: the minutes closed
	runtime.GC()
	runtime.ReadMemStats(&after)
	n := len(e.edges)
	runtime.KeepAlive(e)
	return float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
}

// BenchmarkEngineMemory reports the engine's heap per edge state:
//
//	go test -tags grpcnotrace -run '^$' -bench EngineMemory -benchtime 1x ./internal/detect/
//
// wide: 20 callers of 500 paths each (edge states dominate); narrow:
// 10,000 callers of one path each (an edge, a pair and an identity
// each); busy: 200 callers of 20 paths, 20 records each a minute.
func BenchmarkEngineMemory(b *testing.B) {
	b.Run("wide", func(b *testing.B) {
		for range b.N {
			b.ReportMetric(engineBytesPerEdge(20, 500, 1), "bytes/edge")
		}
	})
	b.Run("busy", func(b *testing.B) {
		for range b.N {
			b.ReportMetric(engineBytesPerEdge(200, 20, 20), "bytes/edge")
		}
	})
	b.Run("narrow", func(b *testing.B) {
		for range b.N {
			b.ReportMetric(engineBytesPerEdge(10_000, 1, 1), "bytes/edge")
		}
	})
}

// TestBaselineFloat32: the estimates keep float32 (half the memory);
// over eight days of noisy minutes their expectations stay within 0.1%
// of the same estimates kept in float64, for requests and for bytes.
func TestBaselineFloat32(t *testing.T) {
	type est64 struct {
		mean, dev float64
		n         uint32
	}
	update := func(e *est64, x float64, window uint32) {
		if e.n == 0 {
			e.mean, e.dev, e.n = x, 0, 1
			return
		}
		d := max(e.dev, 1, 0.1*e.mean)
		c := min(max(x, e.mean-clipDevs*d), e.mean+clipDevs*d)
		w := 1 / float64(min(e.n+1, window))
		e.dev += w * (math.Abs(c-e.mean) - e.dev)
		e.mean += w * (c - e.mean)
		e.n++
	}
	for _, scale := range []float64{40, 3e7, 2e9} {
		var b Baseline
		var all est64
		rng := rand.New(rand.NewPCG(1, uint64(scale)))
		t0 := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
		for m := range 8 * 1440 {
			at := t0.Add(time.Duration(m) * time.Minute)
			x := scale * (1 + 0.5*math.Sin(float64(m)/1440*2*math.Pi) + 0.2*rng.NormFloat64())
			x = max(x, 0)
			b.Update(at, x)
			update(&all, x, allWindow)
		}
		got, dev, ok := b.all.mean, b.all.dev, b.all.n >= minGlobalMinutes
		if !ok || math.Abs(float64(got)-all.mean) > 1e-3*all.mean || math.Abs(float64(dev)-all.dev) > 1e-3*all.dev {
			t.Fatalf("scale %g: float32 mean %g dev %g, float64 mean %g dev %g", scale, got, dev, all.mean, all.dev)
		}
		t.Logf("scale %g: float32 mean %g dev %g, float64 mean %g dev %g", scale, got, dev, all.mean, all.dev)
	}
}

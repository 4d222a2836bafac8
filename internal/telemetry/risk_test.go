package telemetry

import (
	"fmt"
	"sync"
	"testing"

	"github.com/moatless/moatless/internal/wire"
)

func TestRiskScores(t *testing.T) {
	const a, b = "spiffe://example.org/ns/prod/sa/a", "spiffe://example.org/ns/prod/sa/b"
	var nilScores *RiskScores
	if nilScores.Score(a) != 0 || nilScores.Len() != 0 || nilScores.Attr(a).Value.AsFloat64() != 0 {
		t.Error("a nil RiskScores must know no score")
	}
	var s RiskScores
	if s.Score(a) != 0 {
		t.Error("the zero RiskScores must know no score")
	}
	s.Set(wire.RiskScores{Scores: []wire.RiskScore{{SPIFFEID: a, Score: 0.75}, {SPIFFEID: b, Score: 0.25}}})
	if s.Score(a) != 0.75 || s.Score(b) != 0.25 || s.Score("spiffe://example.org/x") != 0 || s.Len() != 2 {
		t.Errorf("after Set: a %v, b %v, len %d", s.Score(a), s.Score(b), s.Len())
	}
	if kv := s.Attr(a); kv.Key != "moatless.source.risk_score" || kv.Value.AsFloat64() != 0.75 {
		t.Errorf("Attr: %v", kv)
	}
	// A later section replaces the whole map: b is no longer at risk.
	s.Set(wire.RiskScores{Scores: []wire.RiskScore{{SPIFFEID: a, Score: 1}}})
	if s.Score(a) != 1 || s.Score(b) != 0 || s.Len() != 1 {
		t.Errorf("after the second Set: a %v, b %v", s.Score(a), s.Score(b))
	}
}

// TestRiskScoresConcurrent: readers never see a torn map while the watch
// stream replaces it (run with -race).
func TestRiskScoresConcurrent(t *testing.T) {
	var s RiskScores
	const id = "spiffe://example.org/ns/prod/sa/a"
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				if v := s.Score(id); v != 0 && v != 0.5 && v != 1 {
					t.Errorf("score %v", v)
					return
				}
			}
		}()
	}
	for i := range 200 {
		s.Set(wire.RiskScores{Scores: []wire.RiskScore{{SPIFFEID: id, Score: float64(i%2+1) / 2}}})
	}
	wg.Wait()
}

// BenchmarkRiskScore is the per-span cost of the risk score attribute:
// one lookup in the largest section the server sends.
func BenchmarkRiskScore(b *testing.B) {
	var s RiskScores
	scores := make([]wire.RiskScore, wire.MaxRiskScores)
	for i := range scores {
		scores[i] = wire.RiskScore{SPIFFEID: fmt.Sprintf("spiffe://example.org/ns/prod/sa/service-%d", i), Score: 0.5}
	}
	s.Set(wire.RiskScores{Scores: scores})
	for _, id := range []string{"spiffe://example.org/ns/prod/sa/service-4242", "spiffe://example.org/ns/prod/sa/unknown"} {
		b.Run(map[bool]string{true: "known", false: "unknown"}[s.Score(id) > 0], func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = s.Attr(id)
			}
		})
	}
}

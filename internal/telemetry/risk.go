package telemetry

import (
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"

	"github.com/moatless/moatless/internal/wire"
)

// AttrSourceRisk is the span attribute of the calling identity's risk
// score (0 to 1; 0 when the detectors know nothing against it).
const AttrSourceRisk = attribute.Key("moatless.source.risk_score")

// RiskScores is the risk score per SPIFFE ID as the server's watch stream
// last pushed it (wire.Update.Risk), for span attributes. Set replaces the
// whole map at once; Score is one atomic load and one map lookup, so the
// request path pays nothing more for it. The zero value (and a nil
// pointer) knows no score. Safe for concurrent use.
type RiskScores struct {
	m atomic.Pointer[map[string]float64]
}

// Set replaces the scores with r's (validated by the watch client).
func (s *RiskScores) Set(r wire.RiskScores) {
	m := make(map[string]float64, len(r.Scores))
	for _, x := range r.Scores {
		m[x.SPIFFEID] = x.Score
	}
	s.m.Store(&m)
}

// Score is id's risk score, 0 when unknown.
func (s *RiskScores) Score(id string) float64 {
	if s == nil {
		return 0
	}
	if m := s.m.Load(); m != nil {
		return (*m)[id]
	}
	return 0
}

// Len is how many identities have a score.
func (s *RiskScores) Len() int {
	if s == nil {
		return 0
	}
	if m := s.m.Load(); m != nil {
		return len(*m)
	}
	return 0
}

// Attr is id's score as the span attribute AttrSourceRisk.
func (s *RiskScores) Attr(id string) attribute.KeyValue {
	return AttrSourceRisk.Float64(s.Score(id))
}

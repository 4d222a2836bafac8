package agent

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/wire"
)

const riskA, riskB = "spiffe://example.org/ns/prod/sa/a", "spiffe://example.org/ns/prod/sa/b"

// TestApplyRisk: a valid risk section reaches OnRisk and the update is
// in force; any broken promise of the wire (too many scores, a score out
// of (0, 1], an ID that is no SPIFFE ID, one listed twice) refuses the
// whole update.
func TestApplyRisk(t *testing.T) {
	many := make([]wire.RiskScore, wire.MaxRiskScores+1)
	for i := range many {
		many[i] = wire.RiskScore{SPIFFEID: fmt.Sprintf("spiffe://example.org/sa/%d", i), Score: 0.5}
	}
	for _, tc := range []struct {
		name   string
		scores []wire.RiskScore
		err    string
	}{
		{name: "empty", scores: []wire.RiskScore{}},
		{name: "scores", scores: []wire.RiskScore{{SPIFFEID: riskA, Score: 0.25}, {SPIFFEID: riskB, Score: 1}}},
		{name: "at_the_bound", scores: many[:wire.MaxRiskScores]},
		{name: "over_the_bound", scores: many, err: "at most 10000"},
		{name: "zero_score", scores: []wire.RiskScore{{SPIFFEID: riskA, Score: 0}}, err: "want more than 0"},
		{name: "negative_score", scores: []wire.RiskScore{{SPIFFEID: riskA, Score: -0.5}}, err: "want more than 0"},
		{name: "score_above_one", scores: []wire.RiskScore{{SPIFFEID: riskA, Score: 1.01}}, err: "at most 1"},
		{name: "nan_score", scores: []wire.RiskScore{{SPIFFEID: riskA, Score: math.NaN()}}, err: "want more than 0"},
		{name: "not_a_spiffe_id", scores: []wire.RiskScore{{SPIFFEID: "https://example.org/a", Score: 0.5}}, err: "scores[0]"},
		{name: "empty_id", scores: []wire.RiskScore{{SPIFFEID: "", Score: 0.5}}, err: "scores[0]"},
		{name: "listed_twice", scores: []wire.RiskScore{{SPIFFEID: riskA, Score: 0.5}, {SPIFFEID: riskA, Score: 0.75}}, err: "listed twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got *wire.RiskScores
			n := &Node{cfg: NodeConfig{OnRisk: func(r wire.RiskScores) { got = &r }}, version: 3}
			err := n.apply(&wire.Update{Version: 7, Risk: &wire.RiskScores{Scores: tc.scores}})
			if tc.err == "" {
				if err != nil || got == nil || len(got.Scores) != len(tc.scores) || n.Version() != 7 {
					t.Fatalf("err %v, OnRisk %v, version %d", err, got != nil, n.Version())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err %v, want one saying %q", err, tc.err)
			}
			if got != nil || n.Version() != 3 {
				t.Errorf("a refused update was applied: OnRisk %v, version %d", got != nil, n.Version())
			}
		})
	}
}

// FuzzValidRisk: whatever a risk section holds, validRisk accepts it
// only when every promise of the wire holds.
func FuzzValidRisk(f *testing.F) {
	for _, s := range []string{
		`{"scores":[]}`,
		`{"scores":[{"spiffe_id":"` + riskA + `","score":0.5},{"spiffe_id":"` + riskB + `","score":1}]}`,
		`{"scores":[{"spiffe_id":"` + riskA + `","score":0}]}`,
		`{"scores":[{"spiffe_id":"` + riskA + `","score":1e308}]}`,
		`{"scores":[{"spiffe_id":"spiffe://x/../y","score":0.5}]}`,
		`{"scores":[{"spiffe_id":"` + riskA + `","score":0.5},{"spiffe_id":"` + riskA + `","score":0.5}]}`,
		`{"scores":null}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var r wire.RiskScores
		if json.Unmarshal(b, &r) != nil || validRisk(&r) != nil {
			return
		}
		if len(r.Scores) > wire.MaxRiskScores {
			t.Fatalf("accepted %d scores", len(r.Scores))
		}
		seen := map[string]bool{}
		for _, s := range r.Scores {
			if !(s.Score > 0 && s.Score <= 1) || seen[s.SPIFFEID] || !strings.HasPrefix(s.SPIFFEID, "spiffe://") {
				t.Fatalf("accepted %+v", s)
			}
			seen[s.SPIFFEID] = true
		}
	})
}

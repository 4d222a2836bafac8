package server

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

func TestRiskScores(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	since := now.Add(-time.Hour)
	const a, b, c = "spiffe://example.org/ns/prod/sa/a", "spiffe://example.org/ns/prod/sa/b", "spiffe://example.org/ns/prod/sa/c"
	f := func(id, sev string, age time.Duration) store.RiskFinding {
		return store.RiskFinding{Identity: id, Severity: sev, LastAt: now.Add(-age)}
	}
	for _, tc := range []struct {
		name    string
		in      []store.RiskFinding
		max     int
		want    []wire.RiskScore
		trimmed int
	}{
		{name: "none", want: []wire.RiskScore{}},
		{name: "highest_severity_plus_tenth_per_extra_finding_rounded",
			in:   []store.RiskFinding{f(a, "medium", 0), f(a, "low", time.Minute), f(a, "high", 2*time.Minute), f(b, "low", 0)},
			want: []wire.RiskScore{{SPIFFEID: a, Score: 0.95}, {SPIFFEID: b, Score: 0.25}}},
		{name: "capped_at_one", in: []store.RiskFinding{f(a, "critical", 0), f(a, "low", 0)}, want: []wire.RiskScore{{SPIFFEID: a, Score: 1}}},
		{name: "findings_outside_the_window_do_not_count",
			in:   []store.RiskFinding{f(a, "high", 61*time.Minute), f(b, "low", 59*time.Minute)},
			want: []wire.RiskScore{{SPIFFEID: b, Score: 0.25}}},
		{name: "only_spiffe_ids", in: []store.RiskFinding{f("203.0.113.7", "high", 0), f("client-app", "medium", 0),
			f("spiffe://bad id", "high", 0), f(b, "medium", 0)}, want: []wire.RiskScore{{SPIFFEID: b, Score: 0.5}}},
		{name: "unknown_severity_counts_nothing", in: []store.RiskFinding{f(a, "dire", 0)}, want: []wire.RiskScore{}},
		{name: "over_the_bound_the_highest_scores_stay_sorted_by_id",
			in:   []store.RiskFinding{f(c, "high", 0), f(a, "low", 0), f(b, "high", 0)},
			max:  2,
			want: []wire.RiskScore{{SPIFFEID: b, Score: 0.75}, {SPIFFEID: c, Score: 0.75}}, trimmed: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			max := tc.max
			if max == 0 {
				max = wire.MaxRiskScores
			}
			got, trimmed := riskScores(tc.in, since, max)
			if diff := cmp.Diff(tc.want, got.Scores); diff != "" || trimmed != tc.trimmed {
				t.Errorf("scores (-want +got):\n%s\ntrimmed %d, want %d", diff, trimmed, tc.trimmed)
			}
		})
	}
}

// TestRiskScoresBound: at the wire bound the section stays under the 1
// MiB the bound promises, with long SPIFFE IDs.
func TestRiskScoresBound(t *testing.T) {
	now := time.Now()
	in := make([]store.RiskFinding, 0, wire.MaxRiskScores+5)
	for i := range wire.MaxRiskScores + 5 {
		in = append(in, store.RiskFinding{Identity: fmt.Sprintf("spiffe://example.org/ns/production/sa/service-%06d", i), Severity: "medium", LastAt: now})
	}
	got, trimmed := riskScores(in, now.Add(-time.Hour), wire.MaxRiskScores)
	if len(got.Scores) != wire.MaxRiskScores || trimmed != 5 {
		t.Fatalf("%d scores, %d trimmed", len(got.Scores), trimmed)
	}
	if b, _ := json.Marshal(got); len(b) >= 1<<20 {
		t.Errorf("the section at the bound is %d bytes", len(b))
	}
}

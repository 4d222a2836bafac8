package detect

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/moatless/moatless/internal/config"
)

func TestKeyOf(t *testing.T) {
	for _, tc := range []struct {
		name                     string
		detector, identity, dest string
		want                     Key
	}{
		{"rate_keeps_the_destination", DetectorRate, "a", "b", Key{DetectorRate, "a", "b"}},
		{"probing_has_none", DetectorProbing, "a", "", Key{DetectorProbing, "a", ""}},
		{"new_edge_per_identity", DetectorNewEdge, "a", "b", Key{DetectorNewEdge, "a", ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := KeyOf(tc.detector, tc.identity, tc.dest); got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestDelta: each copy the engine returns carries the detections no
// earlier copy carried; reading findings does not take them.
func TestDelta(t *testing.T) {
	e := NewEngine(config.DetectSettings{})
	now := time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC)
	reuse := Event{Time: now, Kind: EventRefreshReuse, Identity: "client-a"}
	for i, want := range []struct{ count, delta int }{{1, 1}, {2, 1}, {3, 1}} {
		fs := e.Observe(now.Add(time.Duration(i)*time.Second), reuse)
		if len(fs) != 1 || fs[0].Count != want.count || fs[0].Delta != want.delta {
			t.Fatalf("detection %d: %+v, want count %d delta %d", i, fs, want.count, want.delta)
		}
	}
	if fs := e.Findings("client-a", now); len(fs) != 1 || fs[0].Count != 3 {
		t.Fatalf("findings: %+v", fs)
	}
	// A copy the caller could not store gives its detections back.
	f := e.Observe(now.Add(5*time.Second), reuse)[0]
	e.Unstored(f)
	if g := e.Observe(now.Add(6*time.Second), reuse)[0]; g.Count != 5 || g.Delta != 2 {
		t.Fatalf("after an unstored copy: count %d delta %d, want 5 and 2", g.Count, g.Delta)
	}
}

func rec(at time.Time, dst string, n uint64) Record {
	return Record{Time: at, Source: "a", Destination: dst, Decision: "deny", Requests: n}
}

func TestFold(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC)
	base := func() Finding {
		return Finding{ID: "stored", Time: t0, LastSeen: t0.Add(time.Minute), Count: 5, Detector: DetectorProbing, Severity: Medium,
			Identity: "a", Summary: "medium", Evidence: map[string]string{"refusals_per_minute": "40", "destinations": " x"},
			Records: []Record{rec(t0, "d", 1)}, FirstRecord: t0}
	}
	many := make([]Record, maxEvidence)
	for i := range many {
		many[i] = rec(t0.Add(time.Duration(i)*time.Second), "d", uint64(i+2))
	}
	var longDsts string
	for i := range maxDestinations / 20 {
		longDsts += fmt.Sprintf(" spiffe://td/ns/prod/sa/service-%d", i)
	}
	for _, tc := range []struct {
		name  string
		u     Finding
		check func(t *testing.T, f Finding)
	}{
		{"adds_the_delta_not_the_count", Finding{ID: "local", Count: 9, Delta: 2, LastSeen: t0.Add(2 * time.Minute), Time: t0.Add(time.Minute), Severity: Medium},
			func(t *testing.T, f Finding) {
				if f.Count != 7 || f.ID != "stored" || !f.LastSeen.Equal(t0.Add(2*time.Minute)) || !f.Time.Equal(t0) {
					t.Fatalf("%+v", f)
				}
			}},
		{"earlier_first_sighting_wins", Finding{Delta: 1, Time: t0.Add(-time.Minute), LastSeen: t0, FirstRecord: t0.Add(-2 * time.Minute)},
			func(t *testing.T, f Finding) {
				if !f.Time.Equal(t0.Add(-time.Minute)) || !f.LastSeen.Equal(t0.Add(time.Minute)) || !f.FirstRecord.Equal(t0.Add(-2*time.Minute)) {
					t.Fatalf("%+v", f)
				}
			}},
		{"severity_upgrades_with_its_summary", Finding{Delta: 1, LastSeen: t0, Severity: High, Summary: "high"},
			func(t *testing.T, f Finding) {
				if f.Severity != High || f.Summary != "high" {
					t.Fatalf("%+v", f)
				}
			}},
		{"severity_never_downgrades", Finding{Delta: 1, LastSeen: t0.Add(time.Hour), Severity: Low, Summary: "low"},
			func(t *testing.T, f Finding) {
				if f.Severity != Medium || f.Summary != "medium" {
					t.Fatalf("%+v", f)
				}
			}},
		{"later_numbers_replace", Finding{Delta: 1, LastSeen: t0.Add(time.Hour), Evidence: map[string]string{"refusals_per_minute": "90", "threshold": "20"}},
			func(t *testing.T, f Finding) {
				if f.Evidence["refusals_per_minute"] != "90" || f.Evidence["threshold"] != "20" {
					t.Fatalf("%+v", f.Evidence)
				}
			}},
		{"earlier_numbers_only_fill_in", Finding{Delta: 1, LastSeen: t0, Evidence: map[string]string{"refusals_per_minute": "10", "threshold": "20"}},
			func(t *testing.T, f Finding) {
				if f.Evidence["refusals_per_minute"] != "40" || f.Evidence["threshold"] != "20" {
					t.Fatalf("%+v", f.Evidence)
				}
			}},
		{"destinations_joined_once", Finding{Delta: 1, LastSeen: t0, Destination: "y", Evidence: map[string]string{"destinations": " x z"}},
			func(t *testing.T, f Finding) {
				if f.Evidence["destinations"] != " x y z" {
					t.Fatalf("%q", f.Evidence["destinations"])
				}
			}},
		{"destinations_bounded", Finding{Delta: 1, LastSeen: t0, Evidence: map[string]string{"destinations": longDsts + " a b c"}},
			func(t *testing.T, f Finding) {
				if n := len(f.Evidence["destinations"]); n > maxDestinations+64 || strings.HasSuffix(f.Evidence["destinations"], " c") {
					t.Fatalf("%d bytes: %q", n, f.Evidence["destinations"][n-20:])
				}
			}},
		{"records_without_repeats_within_the_bound", Finding{Delta: 1, LastSeen: t0, Records: append([]Record{rec(t0.In(time.FixedZone("x", 3600)), "d", 1)}, many...)},
			func(t *testing.T, f Finding) {
				if len(f.Records) != maxEvidence || f.Records[0] != rec(t0, "d", 1) || f.Records[1].Requests != 2 {
					t.Fatalf("%d records: %+v", len(f.Records), f.Records[:2])
				}
			}},
		{"evidence_keys_bounded", Finding{Delta: 1, LastSeen: t0.Add(time.Hour), Evidence: func() map[string]string {
			m := map[string]string{}
			for i := range 2 * maxEvidenceKeys {
				m[fmt.Sprint("k", i)] = "v"
			}
			return m
		}()},
			func(t *testing.T, f Finding) {
				if len(f.Evidence) != maxEvidenceKeys {
					t.Fatalf("%d keys", len(f.Evidence))
				}
			}},
		{"incident_of_the_same_finding_taken_when_none", Finding{ID: "stored", Delta: 1, LastSeen: t0, IncidentID: "inc"},
			func(t *testing.T, f Finding) {
				if f.IncidentID != "inc" {
					t.Fatalf("incident %q", f.IncidentID)
				}
			}},
		{"incident_of_another_finding_not_taken", Finding{ID: "local", Delta: 1, LastSeen: t0, IncidentID: "inc"},
			func(t *testing.T, f Finding) {
				if f.IncidentID != "" {
					t.Fatalf("incident %q", f.IncidentID)
				}
			}},
		{"incident_kept", Finding{ID: "stored", Delta: 1, LastSeen: t0, IncidentID: "other"},
			func(t *testing.T, f Finding) {
				g := base()
				g.IncidentID = "mine"
				g.Fold(Finding{ID: "stored", IncidentID: "other"})
				if g.IncidentID != "mine" {
					t.Fatalf("replaced: %q", g.IncidentID)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := base()
			f.Fold(tc.u)
			tc.check(t, f)
		})
	}
}

// TestAdopt: the engine's open finding follows the stored finding it
// was merged into, keeping the detections it made since.
func TestAdopt(t *testing.T) {
	e := NewEngine(config.DetectSettings{})
	now := time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC)
	reuse := Event{Time: now, Kind: EventRefreshReuse, Identity: "client-a"}
	local := e.Observe(now, reuse)[0]
	// The next detection's copy could not be stored: the engine holds it
	// for the next copy.
	e.Unstored(e.Observe(now.Add(time.Second), reuse)[0])

	stored := local
	stored.ID, stored.Count, stored.Time, stored.IncidentID = "other-replica", 7, now.Add(-time.Minute), "inc"
	stored.Delta = 0
	e.Adopt(local.ID, stored)
	fs := e.Findings("client-a", now.Add(time.Second))
	if len(fs) != 1 || fs[0].ID != "other-replica" || fs[0].Count != 8 || fs[0].Delta != 1 || fs[0].IncidentID != "inc" || !fs[0].Time.Equal(now.Add(-time.Minute)) {
		t.Fatalf("after adopting: %+v", fs)
	}
	next := e.Observe(now.Add(2*time.Second), reuse)
	if len(next) != 1 || next[0].ID != "other-replica" || next[0].Count != 9 || next[0].Delta != 2 {
		t.Fatalf("the next detection: %+v", next)
	}

	// Adopting for a finding the engine no longer holds open changes
	// nothing.
	before := e.Findings("client-a", now.Add(2*time.Second))
	e.Adopt("gone", Finding{ID: "x", Detector: DetectorToken, Identity: "client-a", Count: 100})
	e.Adopt("gone", Finding{ID: "y", Detector: DetectorToken, Identity: "client-b", Count: 100})
	if diff := cmp.Diff(before, e.Findings("client-a", now.Add(2*time.Second))); diff != "" {
		t.Fatalf("adopting an unknown finding changed the open one:\n%s", diff)
	}
}

// FuzzFold folds a finding read from a stored body (another replica's,
// perhaps of another version) with any detections into another: no
// panic, the count is the sum, and the bounds of a finding hold.
func FuzzFold(f *testing.F) {
	f.Add([]byte(`{"id":"a","count":3,"severity":"medium","evidence":{"destinations":" x"},"records":[{"time":"2026-12-07T02:00:00Z","source":"s","destination":"d","decision":"deny","requests":1}]}`),
		[]byte(`{"id":"b","severity":"high","destination":"y","evidence":{"k":"v"}}`), 2)
	f.Add([]byte(`{"evidence":null,"records":null}`), []byte(`{"destination":"x","evidence":{"destinations":" a b c"}}`), 1)
	f.Add([]byte(`{}`), []byte(`{"last_seen":"0001-01-01T00:00:00Z","time":"9999-12-31T23:59:59Z"}`), 0)
	f.Add([]byte(`{"reporters":["b","a","b"]}`), []byte(`{"reporters":["c","a"],"records":[{"reporter":"d"}]}`), 1)
	f.Fuzz(func(t *testing.T, stored, update []byte, delta int) {
		var s, u Finding
		if json.Unmarshal(stored, &s) != nil || json.Unmarshal(update, &u) != nil {
			return
		}
		u.Delta = delta
		n := len(s.Records)
		dsts := len(s.Evidence["destinations"])
		keys := len(s.Evidence)
		count := s.Count
		reporters := len(s.Reporters)
		s.Fold(u)
		if len(s.Reporters) > max(reporters, maxReporters) {
			t.Fatalf("%d reporters", len(s.Reporters))
		}
		if c := Corroborate(s.Identity, []Finding{s, u}, time.Time{}, delta%12, nil); c.Risk < 0 || c.Risk > 1 {
			t.Fatalf("corroborated risk %v", c.Risk)
		}
		if s.Count != count+delta {
			t.Fatalf("count %d, want %d", s.Count, count+delta)
		}
		if len(s.Records) > max(n, maxEvidence) {
			t.Fatalf("%d records", len(s.Records))
		}
		if l := len(s.Evidence["destinations"]); l > max(dsts, maxDestinations+1+len(u.Destination)+len(u.Evidence["destinations"])) {
			t.Fatalf("destinations grew to %d bytes", l)
		}
		if len(s.Evidence) > max(keys, maxEvidenceKeys) {
			t.Fatalf("%d evidence keys", len(s.Evidence))
		}
		if _, err := json.Marshal(s); err != nil {
			t.Fatalf("folded finding does not marshal: %v", err)
		}
	})
}

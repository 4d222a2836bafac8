package detect

import (
	"crypto/sha256"
	"strconv"
	"testing"
	"time"
)

func TestReportsCountARetriedReportOnce(t *testing.T) {
	const node, other = "spiffe://example.org/ns/prod/sa/orders", "spiffe://example.org/ns/prod/sa/reports"
	keep := time.Hour
	t0 := time.Date(2026, 12, 8, 0, 0, 0, 0, time.UTC)
	a, b := sha256.Sum256([]byte("report a")), sha256.Sum256([]byte("report b"))
	type step struct {
		reporter string
		sum      [32]byte
		at       time.Duration // after t0
		want     ReportState
		done     int // 0: no Done; 1: Done taken; -1: Done refused
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"retry_after_a_lost_answer_is_taken_already", []step{
			{node, a, 0, ReportNew, 1},
			{node, a, 10 * time.Second, ReportTaken, 0},
		}},
		{"another_report_is_new", []step{
			{node, a, 0, ReportNew, 1},
			{node, b, time.Second, ReportNew, 1},
		}},
		{"retry_while_the_first_is_being_recorded", []step{
			{node, a, 0, ReportNew, 0},
			{node, a, time.Second, ReportInFlight, 0},
		}},
		{"a_refused_report_is_counted_when_retried", []step{
			{node, a, 0, ReportNew, -1},
			{node, a, time.Second, ReportNew, 1},
			{node, a, 2 * time.Second, ReportTaken, 0},
		}},
		{"keyed_by_the_reporter", []step{
			{other, a, 0, ReportNew, 1},
			{node, a, time.Second, ReportNew, 1},
		}},
		{"forgotten_after_keep", []step{
			{node, a, 0, ReportNew, 1},
			{node, a, keep, ReportNew, 1},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReports(keep)
			for i, s := range tc.steps {
				now := t0.Add(s.at)
				if got := r.Begin(s.reporter, s.sum, now); got != s.want {
					t.Fatalf("step %d: %v, want %v", i, got, s.want)
				}
				if s.done != 0 {
					r.Done(s.reporter, s.sum, s.done > 0, now)
				}
			}
		})
	}
}

// TestReportsBounded: a reporter remembers its last few reports only,
// and reporters quiet for keep are forgotten when the table is full.
func TestReportsBounded(t *testing.T) {
	r := NewReports(time.Minute)
	t0 := time.Date(2026, 12, 8, 0, 0, 0, 0, time.UTC)
	for i := range reportsPerReporter + 1 {
		s := sha256.Sum256([]byte{byte(i)})
		r.Begin("n", s, t0)
		r.Done("n", s, true, t0)
	}
	if got := r.Begin("n", sha256.Sum256([]byte{0}), t0); got != ReportNew {
		t.Fatalf("the oldest of %d reports: %v, want it forgotten", reportsPerReporter+1, got)
	}
	if got := r.Begin("n", sha256.Sum256([]byte{reportsPerReporter}), t0); got != ReportTaken {
		t.Fatalf("the last report: %v, want taken", got)
	}
	for i := range maxReportReporters - 1 {
		r.by[strconv.Itoa(i)+"x"] = &reporterReports{last: t0}
	}
	later := t0.Add(2 * time.Minute)
	r.Begin("new", sha256.Sum256([]byte("x")), later)
	if r.Len() != 2 { // "n" holds one in flight; "new"
		t.Fatalf("%d reporters after a sweep of a full table, want 2", r.Len())
	}
}

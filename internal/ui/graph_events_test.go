package ui

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/audit"
)

// recordSource serves records as AuditSource does: details decoded.
type recordSource struct{ recs []audit.Record }

func (s recordSource) AuditRecords(_ context.Context, _ uint64, limit int, _ []string) ([]audit.Record, uint64, error) {
	return s.recs[:min(limit, len(s.recs))], 0, nil
}

// eventSource serves the same records as EventSource does: details
// encoded, as the store keeps them (bad replaces one record's details).
type eventSource struct {
	recordSource
	bad map[uint64]string
}

func (s eventSource) AuditEvents(_ context.Context, limit int, _ []string) ([]Event, uint64, error) {
	var out []Event
	for _, r := range s.recs[:min(limit, len(s.recs))] {
		b, err := json.Marshal(r.Details)
		if err != nil {
			return nil, 0, err
		}
		if v, ok := s.bad[r.Seq]; ok {
			b = []byte(v)
		}
		out = append(out, Event{Seq: r.Seq, Time: r.Time, Kind: r.Kind, Actor: r.Actor, Subject: r.Subject, Outcome: r.Outcome, Details: b})
	}
	return out, 0, nil
}

// TestGraphFromEvents: the graph built from undecoded events (one
// record's details decoded per edge) is the graph built from decoded
// records; details that do not decode where they are needed are an error.
func TestGraphFromEvents(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	var recs []audit.Record
	for i := range 300 {
		kind := audit.KindDecisionDeny
		if i%3 == 0 {
			kind = audit.KindDecisionAudit
		}
		caller := fmt.Sprintf("spiffe://example.org/ns/prod/sa/c%d", i%10)
		if i%50 == 0 {
			caller = ""
		}
		r := decision(kind, caller, fmt.Sprintf("spiffe://example.org/ns/prod/sa/s%d", i%4), fmt.Sprintf("prod/p%d", i), t0.Add(-time.Duration(i)*time.Second))
		r.Seq = uint64(1000 - i)
		recs = append(recs, r)
	}
	ctx := context.Background()
	want, _, err := (&UI{cfg: Config{Records: recordSource{recs}}}).graphRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := (&UI{cfg: Config{Records: eventSource{recordSource: recordSource{recs}}}}).graphRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	decoded := 0
	for _, r := range got {
		if r.Details != nil {
			decoded++
		}
	}
	if decoded != 22 { // (i%10, i%4): 20 pairs; the unknown caller (i%50 == 0) calls s0 and s2
		t.Errorf("%d records' details decoded, want one per (caller, callee) pair", decoded)
	}
	if g, w := buildGraph(got, nil), buildGraph(want, nil); !reflect.DeepEqual(g, w) {
		t.Fatalf("the graph from events differs:\n%+v\nwant\n%+v", g, w)
	}
	// A later record of a pair is never decoded; the newest one is.
	for _, tc := range []struct {
		name string
		seq  uint64
		want string
	}{
		{"later_record_not_read", recs[len(recs)-1].Seq, ""},
		{"newest_record_read", recs[1].Seq, "details are not a JSON object of strings"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := eventSource{recordSource: recordSource{recs}, bad: map[uint64]string{tc.seq: `{"decision": 1}`}}
			_, _, err := (&UI{cfg: Config{Records: src}}).graphRecords(ctx)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
}

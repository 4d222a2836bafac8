package server

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

// TestMergeFindingOutOfOrder: copies of one finding persisted out of
// order (two reports handled at once on one replica: the second copy
// reaches the store first) count each detection once.
func TestMergeFindingOutOfOrder(t *testing.T) {
	s := &Server{db: storetest.SQLite(t), detect: &detectState{engine: detect.NewEngine(config.DetectSettings{})}}
	ctx := context.Background()
	now := time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC)
	reuse := detect.Event{Time: now, Kind: detect.EventRefreshReuse, Identity: "client-a"}
	first := s.detect.engine.Observe(now, reuse)
	second := s.detect.engine.Observe(now.Add(time.Second), reuse)
	for i, tc := range []struct {
		copy   detect.Finding
		opened bool
		count  int
	}{{second[0], true, 1}, {first[0], false, 2}} {
		got, opened, err := s.mergeFinding(ctx, tc.copy)
		if err != nil {
			t.Fatal(err)
		}
		if opened != tc.opened || got.Count != tc.count || got.ID != first[0].ID || !got.LastSeen.Equal(now.Add(time.Second)) {
			t.Fatalf("copy %d: stored %+v (opened %v), want count %d (opened %v)", i, got, opened, tc.count, tc.opened)
		}
	}
}

// TestMergeFindingUnreadableBody: a stored finding whose body does not
// decode no longer fails every merge into its key until the claim
// expires (each failing merge dropped its detections); the finding is
// rebuilt from its row's columns and keeps its ID, count and incident.
func TestMergeFindingUnreadableBody(t *testing.T) {
	db := storetest.SQLite(t)
	s := &Server{db: db, log: slog.New(slog.NewTextHandler(io.Discard, nil)), detect: &detectState{engine: detect.NewEngine(config.DetectSettings{})}}
	ctx := context.Background()
	now := time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC)
	reuse := detect.Event{Time: now, Kind: detect.EventRefreshReuse, Identity: "client-a"}
	first := s.detect.engine.Observe(now, reuse)
	stored, opened, err := s.mergeFinding(ctx, first[0])
	if err != nil || !opened {
		t.Fatalf("first copy: opened %v, err %v", opened, err)
	}
	for _, body := range []string{`not json`, `{"count":"x"}`} {
		if err := db.PutFinding(ctx, db.SQL(), store.FindingRow{ID: stored.ID, At: stored.Time, LastAt: stored.LastSeen,
			Detector: stored.Detector, Severity: string(stored.Severity), Identity: stored.Identity, Count: uint64(stored.Count),
			IncidentID: "inc-1", Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
		next := s.detect.engine.Observe(now.Add(time.Second), reuse)
		got, opened, err := s.mergeFinding(ctx, next[0])
		if err != nil {
			t.Fatalf("body %q: merge failed: %v", body, err)
		}
		if opened || got.ID != stored.ID || got.Count != stored.Count+1 || got.IncidentID != "inc-1" ||
			got.Detector != stored.Detector || got.Severity != stored.Severity || got.Summary == "" {
			t.Fatalf("body %q: stored %+v, want %s counted %d in incident inc-1", body, got, stored.ID, stored.Count+1)
		}
		stored = got
	}
}

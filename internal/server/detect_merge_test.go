package server

import (
	"context"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/detect"
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

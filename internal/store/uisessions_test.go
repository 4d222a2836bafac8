package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

func TestUISessionsEnded(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
		ended := func(id string) bool {
			t.Helper()
			ok, err := db.UISessionEnded(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			return ok
		}
		if ended("s1") {
			t.Fatal("a session no one ended")
		}
		for range 2 { // twice: the second changes nothing
			if err := db.EndUISession(ctx, "s1", now.Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
		}
		if err := db.EndUISession(ctx, "s2", now.Add(-time.Second)); err != nil {
			t.Fatal(err)
		}
		if !ended("s1") || !ended("s2") || ended("s3") {
			t.Fatalf("ended: s1 %v, s2 %v, s3 %v", ended("s1"), ended("s2"), ended("s3"))
		}
		n, err := db.PruneUISessions(ctx, now)
		if err != nil || n != 1 {
			t.Fatalf("prune: %d %v, want 1", n, err)
		}
		if !ended("s1") || ended("s2") {
			t.Fatalf("after the prune: s1 %v, s2 %v", ended("s1"), ended("s2"))
		}
	})
}

package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

// sumFold is a fold that adds a detection's count to the stored one and
// takes its last sighting when later: what the server's fold does to the
// columns MergeFinding is about.
func sumFold(row store.FindingRow) store.FoldFunc {
	return func(stored *store.FindingRow) (store.FindingRow, error) {
		if stored == nil {
			return row, nil
		}
		out := *stored
		out.Count += row.Count
		if row.LastAt.After(out.LastAt) {
			out.LastAt = row.LastAt
		}
		if row.Severity == "high" {
			out.Severity = "high"
		}
		return out, nil
	}
}

// TestMergeFinding: detections of one key persisted at once by several
// replicas become one stored finding whose count is the sum of theirs;
// another destination, another detector, or a detection after the open
// finding's suppress window opens a finding of its own.
func TestMergeFinding(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		t0 := time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC)
		const window = 30 * time.Minute
		key := store.FindingKey{Detector: "probing", Identity: "spiffe://td/ns/prod/sa/reports"}
		merge := func(key store.FindingKey, id string, at time.Time, count uint64) (store.FindingRow, bool) {
			t.Helper()
			row := store.FindingRow{ID: id, At: at, LastAt: at, Detector: key.Detector, Severity: "medium", Identity: key.Identity,
				Destination: key.Destination, Count: count, Body: json.RawMessage(`{}`)}
			got, inserted, err := db.MergeFinding(ctx, key, id, at, at.Add(-window), sumFold(row))
			if err != nil {
				t.Fatal(err)
			}
			return got, inserted
		}

		// Eight replicas persist their own finding of the same burst at
		// once, each folding 1..8 detections.
		const n = 8
		type result struct {
			row      store.FindingRow
			inserted bool
			err      error
		}
		res := make(chan result, n)
		for i := range n {
			go func() {
				at := t0.Add(time.Duration(i) * time.Second)
				row := store.FindingRow{ID: fmt.Sprintf("replica-%d", i), At: at, LastAt: at, Detector: key.Detector, Severity: "medium",
					Identity: key.Identity, Count: uint64(i + 1), Body: json.RawMessage(`{}`)}
				var r result
				r.row, r.inserted, r.err = db.MergeFinding(ctx, key, row.ID, at, at.Add(-window), sumFold(row))
				res <- r
			}()
		}
		inserted, owner := 0, ""
		for range n {
			r := <-res
			if r.err != nil {
				t.Fatal(r.err)
			}
			if r.inserted {
				inserted++
			}
			if owner == "" {
				owner = r.row.ID
			} else if r.row.ID != owner {
				t.Errorf("merged into %s and %s", owner, r.row.ID)
			}
		}
		all, err := db.Findings(ctx, store.FindingQuery{Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		if inserted != 1 || len(all) != 1 || all[0].ID != owner || all[0].Count != n*(n+1)/2 || !all[0].LastAt.Equal(t0.Add((n-1)*time.Second)) {
			t.Fatalf("%d inserted, stored %+v; want one finding %s, count %d", inserted, all, owner, n*(n+1)/2)
		}

		// Linking the finding to an incident leaves its count alone.
		if err := db.LinkFinding(ctx, db.SQL(), owner, "inc-1"); err != nil {
			t.Fatal(err)
		}
		if err := db.LinkFinding(ctx, db.SQL(), "nope", "inc-1"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("link an unknown finding: %v", err)
		}

		t1 := t0.Add(10 * time.Minute)
		for _, tc := range []struct {
			name     string
			key      store.FindingKey
			id       string
			at       time.Time
			inserted bool
			into     string
			count    uint64
		}{
			{"the_owner_again", key, owner, t1, false, owner, n*(n+1)/2 + 1},
			{"a_late_replica", key, "replica-late", t1.Add(window), false, owner, n*(n+1)/2 + 2},
			{"another_destination", store.FindingKey{Detector: "rate", Identity: key.Identity, Destination: "spiffe://td/a"}, "rate-a", t1, true, "rate-a", 1},
			{"same_destination_of_another_detector", store.FindingKey{Detector: "rate", Identity: key.Identity, Destination: "spiffe://td/b"}, "rate-b", t1, true, "rate-b", 1},
			{"another_identity", store.FindingKey{Detector: "probing", Identity: "spiffe://td/ns/prod/sa/orders"}, "orders", t1, true, "orders", 1},
			{"after_the_window", key, "replica-next", t1.Add(2*window + time.Nanosecond), true, "replica-next", 1},
			{"the_old_owner_after_the_window", key, owner, t1.Add(2*window + time.Second), false, "replica-next", 2},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got, ins := merge(tc.key, tc.id, tc.at, 1)
				if ins != tc.inserted || got.ID != tc.into || got.Count != tc.count {
					t.Fatalf("got %s (count %d, inserted %v), want %s (count %d, inserted %v)", got.ID, got.Count, ins, tc.into, tc.count, tc.inserted)
				}
				if f, err := db.Finding(ctx, tc.into); err != nil || f.Count != tc.count || !f.LastAt.Equal(tc.at) {
					t.Fatalf("stored: %+v %v", f, err)
				}
			})
		}
		if f, err := db.Finding(ctx, owner); err != nil || f.IncidentID != "inc-1" || f.Count != n*(n+1)/2+2 {
			t.Fatalf("the first finding after its window: %+v %v", f, err)
		}

		// Claims whose window passed are pruned; the findings stay.
		gone, err := db.PruneOpenFindings(ctx, t1.Add(window+time.Minute))
		if err != nil || gone != 3 { // rate-a, rate-b, orders
			t.Fatalf("pruned %d claims, %v; want 3", gone, err)
		}
		if got, ins := merge(store.FindingKey{Detector: "rate", Identity: key.Identity, Destination: "spiffe://td/a"}, "rate-a2", t1.Add(time.Minute), 1); !ins || got.ID != "rate-a2" {
			t.Fatalf("after the prune: %+v %v", got, ins)
		}
		if all, _ := db.Findings(ctx, store.FindingQuery{Limit: 100}); len(all) != 6 {
			t.Fatalf("%d findings stored, want 6", len(all))
		}
	})
}

// TestMergeFindingFoldError: a fold that fails changes nothing, claim
// included.
func TestMergeFindingFoldError(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		t0 := time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC)
		key := store.FindingKey{Detector: "probing", Identity: "spiffe://td/x"}
		boom := errors.New("boom")
		if _, _, err := db.MergeFinding(ctx, key, "f1", t0, t0.Add(-time.Hour), func(*store.FindingRow) (store.FindingRow, error) {
			return store.FindingRow{}, boom
		}); !errors.Is(err, boom) {
			t.Fatalf("fold error: %v", err)
		}
		row := store.FindingRow{ID: "f2", At: t0, LastAt: t0, Detector: key.Detector, Severity: "low", Identity: key.Identity, Count: 1, Body: json.RawMessage(`{}`)}
		if got, ins, err := db.MergeFinding(ctx, key, "f2", t0, t0.Add(-time.Hour), sumFold(row)); err != nil || !ins || got.ID != "f2" {
			t.Fatalf("after a failed fold: %+v %v %v", got, ins, err)
		}
	})
}

// TestOpenFindingBackfill: migration 0066 on a store with findings makes
// each key's most recently seen finding its open one, the new-edge
// detector's keyed by identity alone.
func TestOpenFindingBackfill(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC)
	beforeMigration(t, 66, "detect_open_findings", func(t *testing.T, db *store.DB) {
		for _, f := range []store.FindingRow{
			{ID: "p-old", Detector: "probing", Identity: "a", LastAt: t0},
			{ID: "p-new", Detector: "probing", Identity: "a", LastAt: t0.Add(time.Minute)},
			{ID: "r-x", Detector: "rate", Identity: "a", Destination: "x", LastAt: t0.Add(2 * time.Minute)},
			{ID: "r-y", Detector: "rate", Identity: "a", Destination: "y", LastAt: t0},
			{ID: "n-x", Detector: "new_edge", Identity: "a", Destination: "x", LastAt: t0.Add(time.Minute)},
			{ID: "n-y", Detector: "new_edge", Identity: "a", Destination: "y", LastAt: t0},
		} {
			f.At, f.Severity, f.Count, f.Body = f.LastAt, "medium", 1, []byte("{}")
			if err := db.PutFinding(context.Background(), db.SQL(), f); err != nil {
				t.Fatal(err)
			}
		}
	}, func(t *testing.T, db *store.DB) {
		for _, c := range []struct {
			key  store.FindingKey
			want string
		}{
			{store.FindingKey{Detector: "probing", Identity: "a"}, "p-new"},
			{store.FindingKey{Detector: "rate", Identity: "a", Destination: "x"}, "r-x"},
			{store.FindingKey{Detector: "rate", Identity: "a", Destination: "y"}, "r-y"},
			{store.FindingKey{Detector: "new_edge", Identity: "a"}, "n-x"},
		} {
			// A detection of the key within the window folds into the
			// backfilled claim's finding.
			row := store.FindingRow{ID: "probe", At: t0, LastAt: t0, Detector: c.key.Detector, Identity: c.key.Identity, Count: 1, Body: []byte("{}")}
			got, ins, err := db.MergeFinding(context.Background(), c.key, "probe-"+c.want, t0.Add(3*time.Minute), t0.Add(-time.Hour), sumFold(row))
			if err != nil || ins || got.ID != c.want || got.Count != 2 {
				t.Errorf("%+v: merged into %s (count %d, inserted %v, %v), want %s", c.key, got.ID, got.Count, ins, err, c.want)
			}
		}
	})
}

// BenchmarkPersistFinding: what storing a finding costs since it merges
// across replicas (MergeFinding: claim, locked read, write, claim's last
// sighting, one transaction) against the single upsert before
// (PutFinding). new_key opens a finding each time, same_key folds into
// one.
func BenchmarkPersistFinding(b *testing.B) {
	t0 := time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC)
	body := json.RawMessage(`{"summary":"spiffe://td/ns/prod/sa/reports was refused 120 times in a minute","evidence":{"refusals_per_minute":"120"}}`)
	storetest.EachB(b, func(b *testing.B, db *store.DB) {
		ctx := context.Background()
		row := func(i int, id string) store.FindingRow {
			at := t0.Add(time.Duration(i) * time.Millisecond)
			return store.FindingRow{ID: id, At: at, LastAt: at, Detector: "probing", Severity: "high",
				Identity: fmt.Sprintf("spiffe://td/ns/prod/sa/s-%d", i), Count: 1, Body: body}
		}
		b.Run("put_upsert", func(b *testing.B) {
			i := 0
			for b.Loop() {
				i++
				if err := db.PutFinding(ctx, db.SQL(), row(i, fmt.Sprint("put-", i))); err != nil {
					b.Fatal(err)
				}
			}
		})
		for _, tc := range []struct {
			name string
			key  func(i int) store.FindingKey
		}{
			{"merge_new_key", func(i int) store.FindingKey {
				return store.FindingKey{Detector: "probing", Identity: fmt.Sprintf("spiffe://td/ns/prod/sa/s-%d", i)}
			}},
			{"merge_same_key", func(int) store.FindingKey {
				return store.FindingKey{Detector: "rate", Identity: "spiffe://td/ns/prod/sa/reports", Destination: "spiffe://td/ns/prod/sa/orders"}
			}},
		} {
			b.Run(tc.name, func(b *testing.B) {
				i := 0
				for b.Loop() {
					i++
					id := fmt.Sprint(tc.name, "-", i)
					r := row(i, id)
					k := tc.key(i)
					r.Detector, r.Identity, r.Destination = k.Detector, k.Identity, k.Destination
					if _, _, err := db.MergeFinding(ctx, k, id, r.LastAt, r.LastAt.Add(-30*time.Minute), sumFold(r)); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	})
}

package store_test

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/wire"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func tx(t *testing.T, db *store.DB, fn func(*sql.Tx) error) error {
	t.Helper()
	return db.Tx(context.Background(), fn)
}

func entry(id, spiffeID, parent string, sel ...string) wire.Entry {
	e := wire.Entry{ID: id, SPIFFEID: spiffeID, ParentID: parent, Namespace: "prod", Labels: map[string]string{"app": "pay"}}
	for _, s := range sel {
		e.Selectors = append(e.Selectors, wire.Selector{Type: "unix", Value: s})
	}
	return e
}

func TestEntries(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		db.Now = func() time.Time { return t0 }
		const node = "spiffe://td/agent/a"
		insert := func(e wire.Entry) (wire.Entry, error) {
			var out wire.Entry
			err := tx(t, db, func(tx *sql.Tx) error {
				var err error
				out, err = db.InsertEntry(ctx, tx, e)
				return err
			})
			return out, err
		}
		got, err := insert(entry("e1", "spiffe://td/w/1", node, "uid:1000", "gid:5"))
		if err != nil {
			t.Fatal(err)
		}
		if got.Revision != 1 || !got.CreatedAt.Equal(t0) || got.Selectors[0].Value != "gid:5" {
			t.Fatalf("inserted entry not normalized: %+v", got)
		}
		// Same identity with selectors in another order is a duplicate.
		if _, err := insert(entry("e2", "spiffe://td/w/1", node, "gid:5", "uid:1000")); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("duplicate entry: got %v, want ErrConflict", err)
		}
		if _, err := insert(entry("e1", "spiffe://td/w/9", node, "uid:1")); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("duplicate id: got %v, want ErrConflict", err)
		}
		if _, err := insert(entry("e3", "spiffe://td/w/2", "spiffe://td/agent/b", "uid:1")); err != nil {
			t.Fatal(err)
		}
		back, err := db.Entry(ctx, "e1")
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(got, back); diff != "" {
			t.Fatalf("read back differs (-want +got):\n%s", diff)
		}
		list, err := db.ListEntries(ctx, store.EntryFilter{ParentID: node})
		if err != nil || len(list) != 1 || list[0].ID != "e1" {
			t.Fatalf("list by parent: %v %+v", err, list)
		}
		list, _ = db.ListEntries(ctx, store.EntryFilter{Selector: &wire.Selector{Type: "unix", Value: "uid:1"}})
		if len(list) != 1 || list[0].ID != "e3" {
			t.Fatalf("list by selector: %+v", list)
		}
		pv, _ := db.ParentVersion(ctx, node)
		vs, _ := db.Versions(ctx)
		if pv == 0 || vs.Global <= pv || vs.Sections[store.SectionEntries] != vs.Global {
			t.Fatalf("versions: parent %d, %+v", pv, vs)
		}
		// Update: new parent and labels; both parents' versions move; a
		// stale revision or a clash with another entry is a conflict.
		upd := entry("e1", "spiffe://td/w/1", "spiffe://td/agent/c", "uid:1000")
		upd.Labels = map[string]string{"app": "v2"}
		var updated wire.Entry
		err = tx(t, db, func(tx *sql.Tx) error {
			var err error
			updated, err = db.UpdateEntry(ctx, tx, upd, 1)
			return err
		})
		if err != nil || updated.Revision != 2 || !updated.CreatedAt.Equal(t0) || updated.Labels["app"] != "v2" {
			t.Fatalf("update: %+v %v", updated, err)
		}
		if pa, _ := db.ParentVersion(ctx, node); pa <= pv {
			t.Fatal("update did not bump the old parent's version")
		}
		if pc, _ := db.ParentVersion(ctx, "spiffe://td/agent/c"); pc == 0 {
			t.Fatal("update did not bump the new parent's version")
		}
		// Watch streams skip ParentVersion while the entries section
		// has not moved: a parent is bumped to the section's version.
		if pa, pc, vs := parentAndSection(t, db, node, "spiffe://td/agent/c"); pa != vs || pc != vs {
			t.Fatalf("after update: parents at %d and %d, entries section at %d", pa, pc, vs)
		}
		err = tx(t, db, func(tx *sql.Tx) error { _, err := db.UpdateEntry(ctx, tx, upd, 1); return err })
		if !errors.Is(err, store.ErrConflict) {
			t.Fatalf("update at a stale revision: %v", err)
		}
		clash := entry("e1", "spiffe://td/w/2", "spiffe://td/agent/b", "uid:1")
		err = tx(t, db, func(tx *sql.Tx) error { _, err := db.UpdateEntry(ctx, tx, clash, 0); return err })
		if !errors.Is(err, store.ErrConflict) {
			t.Fatalf("update onto another entry's identity: %v", err)
		}
		err = tx(t, db, func(tx *sql.Tx) error {
			_, err := db.UpdateEntry(ctx, tx, entry("nope", "spiffe://td/x", node, "uid:1"), 0)
			return err
		})
		if !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("update of a missing entry: %v", err)
		}
		vs, _ = db.Versions(ctx)
		err = tx(t, db, func(tx *sql.Tx) error { _, err := db.DeleteEntry(ctx, tx, "e1"); return err })
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Entry(ctx, "e1"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("deleted entry: %v", err)
		}
		if pv2, _ := db.ParentVersion(ctx, "spiffe://td/agent/c"); pv2 <= vs.Global {
			t.Fatalf("delete did not bump parent version: %d <= %d", pv2, vs.Global)
		}
		if pc, _, sec := parentAndSection(t, db, "spiffe://td/agent/c", "spiffe://td/agent/c"); pc != sec {
			t.Fatalf("after delete: parent at %d, entries section at %d", pc, sec)
		}
		err = tx(t, db, func(tx *sql.Tx) error { _, err := db.DeleteEntry(ctx, tx, "e1"); return err })
		if !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("delete twice: %v", err)
		}
		if n, _ := db.CountEntries(ctx); n != 1 {
			t.Fatalf("count = %d", n)
		}
	})
}

func TestJoinTokens(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		mk := func(id string, ttl time.Duration) [32]byte {
			h := sha256.Sum256([]byte("token-" + id))
			err := tx(t, db, func(tx *sql.Tx) error {
				return db.InsertJoinToken(ctx, tx, store.JoinToken{ID: id, SPIFFEID: "spiffe://td/agent/" + id, CreatedAt: t0, ExpiresAt: t0.Add(ttl)}, h)
			})
			if err != nil {
				t.Fatal(err)
			}
			return h
		}
		good := mk("good", time.Minute)
		short := mk("short", time.Second)
		consume := func(h [32]byte, now time.Time) (store.JoinToken, error) {
			var jt store.JoinToken
			err := tx(t, db, func(tx *sql.Tx) error {
				var err error
				jt, err = db.ConsumeJoinToken(ctx, tx, h, now)
				return err
			})
			return jt, err
		}
		tests := []struct {
			name string
			hash [32]byte
			now  time.Time
			want error
		}{
			{"first_use", good, t0.Add(time.Second), nil},
			{"reuse", good, t0.Add(2 * time.Second), store.ErrTokenUsed},
			{"expired", short, t0.Add(time.Second), store.ErrTokenExpired},
			{"unknown", sha256.Sum256([]byte("nope")), t0, store.ErrTokenUnknown},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				jt, err := consume(tc.hash, tc.now)
				if !errors.Is(err, tc.want) {
					t.Fatalf("got %v, want %v", err, tc.want)
				}
				if tc.want == nil && jt.SPIFFEID != "spiffe://td/agent/good" {
					t.Fatalf("token bound to %q", jt.SPIFFEID)
				}
			})
		}
		list, _ := db.JoinTokens(ctx, false, t0)
		if len(list) != 1 || list[0].ID != "short" {
			t.Fatalf("unspent tokens: %+v", list)
		}
		list, _ = db.JoinTokens(ctx, true, t0)
		if len(list) != 2 {
			t.Fatalf("all tokens: %+v", list)
		}
	})
}

// TestJoinTokenRace: many goroutines consume one token at once; exactly one
// wins on each engine.
func TestJoinTokenRace(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		h := sha256.Sum256([]byte("race"))
		if err := tx(t, db, func(tx *sql.Tx) error {
			return db.InsertJoinToken(ctx, tx, store.JoinToken{ID: "r", SPIFFEID: "spiffe://td/a", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}, h)
		}); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		wins, used := 0, 0
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := db.Tx(ctx, func(tx *sql.Tx) error { _, err := db.ConsumeJoinToken(ctx, tx, h, t0); return err })
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					wins++
				case errors.Is(err, store.ErrTokenUsed):
					used++
				default:
					t.Errorf("consume: %v", err)
				}
			}()
		}
		wg.Wait()
		if wins != 1 || used != 7 {
			t.Fatalf("wins=%d used=%d, want 1 and 7", wins, used)
		}
	})
}

func TestNodesAndSVIDs(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		const id = "spiffe://td/agent/n"
		err := tx(t, db, func(tx *sql.Tx) error {
			if err := db.UpsertAttestedNode(ctx, tx, store.Node{SPIFFEID: id, TokenID: "t", AttestedAt: t0, Serial: "01", NotAfter: t0.Add(time.Hour), RemoteAddr: "127.0.0.1:1"}); err != nil {
				return err
			}
			return db.InsertSVIDs(ctx, tx, store.IssuedSVID{Serial: "01", SPIFFEID: id, Kind: store.SVIDKindNode, NotAfter: t0.Add(time.Hour), IssuedAt: t0})
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := db.RecordAck(ctx, id, "agent", 7, 3, t0.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		// An older ack arriving late changes nothing.
		if err := db.RecordAck(ctx, id, "agent", 5, 2, t0.Add(2*time.Minute)); err != nil {
			t.Fatal(err)
		}
		n, err := db.Node(ctx, id)
		if err != nil || n.AckedVersion != 7 || n.PolicyVersion != 3 || n.Component != "agent" {
			t.Fatalf("node after acks: %+v %v", n, err)
		}
		if err := db.RecordAck(ctx, "spiffe://td/none", "agent", 1, 0, t0); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("ack from unknown node: %v", err)
		}
		v, err := db.SVID(ctx, "01")
		if err != nil || v.Kind != store.SVIDKindNode {
			t.Fatalf("svid: %+v %v", v, err)
		}
		if err := db.InsertSVIDs(ctx, db.SQL(), v); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("serial twice: %v", err)
		}
		if n, _ := db.PruneSVIDs(ctx, t0.Add(2*time.Hour)); n != 1 {
			t.Fatalf("pruned %d", n)
		}
	})
}

func TestSVIDsListsLiveSoonestFirst(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		var svids []store.IssuedSVID
		for i, d := range []time.Duration{3 * time.Hour, -time.Minute, time.Hour, 2 * time.Hour, 0} {
			svids = append(svids, store.IssuedSVID{Serial: fmt.Sprintf("%02x", i+1), SPIFFEID: "spiffe://td/w", Kind: store.SVIDKindWorkload,
				NotAfter: t0.Add(d), IssuedAt: t0.Add(-time.Hour)})
		}
		if err := db.InsertSVIDs(ctx, db.SQL(), svids...); err != nil {
			t.Fatal(err)
		}
		// Expired (not_after before now) and expiring exactly now are gone.
		got, total, err := db.SVIDs(ctx, t0, 2)
		if err != nil {
			t.Fatal(err)
		}
		var serials []string
		for _, v := range got {
			serials = append(serials, v.Serial)
		}
		if total != 3 || !slices.Equal(serials, []string{"03", "04"}) {
			t.Fatalf("got %q of %d, want [03 04] of 3", serials, total)
		}
		if !got[0].NotAfter.Equal(t0.Add(time.Hour)) || !got[0].IssuedAt.Equal(t0.Add(-time.Hour)) {
			t.Fatalf("times: %+v", got[0])
		}
	})
}
func TestRevocations(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		run := func(fn func(tx *sql.Tx) (uint64, error)) error {
			return tx(t, db, func(tx *sql.Tx) error { _, err := fn(tx); return err })
		}
		revokeID := func(tx *sql.Tx) (uint64, error) {
			return db.RevokeID(ctx, tx, store.RevokedID{SPIFFEID: "spiffe://td/bad", RevokedBy: "admin", RevokedAt: t0})
		}
		if err := run(revokeID); err != nil {
			t.Fatal(err)
		}
		if err := run(revokeID); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("revoke twice: %v", err)
		}
		for i, exp := range []time.Duration{time.Minute, time.Hour} {
			err := run(func(tx *sql.Tx) (uint64, error) {
				return db.RevokeSerial(ctx, tx, store.RevokedSerial{Serial: fmt.Sprint(i), SPIFFEID: "spiffe://td/x", ExpiresAt: t0.Add(exp), RevokedAt: t0})
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		l, err := db.Revocations(ctx, t0.Add(2*time.Minute))
		if err != nil || len(l.IDs) != 1 || len(l.Serials) != 1 || l.Serials[0].Serial != "1" {
			t.Fatalf("revocations: %+v %v", l, err)
		}
		before, _ := db.Versions(ctx)
		if err := tx(t, db, func(tx *sql.Tx) error {
			n, err := db.PruneRevokedSerials(ctx, tx, t0.Add(2*time.Minute))
			if n != 1 {
				t.Errorf("pruned %d, want 1", n)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		after, _ := db.Versions(ctx)
		if after.Sections[store.SectionRevocations] <= before.Sections[store.SectionRevocations] {
			t.Fatal("pruning did not bump the revocations version")
		}
		if ok, _ := db.IsRevokedID(ctx, "spiffe://td/bad"); !ok {
			t.Fatal("IsRevokedID = false")
		}
		if err := run(func(tx *sql.Tx) (uint64, error) { return db.UnrevokeID(ctx, tx, "spiffe://td/bad") }); err != nil {
			t.Fatal(err)
		}
		if err := run(func(tx *sql.Tx) (uint64, error) { return db.UnrevokeID(ctx, tx, "spiffe://td/bad") }); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("lift twice: %v", err)
		}
	})
}

func TestMetaAndCAState(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		if _, err := db.LoadCAState(ctx); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("empty CA state: %v", err)
		}
		for _, s := range []string{"one", "two"} {
			if err := db.SaveCAState(ctx, []byte(s)); err != nil {
				t.Fatal(err)
			}
		}
		if b, _ := db.LoadCAState(ctx); string(b) != "two" {
			t.Fatalf("CA state = %q", b)
		}
		if err := db.SaveCAState(ctx, nil); err == nil {
			t.Fatal("saved empty CA state")
		}
		// Compare-and-swap: a stale old value changes nothing.
		if err := db.SwapCAState(ctx, []byte("one"), []byte("three")); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("swap from a stale state: %v", err)
		}
		if err := db.SwapCAState(ctx, nil, []byte("x")); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("swap from nothing over something: %v", err)
		}
		if err := db.SwapCAState(ctx, []byte("two"), []byte("three")); err != nil {
			t.Fatal(err)
		}
		if b, _ := db.LoadCAState(ctx); string(b) != "three" {
			t.Fatalf("CA state after swap = %q", b)
		}
		ok1, err1 := db.SetMetaIfAbsent(ctx, db.SQL(), "k", "a")
		ok2, err2 := db.SetMetaIfAbsent(ctx, db.SQL(), "k", "b")
		if !ok1 || ok2 || err1 != nil || err2 != nil {
			t.Fatalf("SetMetaIfAbsent: %v %v %v %v", ok1, ok2, err1, err2)
		}
		if v, _ := db.Meta(ctx, "k"); v != "a" {
			t.Fatalf("meta = %q", v)
		}
		if _, err := db.Meta(ctx, "missing"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("missing meta: %v", err)
		}
	})
}

// TestVersionOrder: concurrent writers get distinct, gap-free versions.
func TestVersionOrder(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		var wg sync.WaitGroup
		var mu sync.Mutex
		seen := map[uint64]bool{}
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 10 {
					err := db.Tx(ctx, func(tx *sql.Tx) error {
						v, err := db.BumpVersion(ctx, tx, store.SectionBundle)
						mu.Lock()
						seen[v] = true
						mu.Unlock()
						return err
					})
					if err != nil {
						t.Error(err)
					}
				}
			}()
		}
		wg.Wait()
		for v := uint64(1); v <= 40; v++ {
			if !seen[v] {
				t.Fatalf("version %d missing: %v", v, seen)
			}
		}
	})
}

// TestDuplicateEntryRace: concurrent creates of one identity (different
// ids) yield exactly one entry on both engines; the rest are conflicts.
func TestDuplicateEntryRace(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		var wg sync.WaitGroup
		var mu sync.Mutex
		ok, conflicts := 0, 0
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := db.Tx(ctx, func(tx *sql.Tx) error {
					_, err := db.InsertEntry(ctx, tx, entry(fmt.Sprintf("id-%d", i), "spiffe://td/w", "spiffe://td/agent/a", "uid:1"))
					return err
				})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					ok++
				case errors.Is(err, store.ErrConflict):
					conflicts++
				default:
					t.Errorf("insert: %v", err)
				}
			}()
		}
		wg.Wait()
		if ok != 1 || conflicts != 7 {
			t.Fatalf("ok=%d conflicts=%d, want 1 and 7", ok, conflicts)
		}
	})
}

// parentAndSection reads the entries versions of parents a and b and the
// entries section's version.
func parentAndSection(t *testing.T, db *store.DB, a, b string) (pa, pb, section uint64) {
	t.Helper()
	ctx := context.Background()
	var err error
	if pa, err = db.ParentVersion(ctx, a); err != nil {
		t.Fatal(err)
	}
	if pb, err = db.ParentVersion(ctx, b); err != nil {
		t.Fatal(err)
	}
	vs, err := db.Versions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return pa, pb, vs.Sections[store.SectionEntries]
}

package store_test

import (
	"context"
	"database/sql"
	"testing"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

// appendAuditRow chains one record after the head through the write path
// the audit sink uses (LockAuditHead, AppendAuditRows in one Tx).
func appendAuditRow(ctx context.Context, db *store.DB, kind string) error {
	return db.Tx(ctx, func(tx *sql.Tx) error {
		seq, prev, err := db.LockAuditHead(ctx, tx)
		if err != nil {
			return err
		}
		h := []byte{byte(seq + 1)}
		return db.AppendAuditRows(ctx, tx, []store.AuditRow{{
			Seq: int64(seq) + 1, At: 1, Kind: kind, Details: "{}", PrevHash: prev, Hash: h,
		}})
	})
}

// TestSnapshotReadDoesNotBlockAppends: an audit snapshot held open (audit
// verify paging through a long log) takes no write lock, so an append
// commits at once while it is open, and the snapshot still sees the log as
// it was when its first read ran. Under SQLite every writer begins
// IMMEDIATE; a snapshot that did the same held the one write lock for as
// long as verify read, and appends failed with "database is locked".
func TestSnapshotReadDoesNotBlockAppends(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		if err := appendAuditRow(ctx, db, "first"); err != nil {
			t.Fatal(err)
		}
		err := db.ReadAudit(ctx, func(snap *store.AuditSnapshot) error {
			seq, _, err := snap.Head(ctx)
			if err != nil || seq != 1 {
				t.Fatalf("head in the snapshot: %d %v", seq, err)
			}
			for i := range 3 {
				if err := appendAuditRow(ctx, db, "during"); err != nil {
					t.Fatalf("append %d while a snapshot is open: %v", i, err)
				}
			}
			if seq, _, err := snap.Head(ctx); err != nil || seq != 1 {
				t.Fatalf("the snapshot saw a later append: head %d %v", seq, err)
			}
			rows, err := snap.RowsFrom(ctx, 0, 10)
			if err != nil || len(rows) != 1 {
				t.Fatalf("rows in the snapshot: %d %v", len(rows), err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if seq, _, err := db.AuditHead(ctx); err != nil || seq != 4 {
			t.Fatalf("head after the snapshot: %d %v", seq, err)
		}
	})
}

// TestReadTxRefusesWrites: a read transaction is read-only in the engine
// (SQLite query_only on its own pool, PostgreSQL READ ONLY), so a write
// slipped into one fails instead of quietly taking the write lock.
func TestReadTxRefusesWrites(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		err := db.ReadTx(ctx, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, "INSERT INTO meta (key, value) VALUES ('k', 'v')")
			return err
		})
		if err == nil {
			t.Fatal("a write inside a read transaction succeeded")
		}
		var n int
		if err := db.SQL().QueryRowContext(ctx, "SELECT COUNT(*) FROM meta WHERE key = 'k'").Scan(&n); err != nil || n != 0 {
			t.Fatalf("the refused write left %d rows (%v)", n, err)
		}
	})
}

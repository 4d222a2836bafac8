package store_test

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
	"github.com/moatless/moatless/internal/wire"
)

// fill writes a little of everything through the domain methods.
func fill(t *testing.T, db *store.DB) {
	t.Helper()
	ctx := context.Background()
	now := time.Now()
	err := db.Tx(ctx, func(tx *sql.Tx) error {
		for i := range 3 {
			if _, err := db.InsertEntry(ctx, tx, wire.Entry{ID: fmt.Sprintf("e%d", i), SPIFFEID: fmt.Sprintf("spiffe://example.org/w/%d", i),
				ParentID: "spiffe://example.org/agent/a", Selectors: []wire.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", i)}},
				Labels: map[string]string{"app": "x"}}); err != nil {
				return err
			}
		}
		if err := db.InsertJoinToken(ctx, tx, store.JoinToken{ID: "jt1", SPIFFEID: "spiffe://example.org/agent/b", CreatedAt: now, ExpiresAt: now.Add(time.Hour)},
			sha256.Sum256([]byte("secret"))); err != nil {
			return err
		}
		if _, err := db.RevokeID(ctx, tx, store.RevokedID{SPIFFEID: "spiffe://example.org/evil", Reason: "test", RevokedBy: "t", RevokedAt: now}); err != nil {
			return err
		}
		seq, prev, err := db.LockAuditHead(ctx, tx)
		if err != nil {
			return err
		}
		r := store.AuditRow{Seq: int64(seq) + 1, At: now.UnixNano(), Kind: "k", Actor: "a", Subject: "s", Outcome: "success", Details: "{}", PrevHash: prev, Hash: []byte{1, 2, 3}}
		return db.AppendAuditRows(ctx, tx, []store.AuditRow{r})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.SaveCAState(ctx, []byte("sealed\x00state")); err != nil {
		t.Fatal(err)
	}
	if err := db.SetMeta(ctx, db.SQL(), "admin_token_sha256", "abcd"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.OAuth().RevokeTokenID(ctx, "jti", now.Add(time.Hour), now); err != nil {
		t.Fatal(err)
	}
}

// dump reads every row of every table as strings, for comparing stores
// across engines.
func dump(t *testing.T, db *store.DB) map[string][]string {
	t.Helper()
	ctx := context.Background()
	tables, err := db.Tables(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, tb := range tables {
		rows, err := db.SQL().QueryContext(ctx, "SELECT * FROM "+tb+" ORDER BY 1")
		if err != nil {
			t.Fatal(err)
		}
		cols, _ := rows.Columns()
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			for i, v := range vals {
				if b, ok := v.([]byte); ok {
					vals[i] = fmt.Sprintf("%x", b) // BLOB and TEXT compare alike
				}
				if s, ok := v.(string); ok {
					vals[i] = fmt.Sprintf("%x", s)
				}
			}
			out[tb] = append(out[tb], fmt.Sprint(vals...))
		}
		rows.Close()
	}
	return out
}

// TestCopyAcrossEngines: a copy from either engine into the other holds
// the same rows, keeps the epoch (or takes a new one for a restore), and
// the copied store works: versions and the audit head carry on.
func TestCopyAcrossEngines(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		src, dst func(testing.TB) *store.DB
		newEpoch bool
	}{
		{"sqlite_to_postgres", storetest.SQLite, storetest.Postgres, false},
		{"postgres_to_sqlite", storetest.Postgres, storetest.SQLite, false},
		{"sqlite_to_sqlite_restore", storetest.SQLite, storetest.SQLite, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, dst := tc.src(t), tc.dst(t)
			fill(t, src)
			var progress []string
			counts, err := store.Copy(ctx, src, dst, store.CopyOptions{NewEpoch: tc.newEpoch, Progress: func(c store.TableCount) { progress = append(progress, c.Table) }})
			if err != nil {
				t.Fatal(err)
			}
			if len(progress) != len(counts) {
				t.Fatalf("progress %v for %d tables", progress, len(counts))
			}
			want, got := dump(t, src), dump(t, dst)
			se, _ := src.Epoch(ctx)
			de, _ := dst.Epoch(ctx)
			if tc.newEpoch {
				if se == de || de == "" {
					t.Fatalf("restore kept epoch %q", se)
				}
				delete(want, "meta")
				delete(got, "meta")
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("copy differs (-source +copy):\n%s", diff)
			}
			if !tc.newEpoch && se != de {
				t.Fatalf("migration changed the epoch %q -> %q", se, de)
			}
			// The copy carries on where the source stopped.
			sv, _ := src.Versions(ctx)
			dv, _ := dst.Versions(ctx)
			if diff := cmp.Diff(sv, dv); diff != "" {
				t.Fatalf("versions differ:\n%s", diff)
			}
			next := bump(t, dst, store.SectionEntries)
			if next != sv.Global+1 {
				t.Fatalf("next version on the copy %d, want %d", next, sv.Global+1)
			}
			if e, err := dst.Entry(ctx, "e1"); err != nil || e.Labels["app"] != "x" {
				t.Fatalf("entry on the copy: %+v %v", e, err)
			}
			if st, err := dst.LoadCAState(ctx); err != nil || string(st) != "sealed\x00state" {
				t.Fatalf("CA state on the copy: %q %v", st, err)
			}
			seq, _, _ := dst.AuditHead(ctx)
			if seq != 1 {
				t.Fatalf("audit head on the copy: %d", seq)
			}
		})
	}
}

// TestCopyRefusals: a destination with data, or at another schema
// version, is refused and left as it was.
func TestCopyRefusals(t *testing.T) {
	ctx := context.Background()
	src := storetest.SQLite(t)
	fill(t, src)
	t.Run("destination_not_empty", func(t *testing.T) {
		dst := storetest.Postgres(t)
		if err := dst.SetMeta(ctx, dst.SQL(), "admin_token_sha256", "other"); err != nil {
			t.Fatal(err)
		}
		before := dump(t, dst)
		if _, err := store.Copy(ctx, src, dst, store.CopyOptions{}); !errors.Is(err, store.ErrNotEmpty) {
			t.Fatalf("copy into a used store: %v", err)
		}
		if diff := cmp.Diff(before, dump(t, dst)); diff != "" {
			t.Fatalf("refused copy changed the destination:\n%s", diff)
		}
	})
	t.Run("destination_has_versions", func(t *testing.T) {
		dst := storetest.SQLite(t)
		bump(t, dst, store.SectionPolicies)
		if _, err := store.Copy(ctx, src, dst, store.CopyOptions{}); !errors.Is(err, store.ErrNotEmpty) {
			t.Fatalf("copy into a store with history: %v", err)
		}
	})
	t.Run("schema_differs", func(t *testing.T) {
		dst := storetest.SQLite(t)
		if _, err := dst.SQL().ExecContext(ctx, "DELETE FROM schema_migrations WHERE version = (SELECT MAX(version) FROM schema_migrations)"); err != nil {
			t.Fatal(err)
		}
		if _, err := store.Copy(ctx, src, dst, store.CopyOptions{}); err == nil {
			t.Fatal("copy across schema versions accepted")
		}
	})
}

// TestInUse: a server's lock (SQLite) or session (PostgreSQL) marks the
// store in use until it closes; a killed server's lock goes with it (the
// kernel releases flocks).
func TestInUse(t *testing.T) {
	ctx := context.Background()
	t.Run("sqlite", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "moatless.db")
		db, err := store.OpenWith(ctx, path, store.OpenOptions{Lock: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := store.InUse(ctx, path); !errors.Is(err, store.ErrInUse) {
			t.Fatalf("open server store: %v", err)
		}
		if _, err := store.OpenWith(ctx, path, store.OpenOptions{Lock: true}); !errors.Is(err, store.ErrInUse) {
			t.Fatalf("second server on one SQLite file: %v", err)
		}
		db.Close()
		if err := store.InUse(ctx, path); err != nil {
			t.Fatalf("closed store: %v", err)
		}
		if err := store.InUse(ctx, filepath.Join(t.TempDir(), "none.db")); err == nil || errors.Is(err, store.ErrInUse) {
			t.Fatalf("missing store: %v", err)
		}
	})
	t.Run("postgres", func(t *testing.T) {
		dsn := storetest.PostgresDSN(t)
		tool, err := store.Open(ctx, dsn) // not a server: no lock
		if err != nil {
			t.Fatal(err)
		}
		defer tool.Close()
		if err := store.InUse(ctx, dsn); err != nil {
			t.Fatalf("only a tool connected: %v", err)
		}
		db, err := store.OpenWith(ctx, dsn, store.OpenOptions{Lock: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := store.InUse(ctx, dsn); !errors.Is(err, store.ErrInUse) {
			t.Fatalf("server connected: %v", err)
		}
		db.Close()
		// A PostgreSQL backend exits a moment after its client closed the
		// connection (seen under load in CI): wait for it to leave
		// pg_stat_activity rather than read the view once.
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := store.InUse(ctx, dsn)
			if err == nil {
				break
			}
			if !errors.Is(err, store.ErrInUse) || time.Now().After(deadline) {
				t.Fatalf("server gone: %v", err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// TestServerSessionsEndAnIdleTransaction: a server's PostgreSQL session
// is ended by PostgreSQL when it sits idle inside a transaction (a
// replica stopped with SIGSTOP, a frozen host), so the row locks it holds
// — the audit chain's head among them — stop blocking every other
// replica's writes (seen in the chaos test: a hung replica held the
// audit head, and another replica's audited revocation waited on it).
// A tool's session is left as PostgreSQL's default.
func TestServerSessionsEndAnIdleTransaction(t *testing.T) {
	ctx := context.Background()
	dsn := storetest.PostgresDSN(t)
	db, err := store.OpenWith(ctx, dsn, store.OpenOptions{Lock: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var got string
	if err := db.SQL().QueryRowContext(ctx, "SHOW idle_in_transaction_session_timeout").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != "3s" {
		t.Fatalf("a server session's idle_in_transaction_session_timeout is %q, want 3s", got)
	}
	tool, err := store.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer tool.Close()
	if err := tool.SQL().QueryRowContext(ctx, "SHOW idle_in_transaction_session_timeout").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got == "3s" {
		t.Fatal("a tool's session got the server's idle timeout")
	}
}

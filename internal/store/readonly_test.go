package store_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

// TestOpenReadOnly: a read-only open reads, refuses every write, runs no
// migration (a store with one pending is refused with ErrSchemaOutdated
// and stays as it was), and refuses a store migrated by a newer binary.
func TestOpenReadOnly(t *testing.T) {
	for _, dialect := range []struct {
		name string
		dsn  func(t testing.TB) string
	}{
		{"sqlite", func(t testing.TB) string { return filepath.Join(t.TempDir(), "moatless.db") }},
		{"postgres", storetest.PostgresDSN},
	} {
		t.Run(dialect.name, func(t *testing.T) {
			ctx := context.Background()
			dsn := dialect.dsn(t)
			admin := func(stmt string) {
				t.Helper()
				db, err := store.Open(ctx, dsn)
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				if stmt != "" {
					if _, err := db.SQL().ExecContext(ctx, stmt); err != nil {
						t.Fatal(err)
					}
				}
			}
			admin("INSERT INTO meta (key, value) VALUES ('k', 'v')")
			ro := func() (*store.DB, error) { return store.OpenWith(ctx, dsn, store.OpenOptions{ReadOnly: true}) }

			steps := []struct {
				name    string
				prepare string
				wantErr error
				want    string
			}{
				{"current_schema_reads", "", nil, ""},
				{"newer_schema_refused", "INSERT INTO schema_migrations (version, name, applied_at) VALUES (9999, '9999_future.sql', 0)", store.ErrSchemaNewer, "9999"},
				{"current_again", "DELETE FROM schema_migrations WHERE version = 9999", nil, ""},
				{"pending_migration_refused", "DELETE FROM schema_migrations WHERE version = (SELECT MAX(version) FROM schema_migrations)", store.ErrSchemaOutdated, "start the server once to migrate"},
				{"still_pending_nothing_migrated", "", store.ErrSchemaOutdated, "1 migrations pending"},
			}
			for _, s := range steps {
				if s.prepare != "" {
					admin(s.prepare)
				}
				if s.name == "pending_migration_refused" {
					// From here on a read-write Open would migrate (and
					// fail: the dropped record's tables exist); only
					// read-only opens follow.
					admin = nil
				}
				db, err := ro()
				if s.wantErr != nil {
					if !errors.Is(err, s.wantErr) || !strings.Contains(err.Error(), s.want) {
						t.Fatalf("%s: got %v, want %v containing %q", s.name, err, s.wantErr, s.want)
					}
					continue
				}
				if err != nil {
					t.Fatalf("%s: %v", s.name, err)
				}
				if v, err := db.Meta(ctx, "k"); err != nil || v != "v" {
					t.Fatalf("%s: read %q, %v", s.name, v, err)
				}
				if err := db.SetMeta(ctx, db.SQL(), "k", "changed"); err == nil {
					t.Fatalf("%s: a write succeeded on a read-only store", s.name)
				}
				if _, err := db.SQL().ExecContext(ctx, "CREATE TABLE sneaky (x INTEGER)"); err == nil {
					t.Fatalf("%s: a schema change succeeded on a read-only store", s.name)
				}
				db.Close()
			}
		})
	}
}

// TestOpenReadOnlySQLiteFile: a read-only open never creates a missing
// file and leaves an existing one byte for byte as it was.
func TestOpenReadOnlySQLiteFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	missing := filepath.Join(dir, "none.db")
	if _, err := store.OpenWith(ctx, missing, store.OpenOptions{ReadOnly: true}); err == nil {
		t.Fatal("read-only open of a missing file succeeded")
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("read-only open created the file: %v", err)
	}

	path := filepath.Join(dir, "moatless.db")
	db, err := store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.SetMeta(ctx, db.SQL(), "k", "v"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	sum := func() [32]byte {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return sha256.Sum256(b)
	}
	before := sum()
	for _, dsn := range []string{path, "sqlite:" + path, "file:" + path} {
		ro, err := store.OpenWith(ctx, dsn, store.OpenOptions{ReadOnly: true})
		if err != nil {
			t.Fatalf("%s: %v", dsn, err)
		}
		if v, err := ro.Meta(ctx, "k"); err != nil || v != "v" {
			t.Fatalf("%s: read %q, %v", dsn, v, err)
		}
		ro.SetMeta(ctx, ro.SQL(), "k", "changed")
		ro.Close()
	}
	if sum() != before {
		t.Fatal("the database file changed under read-only opens")
	}
	// A server opening it afterwards works as before.
	db, err = store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if v, err := db.Meta(ctx, "k"); err != nil || v != "v" {
		t.Fatalf("after read-only opens: %q, %v", v, err)
	}
}

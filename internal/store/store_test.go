package store_test

import (
	"context"
	"testing"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

func TestMain(m *testing.M) { storetest.Main(m) }

func TestOpenMigratesIdempotently(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		var n int
		if err := db.SQL().QueryRowContext(ctx, "SELECT COUNT(*) FROM schema_migrations").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatal("no migrations recorded")
		}
		if _, err := db.SQL().ExecContext(ctx, "INSERT INTO meta (key, value) VALUES ($1, $2)", "k", "v"); err != nil {
			t.Fatal(err)
		}
		var v string
		if err := db.SQL().QueryRowContext(ctx, "SELECT value FROM meta WHERE key = $1", "k").Scan(&v); err != nil || v != "v" {
			t.Fatalf("got %q, %v", v, err)
		}
	})
}

func TestReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	path := t.TempDir() + "/m.db"
	db, err := store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.SQL().ExecContext(ctx, "INSERT INTO meta (key, value) VALUES ($1, $2)", "k", "v"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db, err = store.Open(ctx, "sqlite:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v string
	if err := db.SQL().QueryRowContext(ctx, "SELECT value FROM meta WHERE key = $1", "k").Scan(&v); err != nil || v != "v" {
		t.Fatalf("got %q, %v", v, err)
	}
}

package store_test

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

// feed records what FollowChanges reports, for tests.
type feed struct {
	mu        sync.Mutex
	connects  int
	drops     int
	versions  []uint64
	connected chan struct{} // one send per Connected
	changed   chan uint64
}

func newFeed() *feed {
	return &feed{connected: make(chan struct{}, 16), changed: make(chan uint64, 1024)}
}

func (f *feed) handler() store.ChangeHandler {
	return store.ChangeHandler{
		Connected:    func() { f.mu.Lock(); f.connects++; f.mu.Unlock(); f.connected <- struct{}{} },
		Disconnected: func(error) { f.mu.Lock(); f.drops++; f.mu.Unlock() },
		Changed:      func(v uint64) { f.changed <- v },
	}
}

func waitOne[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s within 10s", what)
	}
	var zero T
	return zero
}

func bump(t *testing.T, db *store.DB, secs ...store.Section) uint64 {
	t.Helper()
	var v uint64
	err := db.Tx(context.Background(), func(tx *sql.Tx) error {
		var err error
		v, err = db.BumpVersion(context.Background(), tx, secs...)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestFollowChanges: a replica listening on one connection hears every
// version another replica commits, in commit order; a rolled-back change
// is never announced; after its connection is killed it reconnects and
// says so (the caller then re-reads the version).
func TestFollowChanges(t *testing.T) {
	dsn := storetest.PostgresDSN(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	listener, err := store.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	writer, err := store.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()

	f := newFeed()
	done := make(chan error, 1)
	go func() {
		done <- listener.FollowChanges(ctx, f.handler(), store.FollowOptions{Ping: 200 * time.Millisecond, BackoffBase: 10 * time.Millisecond})
	}()
	waitOne(t, f.connected, "connection")

	var want []uint64
	for range 5 {
		want = append(want, bump(t, writer, store.SectionEntries))
	}
	// A change that rolls back notifies nobody.
	errRollback := errors.New("roll back")
	err = writer.Tx(ctx, func(tx *sql.Tx) error {
		if _, err := writer.BumpVersion(ctx, tx, store.SectionPolicies); err != nil {
			return err
		}
		return errRollback
	})
	if !errors.Is(err, errRollback) {
		t.Fatal(err)
	}
	want = append(want, bump(t, writer, store.SectionRevocations))
	for i, w := range want {
		if got := waitOne(t, f.changed, "notification"); got != w {
			t.Fatalf("notification %d: version %d, want %d (all: %v)", i, got, w, want)
		}
	}

	// Kill the listening session from the server side: the feed reports
	// the drop, reconnects and announces the new connection.
	if _, err := writer.SQL().ExecContext(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN%'`); err != nil {
		t.Fatal(err)
	}
	waitOne(t, f.connected, "reconnection")
	f.mu.Lock()
	drops := f.drops
	f.mu.Unlock()
	if drops == 0 {
		t.Fatal("reconnected without reporting the drop")
	}
	v := bump(t, writer, store.SectionBundle)
	if got := waitOne(t, f.changed, "notification after reconnect"); got != v {
		t.Fatalf("after reconnect: version %d, want %d", got, v)
	}

	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("FollowChanges returned %v after cancel", err)
	}
}

func TestFollowChangesNeedsPostgres(t *testing.T) {
	db := storetest.SQLite(t)
	err := db.FollowChanges(context.Background(), store.ChangeHandler{}, store.FollowOptions{})
	if !errors.Is(err, store.ErrNoNotifications) {
		t.Fatalf("SQLite: %v, want ErrNoNotifications", err)
	}
}

// TestTokenRevocationMovesVersion: listing a revoked access token moves
// the revocations version in the same transaction, so a revocation that
// committed reaches every replica and watch stream even if the server that
// wrote it dies before announcing it.
func TestTokenRevocationMovesVersion(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		section := func() uint64 {
			vs, err := db.Versions(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return vs.Sections[store.SectionRevocations]
		}
		before := section()
		now := time.Now()
		toks, err := db.OAuth().RevokeTokenID(ctx, "jti-1", now.Add(time.Hour), now)
		if err != nil || len(toks) != 1 {
			t.Fatalf("revoke: %v %v", toks, err)
		}
		after := section()
		if after <= before {
			t.Fatalf("revocations version %d -> %d after a token revocation", before, after)
		}
		// Listing it again changes nothing, so nothing moves.
		if toks, err := db.OAuth().RevokeTokenID(ctx, "jti-1", now.Add(time.Hour), now); err != nil || len(toks) != 0 {
			t.Fatalf("revoke again: %v %v", toks, err)
		}
		if again := section(); again != after {
			t.Fatalf("revocations version moved %d -> %d for a token already listed", after, again)
		}
	})
}

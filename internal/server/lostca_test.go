package server_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store"
)

// TestLostCAIsNotReplacedSilently: a data directory whose store lost its
// CA state (here an SQLite file put back without its -wal file, which held
// every write since the last checkpoint) made the server create a new CA
// at start, without a word: every agent and sidecar trusting the old one
// was cut off, and the operator learnt it from their outages. The server
// now refuses while DIR/bundle.pem says a CA lived here, names the file and
// the remedy, and starts a new CA once the operator removes it.
func TestLostCAIsNotReplacedSilently(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir)
	var st server.CAStatus
	e.admin("GET", server.PathAdminCA, nil, &st)
	oldX, _ := activeIDs(st)
	e.stop()
	for _, f := range []string{"moatless.db", "moatless.db-wal", "moatless.db-shm"} {
		os.Remove(filepath.Join(dir, f))
	}
	newServer := func() (*server.Server, error) {
		cfg := config.DefaultServer(func(string) string { return "" })
		cfg.DataDir, cfg.TrustDomain, cfg.Listen = dir, "example.org", "127.0.0.1:0"
		cfg.Store, cfg.KEKFile, cfg.AdminIDs = "", "", nil
		cfg.Complete()
		return server.New(context.Background(), server.Config{Settings: cfg, Logger: slog.New(slog.DiscardHandler)})
	}
	bundle := filepath.Join(dir, server.BundleFile)
	before, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newServer(); err == nil || !strings.Contains(err.Error(), "holds no CA") || !strings.Contains(err.Error(), bundle) {
		t.Fatalf("start on a store that lost its CA: %v", err)
	} else {
		t.Logf("refused: %v", err)
	}
	if after, _ := os.ReadFile(bundle); string(after) != string(before) {
		t.Fatal("the refused start rewrote bundle.pem")
	}
	// On purpose: without bundle.pem a new CA starts.
	if err := os.Remove(bundle); err != nil {
		t.Fatal(err)
	}
	e = start(t, dir)
	e.admin("GET", server.PathAdminCA, nil, &st)
	if newX, _ := activeIDs(st); newX == oldX || newX == "" {
		t.Fatalf("a new CA after bundle.pem's removal: active %q, the lost one %q", newX, oldX)
	}
}

// TestLostCACheckFailsClosed: checkLostCA took any error looking for
// DIR/bundle.pem (permission denied, an I/O error, a name too long) for
// "no such file" and made a new CA, saved in the store before the start
// failed on the same directory: once the directory came back, the store
// held a CA that nothing trusts. An error other than "does not exist" now
// stops the start with the store untouched.
func TestLostCACheckFailsClosed(t *testing.T) {
	// A data directory whose bundle.pem path is one the kernel refuses
	// (ENAMETOOLONG; permission denied when not root): the store and the
	// KEK live elsewhere, as with PostgreSQL and a KEK from a secret.
	base := t.TempDir()
	dir := base
	for len(dir) < 4090 {
		dir = filepath.Join(dir, strings.Repeat("d", min(200, 4090-len(dir)-1)))
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Skipf("cannot make a %d-byte path here: %v", len(dir), err)
	}
	if _, err := os.Lstat(filepath.Join(dir, server.BundleFile)); err == nil || os.IsNotExist(err) {
		t.Fatalf("lstat bundle.pem in a %d-byte directory: %v, want an error other than not-exist", len(dir), err)
	}
	storeDir := t.TempDir()
	cfg := config.DefaultServer(func(string) string { return "" })
	cfg.DataDir, cfg.TrustDomain, cfg.Listen = dir, "example.org", "127.0.0.1:0"
	cfg.Store, cfg.KEKFile, cfg.AdminIDs = filepath.Join(storeDir, "moatless.db"), filepath.Join(storeDir, "kek"), nil
	cfg.Complete()
	srv, err := server.New(context.Background(), server.Config{Settings: cfg, Logger: slog.New(slog.DiscardHandler)})
	if err == nil {
		srv.Close()
		t.Fatal("started with a data directory it cannot check")
	}
	if !strings.Contains(err.Error(), "cannot be checked") {
		t.Fatalf("start: %v", err)
	}
	t.Logf("refused: %.200s...", err)
	db, err := store.Open(context.Background(), cfg.Store)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.LoadCAState(context.Background()); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the refused start left CA state in the store: %v", err)
	}
}

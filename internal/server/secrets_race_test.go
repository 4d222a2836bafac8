package server

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/secrets"
	"github.com/moatless/moatless/internal/secrets/barrier"
	"github.com/moatless/moatless/internal/store/storetest"
)

type discardAudit struct{}

func (discardAudit) Append(context.Context, audit.Event) error               { return nil }
func (discardAudit) AppendTx(context.Context, *sql.Tx, ...audit.Event) error { return nil }

// Two replicas started together on a new store both find no keyring and
// both create a root key; the one whose keyring is not stored must start
// sealed (as a replica started a moment later does), not fail its start
// with "the root key does not open this store's keyring", and must not
// keep a key file that opens nothing.
func TestFirstStartLosesKeyringRace(t *testing.T) {
	db := storetest.SQLite(t)
	newSvc := func() *secrets.Service {
		svc, err := secrets.New(secrets.Config{Store: db, Audit: discardAudit{}, TrustDomain: "example.org", Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		return svc
	}
	dir := t.TempDir()
	s := &Server{db: db, cfg: config.Server{DataDir: dir}, log: slog.New(slog.DiscardHandler), secrets: &secretsState{svc: newSvc()}}
	other := newSvc()
	beforeFirstSecretsKey = func() {
		k, err := barrier.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		if err := other.UnsealKey(t.Context(), k); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { beforeFirstSecretsKey = func() {} })

	if err := s.unsealSecrets(t.Context(), Config{}); err != nil {
		t.Fatalf("the replica that lost the race failed its start: %v", err)
	}
	if !s.secrets.svc.Sealed() || other.Sealed() {
		t.Fatalf("sealed: loser %v, winner %v; want the loser sealed, the winner not", s.secrets.svc.Sealed(), other.Sealed())
	}
	if _, err := os.Stat(filepath.Join(dir, SecretsKeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the loser's key file: %v; want it removed", err)
	}
}

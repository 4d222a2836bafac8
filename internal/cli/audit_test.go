package cli

import (
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/store"
)

// TestAuditVerifyIsReadOnly: "audit verify" never writes the store it
// judges. It verifies a current store without changing a byte of it, and
// refuses a store whose schema is behind this binary (with what to do)
// instead of migrating it.
func TestAuditVerifyIsReadOnly(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "moatless.db")
	db, err := store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	sink := audit.NewStoreSink(db)
	for _, kind := range []string{audit.KindServerStart, audit.KindEntryCreate} {
		if err := sink.Append(ctx, audit.Event{Kind: kind, Actor: "test", Outcome: audit.Success}); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	sum := func() [32]byte {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return sha256.Sum256(b)
	}
	env := map[string]string{"HOME": dir}
	tests := []struct {
		name    string
		prepare string
		code    int
		want    string
	}{
		{"current_store_verifies", "", ExitOK, "audit log verifies: 2 records"},
		{"pending_migration_refused", "DELETE FROM schema_migrations WHERE version = (SELECT MAX(version) FROM schema_migrations)", ExitFailure,
			"the store's schema is older than this binary; start the server once to migrate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.prepare != "" {
				db, err := store.Open(ctx, path)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := db.SQL().ExecContext(ctx, tc.prepare); err != nil {
					t.Fatal(err)
				}
				db.Close()
			}
			before := sum()
			code, out, errOut := runCLI(t, env, "audit", "verify", "--data-dir", dir)
			if code != tc.code || !strings.Contains(out+errOut, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d containing %q", code, out, errOut, tc.code, tc.want)
			}
			if sum() != before {
				t.Fatal("audit verify changed the store")
			}
		})
	}
	// The pending migration is still pending: verify applied nothing.
	if _, err := store.OpenWith(ctx, path, store.OpenOptions{ReadOnly: true}); !errors.Is(err, store.ErrSchemaOutdated) {
		t.Fatalf("after verify: %v, want the migration still pending", err)
	}
}

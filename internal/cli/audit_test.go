package cli

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
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

func TestMain(m *testing.M) { storetest.Main(m) }

// TestAuditVerifyRefusesRowsOutsideTheChain runs "moatless audit verify"
// on SQLite and PostgreSQL stores into which records were forged with raw
// SQL below the chain (seq 0 and -7, which verify used to skip) and above
// it: every form of the command fails, naming the forged record, also with
// a head saved before the forgery.
func TestAuditVerifyRefusesRowsOutsideTheChain(t *testing.T) {
	ctx := context.Background()
	for _, dialect := range []struct {
		name string
		dsn  func(t testing.TB) string
	}{
		{"sqlite", func(t testing.TB) string { return filepath.Join(t.TempDir(), "moatless.db") }},
		{"postgres", storetest.PostgresDSN},
	} {
		for _, forged := range []int64{0, -7, 99} {
			t.Run(fmt.Sprintf("%s/seq_%d", dialect.name, forged), func(t *testing.T) {
				dsn := dialect.dsn(t)
				db, err := store.Open(ctx, dsn)
				if err != nil {
					t.Fatal(err)
				}
				sink := audit.NewStoreSink(db)
				for _, kind := range []string{audit.KindServerStart, audit.KindEntryCreate} {
					if err := sink.Append(ctx, audit.Event{Kind: kind, Actor: "test", Outcome: audit.Success}); err != nil {
						t.Fatal(err)
					}
				}
				env := map[string]string{"HOME": t.TempDir()}
				code, out, errOut := runCLI(t, env, "audit", "verify", "--store", dsn)
				if code != ExitOK {
					t.Fatalf("intact store: exit %d %q %q", code, out, errOut)
				}
				head := strings.TrimSpace(out[strings.LastIndex(out, "head ")+len("head "):])
				h := audit.Hash(uint64(forged), 1, "entry.delete", "admin-token", "forged", "success", "{}", nil)
				if _, err := db.SQL().ExecContext(ctx, `INSERT INTO audit_log (seq, at, kind, actor, subject, outcome, details, prev_hash, hash)
					VALUES ($1, 1, 'entry.delete', 'admin-token', 'forged', 'success', '{}', $2, $3)`, forged, []byte{}, h); err != nil {
					t.Fatal(err)
				}
				db.Close()
				want := fmt.Sprintf("record %d: ", forged)
				for _, args := range [][]string{
					{"audit", "verify", "--store", dsn},
					{"audit", "verify", "--store", dsn, "--expect-head", head},
				} {
					code, out, errOut := runCLI(t, env, args...)
					if code != ExitFailure || !strings.Contains(errOut, "does NOT verify: "+want) {
						t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 1 naming %q", args, code, out, errOut, want)
					}
				}
				code, out, _ = runCLI(t, env, "audit", "verify", "--store", dsn, "-o", "json")
				if code != ExitFailure || !strings.Contains(out, fmt.Sprintf(`"first_bad_record": %d`, forged)) || !strings.Contains(out, `"ok": false`) {
					t.Errorf("-o json: exit %d, %s", code, out)
				}
			})
		}
	}
}

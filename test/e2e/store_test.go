package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/store/storetest"
)

// TestStoreMigrateBackupRestore moves a server from SQLite to PostgreSQL
// the way docs/operations.md says: the migration refuses the live store,
// copies the stopped one with its audit chain verified on both sides, and
// a server on PostgreSQL (given the same KEK) serves the same CA, admin
// token and entries. A backup of the live PostgreSQL store restored into
// a new SQLite data directory verifies too and has a new epoch.
func TestStoreMigrateBackupRestore(t *testing.T) {
	p := startPlane(t)
	for _, id := range []string{"spiffe://e2e.test/ns/a/sa/one", "spiffe://e2e.test/ns/a/sa/two"} {
		p.admin("entry", "create", "--parent", agentID, "--spiffe-id", id, "--selector", uidSelector())
	}
	p.joinToken(agentID)
	p.admin("revoke", "--spiffe-id", "spiffe://e2e.test/ns/a/sa/evil", "--reason", "test")
	entriesBefore := p.admin("entry", "list", "-o", "json")
	dsn := storetest.PostgresDSN(t)

	// Live: refused, nothing copied.
	code, _, errOut := run(t, nil, "", "store", "migrate", "--from", "sqlite:"+p.dataDir, "--to", dsn)
	if code != 1 || !strings.Contains(errOut, "live") {
		t.Fatalf("migrate from a running server's store: exit %d: %s", code, errOut)
	}

	p.server.stop(t)
	code, out, errOut := run(t, nil, "", "store", "migrate", "--from", "sqlite:"+p.dataDir, "--to", dsn, "-o", "json")
	if code != 0 {
		t.Fatalf("migrate: exit %d: %s", code, errOut)
	}
	var rep struct {
		OK      bool   `json:"ok"`
		Rows    int    `json:"rows"`
		Records int    `json:"audit_records"`
		Head    string `json:"audit_head"`
		Epoch   string `json:"epoch"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || !rep.OK || rep.Records == 0 || rep.Rows == 0 {
		t.Fatalf("migrate report: %v %s", err, out)
	}
	// Twice: the destination is no longer empty.
	if code, _, errOut := run(t, nil, "", "store", "migrate", "--from", "sqlite:"+p.dataDir, "--to", dsn); code != 1 || !strings.Contains(errOut, "not empty") {
		t.Fatalf("second migrate: exit %d: %s", code, errOut)
	}

	// A replica on PostgreSQL: its own data directory, the old KEK; the
	// admin token (its hash is in the store) and CA carry over.
	pgDir := t.TempDir()
	addr := freeAddr(t)
	srv := start(t, "pg-server", nil, "server", "--data-dir", pgDir, "--store", dsn, "--kek-file", filepath.Join(p.dataDir, "kek"),
		"--trust-domain", trustDomain, "--listen", addr)
	waitListening(t, srv, addr, pgDir)
	if a, b := readFileString(t, filepath.Join(p.dataDir, "bundle.pem")), readFileString(t, filepath.Join(pgDir, "bundle.pem")); a != b {
		t.Fatal("the server on PostgreSQL serves another CA")
	}
	env := []string{"MOATLESS_ADDR=" + addr, "MOATLESS_DATA_DIR=" + p.dataDir, "MOATLESS_TOKEN=", "MOATLESS_CACERT="}
	code, entriesAfter, errOut := run(t, env, "", "entry", "list", "-o", "json")
	if code != 0 || entriesAfter != entriesBefore {
		t.Fatalf("entries on PostgreSQL (exit %d %s):\n%s\nwant:\n%s", code, errOut, entriesAfter, entriesBefore)
	}

	// Backup of the live PostgreSQL store, restored into a new SQLite
	// data directory.
	backup := filepath.Join(t.TempDir(), "backup.db")
	if code, _, errOut := run(t, nil, "", "store", "backup", "--store", dsn, "--to", backup); code != 0 {
		t.Fatalf("backup: exit %d: %s", code, errOut)
	}
	if code, _, errOut := run(t, nil, "", "store", "backup", "--store", dsn, "--to", backup); code != 2 || !strings.Contains(errOut, "exists") {
		t.Fatalf("backup over an existing file: exit %d: %s", code, errOut)
	}
	restored := t.TempDir()
	code, out, errOut = run(t, nil, "", "store", "restore", "--from", backup, "--to", "sqlite:"+restored, "-o", "json")
	if code != 0 {
		t.Fatalf("restore: exit %d: %s", code, errOut)
	}
	var rrep struct {
		OK    bool   `json:"ok"`
		Epoch string `json:"epoch"`
	}
	if err := json.Unmarshal([]byte(out), &rrep); err != nil || !rrep.OK || rrep.Epoch == "" || rrep.Epoch == rep.Epoch {
		t.Fatalf("restore report (migrated epoch %s): %v %s", rep.Epoch, err, out)
	}
	if code, out, errOut := run(t, nil, "", "audit", "verify", "--data-dir", restored); code != 0 || !strings.Contains(out, "verifies") {
		t.Fatalf("audit verify on the restored store: exit %d: %s %s", code, out, errOut)
	}
}

func readFileString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

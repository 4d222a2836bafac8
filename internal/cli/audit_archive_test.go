package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/store"
)

// TestAuditArchiveCLI: "audit archive" moves old records to segment
// files; "audit verify" then checks the store from its archived head, and
// with --archive the files and the store as one chain from record 1,
// naming a tampered segment.
func TestAuditArchiveCLI(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "moatless.db")
	db, err := store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	sink := audit.NewStoreSink(db)
	old := time.Now().Add(-48 * time.Hour)
	for i := range 5 {
		if err := sink.Append(ctx, audit.Event{Kind: audit.KindEntryCreate, Actor: "test", Outcome: audit.Success, Time: old.Add(time.Duration(i) * time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := sink.Append(ctx, audit.Event{Kind: audit.KindEntryCreate, Actor: "test", Outcome: audit.Success}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	env := map[string]string{"HOME": dir}
	archive := filepath.Join(t.TempDir(), "archive")

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"flags_required", []string{"audit", "archive", "--data-dir", dir}, ExitUsage, "--out and --older-than are required"},
		{"archive_old_records", []string{"audit", "archive", "--data-dir", dir, "--out", archive, "--older-than", "24h", "--max-records", "2"}, ExitOK, "archived records 5-5"},
		{"nothing_left", []string{"audit", "archive", "--data-dir", dir, "--out", archive, "--older-than", "24h"}, ExitOK, "nothing to archive"},
		{"verify_from_archived_head", []string{"audit", "verify", "--data-dir", dir}, ExitOK, "records 1-5 are archived: add --archive DIR"},
		{"verify_with_archive", []string{"audit", "verify", "--data-dir", dir, "--archive", archive}, ExitOK, "audit log verifies from record 1: 9 records"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, env, tc.args...)
			if code != tc.code || !strings.Contains(out+errOut, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d containing %q", code, out, errOut, tc.code, tc.want)
			}
		})
	}
	seg := filepath.Join(archive, audit.SegmentName(3, 4))
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(seg, []byte(strings.Replace(string(b), `"actor":"test"`, `"actor":"someone"`, 1)), 0o600)
	code, out, errOut := runCLI(t, env, "audit", "verify", "--data-dir", dir, "--archive", archive)
	if code != ExitFailure || !strings.Contains(errOut, "audit archive does NOT verify: record 3") {
		t.Fatalf("tampered archive: exit %d %q %q", code, out, errOut)
	}
}

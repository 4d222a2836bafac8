package audit_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

// archiveOld archives the records older than record cut's time.
func archiveOld(t *testing.T, db *store.DB, sink *audit.StoreSink, dir string, cut, max int) []store.AuditSegment {
	t.Helper()
	segs, err := audit.Archive(context.Background(), db, sink, audit.ArchiveOptions{
		Dir: dir, Before: t0.Add(time.Duration(cut) * time.Second), MaxRecords: max, Actor: "test",
		Now: func() time.Time { return t0.Add(time.Hour) },
	})
	if err != nil {
		t.Fatal(err)
	}
	return segs
}

// TestArchiveKeepsOneChain: records older than the cutoff leave the store
// for segment files; the store's log verifies from its archived head, the
// files verify from record 1 and end exactly there, and the audit.archive
// records are part of the chain.
func TestArchiveKeepsOneChain(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		sink := fill(t, db, 50)
		dir := t.TempDir()
		segs := archiveOld(t, db, sink, dir, 31, 12) // records 1-30 are older
		if len(segs) != 3 || segs[0].FirstSeq != 1 || segs[2].LastSeq != 30 || segs[1].Records != 12 {
			t.Fatalf("segments: %+v", segs)
		}
		if again := archiveOld(t, db, sink, dir, 31, 12); len(again) != 0 {
			t.Fatalf("second run archived %+v", again)
		}
		res, err := audit.Verify(ctx, db, audit.VerifyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if res.Base.Seq != 30 || res.Records != 20+3 || res.Head.Seq != 53 {
			t.Fatalf("store log: %+v", res)
		}
		stored, err := db.AuditSegments(ctx)
		if err != nil {
			t.Fatal(err)
		}
		arch, err := audit.VerifyArchive(dir, stored, nil)
		if err != nil {
			t.Fatal(err)
		}
		if arch.Records != 30 || arch.Head.Seq != 30 {
			t.Fatalf("archive: %+v", arch)
		}
		if _, err := audit.Verify(ctx, db, audit.VerifyOptions{Archived: &arch.Head}); err != nil {
			t.Fatalf("store after archive: %v", err)
		}
		recs, err := audit.List(ctx, db, 0, 3)
		if err != nil || recs[0].Kind != audit.KindAuditArchive || recs[0].Details["last_seq"] != "30" {
			t.Fatalf("newest records: %+v %v", recs, err)
		}
	})
}

// TestArchiveTamperingFound: the ways an archive can be broken are each
// named.
func TestArchiveTamperingFound(t *testing.T) {
	db := storetest.SQLite(t)
	sink := fill(t, db, 20)
	dir := t.TempDir()
	archiveOld(t, db, sink, dir, 16, 5) // 1-5, 6-10, 11-15
	stored, err := db.AuditSegments(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	seg2 := filepath.Join(dir, audit.SegmentName(6, 10))
	orig, err := os.ReadFile(seg2)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		tamper  func(t *testing.T)
		segs    []store.AuditSegment
		wantSeq int64
		reason  string
	}{
		{"intact", func(*testing.T) {}, stored, 0, ""},
		{"edited_record_checked_by_hash", func(t *testing.T) {
			os.WriteFile(seg2, []byte(strings.Replace(string(orig), `"subject":"e7"`, `"subject":"e77"`, 1)), 0o600)
		}, nil, 7, "edited"},
		{"edited_record_checked_by_store_sha256", func(t *testing.T) {
			os.WriteFile(seg2, []byte(strings.Replace(string(orig), `"subject":"e7"`, `"subject":"e77"`, 1)), 0o600)
		}, stored, 6, "SHA-256"},
		// What jq shows is "e77"; encoding/json, case-insensitive and
		// last-wins, would hash "e7": a second, shadowing member.
		{"shadowing_member_shown_to_other_readers", func(t *testing.T) {
			os.WriteFile(seg2, []byte(strings.Replace(string(orig), `"subject":"e7"`, `"subject":"e77","Subject":"e7"`, 1)), 0o600)
		}, nil, 7, "archiver's encoding"},
		{"repeated_member", func(t *testing.T) {
			os.WriteFile(seg2, []byte(strings.Replace(string(orig), `"subject":"e7"`, `"subject":"e77","subject":"e7"`, 1)), 0o600)
		}, nil, 7, "archiver's encoding"},
		{"segment_deleted", func(t *testing.T) { os.Remove(seg2) }, nil, 6, "missing or out of order"},
		{"segment_deleted_store_knows", func(t *testing.T) { os.Remove(seg2) }, stored, 6, "archived segment missing"},
		{"tail_truncated", func(t *testing.T) {
			lines := strings.SplitAfter(string(orig), "\n")
			os.WriteFile(seg2, []byte(strings.Join(lines[:len(lines)-2], "")), 0o600)
		}, nil, 10, "truncated"},
		{"line_dropped", func(t *testing.T) {
			lines := strings.SplitAfter(string(orig), "\n")
			os.WriteFile(seg2, []byte(strings.Join(append(lines[:2:2], lines[3:]...), "")), 0o600)
		}, nil, 7, "missing"},
		{"not_a_segment", func(t *testing.T) { os.WriteFile(seg2, []byte("{}\n"), 0o600) }, nil, 6, "bad header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.WriteFile(seg2, orig, 0o600)
			tc.tamper(t)
			_, err := audit.VerifyArchive(dir, tc.segs, nil)
			if tc.reason == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var ve *audit.VerifyError
			if !errors.As(err, &ve) || ve.Seq != tc.wantSeq || !strings.Contains(ve.Reason, tc.reason) {
				t.Fatalf("got %v, want record %d %q", err, tc.wantSeq, tc.reason)
			}
		})
	}
	os.WriteFile(seg2, orig, 0o600)
	// A file the store never recorded (an archive run that failed before
	// its commit) is not part of the chain.
	orphan := filepath.Join(dir, audit.SegmentName(16, 18))
	os.WriteFile(orphan, []byte("{}\n"), 0o600)
	if _, _, _, err := audit.VerifyAll(context.Background(), db, dir, audit.VerifyOptions{}); err != nil {
		t.Fatalf("an unrecorded file broke verification: %v", err)
	}
	os.Remove(orphan)
	// The store's log does not continue where files that stop early end.
	wrong := audit.Head{Seq: 10}
	if _, err := audit.Verify(context.Background(), db, audit.VerifyOptions{Archived: &wrong}); err == nil {
		t.Fatal("store continuing from another head accepted")
	}
	// Deleting archived records from the store without recording a
	// segment breaks the chain there.
	exec(t, db, "DELETE FROM audit_log WHERE seq = 16")
	var ve *audit.VerifyError
	if _, err := audit.Verify(context.Background(), db, audit.VerifyOptions{}); !errors.As(err, &ve) || ve.Seq != 16 {
		t.Fatalf("record deleted after the archived head: %v", err)
	}
}

// TestArchiveConcurrent: two replicas archiving at once on PostgreSQL
// archive each record once, and the chain still verifies.
func TestArchiveConcurrent(t *testing.T) {
	dsn := storetest.PostgresDSN(t)
	ctx := context.Background()
	var dbs []*store.DB
	for range 2 {
		db, err := store.Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		dbs = append(dbs, db)
	}
	sink := fill(t, dbs[0], 60)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	dirs := []string{t.TempDir(), t.TempDir()}
	for i, db := range dbs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := audit.NewStoreSink(db)
			_, errs[i] = audit.Archive(ctx, db, s, audit.ArchiveOptions{Dir: dirs[i], Before: t0.Add(51 * time.Second), MaxRecords: 5, Actor: "r"})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil && !errors.Is(err, store.ErrArchiveMoved) {
			t.Fatal(err)
		}
	}
	_ = sink
	res, err := audit.Verify(ctx, dbs[0], audit.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	segs, _ := dbs[0].AuditSegments(ctx)
	var n uint64
	for i, g := range segs {
		if i > 0 && g.FirstSeq != segs[i-1].LastSeq+1 {
			t.Fatalf("segments overlap or leave a gap: %+v", segs)
		}
		n += g.Records
	}
	if res.Base.Seq != n || n == 0 {
		t.Fatalf("archived %d records, store continues from %d", n, res.Base.Seq)
	}
}

// validSegment is a segment file of records 1-2 as the archiver writes
// it, with the head it ends at.
func validSegment() (string, audit.Head) {
	h1 := audit.Hash(1, 10, "entry.create", "admin", "e1", "success", `{"a":"b"}`, nil)
	h2 := audit.Hash(2, 20, "policy.apply", "cli", "p<1>", "denied", `{}`, h1)
	return fmt.Sprintf("{\"moatless_audit_segment\":1,\"first_seq\":1,\"last_seq\":2,\"prev_hash\":\"\",\"records\":2}\n"+
		"{\"seq\":1,\"at\":10,\"kind\":\"entry.create\",\"actor\":\"admin\",\"subject\":\"e1\",\"outcome\":\"success\",\"details\":\"{\\\"a\\\":\\\"b\\\"}\",\"prev_hash\":\"\",\"hash\":\"%x\"}\n"+
		"{\"seq\":2,\"at\":20,\"kind\":\"policy.apply\",\"actor\":\"cli\",\"subject\":\"p<1>\",\"outcome\":\"denied\",\"details\":\"{}\",\"prev_hash\":\"%x\",\"hash\":\"%x\"}\n",
		h1, h1, h2), audit.Head{Seq: 2, Hash: h2}
}

// FuzzVerifySegment: whatever a segment file holds, verification never
// panics, and what it accepts is a file the archiver could have written:
// every line exactly the encoding of the values the hashes cover, so no
// other reader of the file (jq, a SIEM) can see a record other than the
// one verified, and every record's hash is its content's.
func FuzzVerifySegment(f *testing.F) {
	valid, _ := validSegment()
	f.Add(valid)
	f.Add(strings.Replace(valid, `"kind":"entry.create"`, `"kind":"entry.delete","Kind":"entry.create"`, 1))
	f.Add(strings.Replace(valid, `"subject":"e1"`, `"subject":"e1", "subject":"e1"`, 1))
	f.Add("{\"moatless_audit_segment\":1,\"first_seq\":1,\"last_seq\":1,\"prev_hash\":\"\",\"records\":1}\n" +
		"{\"seq\":1,\"at\":1,\"kind\":\"k\",\"actor\":\"a\",\"subject\":\"s\",\"outcome\":\"success\",\"details\":\"{}\",\"prev_hash\":\"\",\"hash\":\"00\"}\n")
	f.Add("{}\n")
	f.Add("")
	f.Add("{\"moatless_audit_segment\":1,\"first_seq\":1,\"last_seq\":0,\"prev_hash\":\"\",\"records\":0}\n")
	p := filepath.Join(f.TempDir(), audit.SegmentName(1, 2))
	f.Fuzz(func(t *testing.T, content string) {
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		res, err := audit.VerifySegmentFile(p, audit.Head{})
		if err != nil {
			return
		}
		if res.Records == 0 {
			t.Fatalf("accepted a segment with no record: %q", content)
		}
		lines := strings.Split(strings.TrimSuffix(strings.ReplaceAll(content, "\r\n", "\n"), "\n"), "\n")
		if uint64(len(lines)) != res.Records+1 {
			t.Fatalf("accepted %d records from %d lines: %q", res.Records, len(lines), content)
		}
		var prev []byte
		for _, line := range lines[1:] {
			var r audit.SegmentLine
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("accepted line %q: %v", line, err)
			}
			var b bytes.Buffer
			enc := json.NewEncoder(&b)
			enc.SetEscapeHTML(false)
			enc.Encode(r)
			if canonical := strings.TrimSuffix(b.String(), "\n"); canonical != line {
				t.Fatalf("accepted line\n%s\nwhich reads as\n%s", line, canonical)
			}
			if h := audit.Hash(r.Seq, r.At, r.Kind, r.Actor, r.Subject, r.Outcome, r.Details, prev); fmt.Sprintf("%x", h) != r.Hash {
				t.Fatalf("accepted record %d whose hash is not its content's", r.Seq)
			}
			prev = audit.Hash(r.Seq, r.At, r.Kind, r.Actor, r.Subject, r.Outcome, r.Details, prev)
		}
	})
}

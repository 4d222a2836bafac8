package audit_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

func TestMain(m *testing.M) { storetest.Main(m) }

var t0 = time.Date(2026, 3, 4, 5, 6, 7, 8, time.UTC)

// fill appends n events through the group-commit path and returns the sink.
func fill(t *testing.T, db *store.DB, n int) *audit.StoreSink {
	t.Helper()
	s := audit.NewStoreSink(db)
	i := 0
	s.Now = func() time.Time { i++; return t0.Add(time.Duration(i) * time.Second) }
	for k := range n {
		ev := audit.Event{Kind: audit.KindEntryCreate, Actor: "admin-token", Subject: fmt.Sprintf("e%d", k+1),
			Outcome: audit.Success, Details: map[string]string{"remote": "127.0.0.1:1", "n": fmt.Sprint(k)}}
		if err := s.Append(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// storedRows returns the stored rows from seq on.
func storedRows(t *testing.T, db *store.DB, from int64) []store.AuditRow {
	t.Helper()
	var rows []store.AuditRow
	err := db.ReadAudit(context.Background(), func(s *store.AuditSnapshot) error {
		var err error
		rows, err = s.RowsFrom(context.Background(), from, 1000)
		return err
	})
	if err != nil || len(rows) == 0 {
		t.Fatalf("rows from %d: %v %v", from, rows, err)
	}
	return rows
}

func exec(t *testing.T, db *store.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.SQL().ExecContext(context.Background(), q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// TestVerifyCatchesTampering edits the stored log the ways an attacker
// with database access would, and checks Verify names the first record
// that no longer fits.
func TestVerifyCatchesTampering(t *testing.T) {
	tests := []struct {
		name    string
		tamper  func(t *testing.T, db *store.DB)
		wantSeq int64
		reason  string
	}{
		{"intact", func(*testing.T, *store.DB) {}, 0, ""},
		{"edited_subject", func(t *testing.T, db *store.DB) {
			exec(t, db, "UPDATE audit_log SET subject = 'evil' WHERE seq = 3")
		}, 3, "edited"},
		{"edited_details", func(t *testing.T, db *store.DB) {
			exec(t, db, `UPDATE audit_log SET details = '{"n":"9"}' WHERE seq = 4`)
		}, 4, "edited"},
		{"edited_time", func(t *testing.T, db *store.DB) {
			exec(t, db, "UPDATE audit_log SET at = at + 1 WHERE seq = 2")
		}, 2, "edited"},
		{"deleted_middle", func(t *testing.T, db *store.DB) {
			exec(t, db, "DELETE FROM audit_log WHERE seq = 3")
		}, 3, "deleted"},
		{"deleted_first", func(t *testing.T, db *store.DB) {
			exec(t, db, "DELETE FROM audit_log WHERE seq = 1")
		}, 1, "deleted"},
		{"deleted_and_renumbered", func(t *testing.T, db *store.DB) {
			exec(t, db, "DELETE FROM audit_log WHERE seq = 3")
			exec(t, db, "UPDATE audit_log SET seq = seq - 1 WHERE seq > 3")
			exec(t, db, "UPDATE audit_head SET seq = seq - 1")
		}, 3, "deleted, inserted or reordered"},
		{"truncated_tail", func(t *testing.T, db *store.DB) {
			exec(t, db, "DELETE FROM audit_log WHERE seq >= 4")
		}, 4, "tail truncated"},
		{"reordered", func(t *testing.T, db *store.DB) {
			// Swap the contents of records 2 and 3, keeping their seqs.
			exec(t, db, "UPDATE audit_log SET seq = 100 WHERE seq = 2")
			exec(t, db, "UPDATE audit_log SET seq = 2 WHERE seq = 3")
			exec(t, db, "UPDATE audit_log SET seq = 3 WHERE seq = 100")
		}, 2, "reordered"},
		{"inserted_at_end", func(t *testing.T, db *store.DB) {
			// A well-formed record appended without moving the head.
			rows := storedRows(t, db, 5)
			prev := rows[0].Hash
			h := audit.Hash(6, 1, "k", "a", "s", "success", "{}", prev)
			exec(t, db, `INSERT INTO audit_log (seq, at, kind, actor, subject, outcome, details, prev_hash, hash)
				VALUES (6, 1, 'k', 'a', 's', 'success', '{}', $1, $2)`, prev, h)
		}, 6, "outside the audit sink"},
		{"inserted_garbage_at_end", func(t *testing.T, db *store.DB) {
			exec(t, db, `INSERT INTO audit_log (seq, at, kind, actor, subject, outcome, details, prev_hash, hash)
				SELECT seq + 1, at, kind, actor, subject, outcome, details, hash, hash FROM audit_log WHERE seq = 5`)
		}, 6, "after the chain head (5): appended outside the audit sink"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			storetest.Each(t, func(t *testing.T, db *store.DB) {
				fill(t, db, 5)
				tc.tamper(t, db)
				res, err := audit.Verify(context.Background(), db, audit.VerifyOptions{PageSize: 2})
				if tc.wantSeq == 0 {
					if err != nil || res.Records != 5 || res.Head.Seq != 5 {
						t.Fatalf("intact chain: %+v %v", res, err)
					}
					return
				}
				var ve *audit.VerifyError
				if !errors.As(err, &ve) || !errors.Is(err, audit.ErrBroken) {
					t.Fatalf("got %v, want a VerifyError", err)
				}
				if ve.Seq != tc.wantSeq || !strings.Contains(ve.Reason, tc.reason) {
					t.Fatalf("got record %d (%s), want %d (%s)", ve.Seq, ve.Reason, tc.wantSeq, tc.reason)
				}
			})
		})
	}
}

// TestExpectHeadCatchesRewrite: an attacker who edits record 2 and
// recomputes every hash after it passes the plain chain check, but not a
// head saved earlier.
func TestExpectHeadCatchesRewrite(t *testing.T) {
	db := storetest.SQLite(t)
	ctx := context.Background()
	fill(t, db, 4)
	saved, err := audit.Verify(ctx, db, audit.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rows := storedRows(t, db, 1)
	var prev []byte
	for _, r := range rows {
		if r.Seq == 2 {
			r.Subject = "rewritten"
		}
		if r.Seq > 1 {
			r.PrevHash = prev
		} else {
			r.PrevHash = []byte{}
		}
		r.Hash = audit.Hash(uint64(r.Seq), r.At, r.Kind, r.Actor, r.Subject, r.Outcome, r.Details, r.PrevHash)
		exec(t, db, "UPDATE audit_log SET subject = $1, prev_hash = $2, hash = $3 WHERE seq = $4", r.Subject, r.PrevHash, r.Hash, r.Seq)
		prev = r.Hash
	}
	exec(t, db, "UPDATE audit_head SET hash = $1", prev)
	if _, err := audit.Verify(ctx, db, audit.VerifyOptions{}); err != nil {
		t.Fatalf("a consistently rewritten chain should pass the plain check: %v", err)
	}
	head := saved.Head
	_, err = audit.Verify(ctx, db, audit.VerifyOptions{ExpectHead: &head})
	var ve *audit.VerifyError
	if !errors.As(err, &ve) || ve.Seq != 4 {
		t.Fatalf("expect-head: got %v, want record 4", err)
	}
	parsed, err := audit.ParseHead(head.String())
	if err != nil || parsed.Seq != head.Seq {
		t.Fatalf("ParseHead(%q) = %+v, %v", head.String(), parsed, err)
	}
}

// TestAppendTxRollsBack: an audit record written in a failed transaction
// disappears with the change it recorded.
func TestAppendTxRollsBack(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		s := fill(t, db, 2)
		boom := errors.New("boom")
		err := db.Tx(ctx, func(tx *sql.Tx) error {
			if err := s.AppendTx(ctx, tx, audit.Event{Kind: "x", Actor: "a", Outcome: audit.Success}); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatal(err)
		}
		res, err := audit.Verify(ctx, db, audit.VerifyOptions{})
		if err != nil || res.Records != 2 {
			t.Fatalf("after rollback: %+v %v", res, err)
		}
	})
}

// TestConcurrentAppends: many goroutines and two sinks (two replicas on one
// store) append at once; the chain has every event exactly once.
func TestConcurrentAppends(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		sinks := []*audit.StoreSink{audit.NewStoreSink(db), audit.NewStoreSink(db)}
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 10 {
					ev := audit.Event{Kind: audit.KindAdminCall, Actor: "a", Subject: fmt.Sprintf("%d-%d", g, i), Outcome: audit.Success}
					if err := sinks[g%2].Append(ctx, ev); err != nil {
						t.Error(err)
					}
				}
			}()
		}
		wg.Wait()
		res, err := audit.Verify(ctx, db, audit.VerifyOptions{})
		if err != nil || res.Records != 80 {
			t.Fatalf("%+v %v", res, err)
		}
		recs, err := audit.List(ctx, db, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, r := range recs {
			if seen[r.Subject] {
				t.Fatalf("%s recorded twice", r.Subject)
			}
			seen[r.Subject] = true
		}
	})
}

func TestSizeBounds(t *testing.T) {
	db := storetest.SQLite(t)
	s := audit.NewStoreSink(db)
	details := map[string]string{}
	for i := range 200 {
		details[fmt.Sprint(i)] = "v"
	}
	ev := audit.Event{Kind: "k", Actor: strings.Repeat("a", 10000), Outcome: audit.Success, Details: details}
	if err := s.Append(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	recs, _ := audit.List(context.Background(), db, 0, 1)
	if len(recs[0].Actor) > audit.MaxFieldLen+32 || len(recs[0].Details) > 65 {
		t.Fatalf("not bounded: actor %d bytes, %d details", len(recs[0].Actor), len(recs[0].Details))
	}
}

func TestParseHeadRejects(t *testing.T) {
	for _, s := range []string{"", "1", "x:00", "1:zz", "1:00", "-1:" + strings.Repeat("0", 64), "01:" + strings.Repeat("0", 64)} {
		if _, err := audit.ParseHead(s); err == nil {
			t.Errorf("ParseHead(%q) accepted", s)
		}
	}
}

// FuzzHash: any field values chain and verify, and changing any byte of
// any field changes the hash (the length-prefixed encoding is injective).
func FuzzHash(f *testing.F) {
	f.Add(uint64(1), int64(5), "entry.create", "admin", "e1", "success", `{"a":"b"}`, []byte{1, 2})
	f.Add(uint64(9), int64(-1), "", "", "", "", "{}", []byte(nil))
	f.Fuzz(func(t *testing.T, seq uint64, at int64, kind, actor, subject, outcome, details string, prev []byte) {
		h := audit.Hash(seq, at, kind, actor, subject, outcome, details, prev)
		// Moving a byte between adjacent fields must change the hash.
		if len(kind) > 0 {
			h2 := audit.Hash(seq, at, kind[:len(kind)-1], kind[len(kind)-1:]+actor, subject, outcome, details, prev)
			if string(h) == string(h2) {
				t.Fatal("field boundary not covered by the hash")
			}
		}
		if string(audit.Hash(seq+1, at, kind, actor, subject, outcome, details, prev)) == string(h) {
			t.Fatal("seq not covered")
		}
		if string(audit.Hash(seq, at, kind, actor, subject, outcome, details, append(prev, 0))) == string(h) {
			t.Fatal("prev hash not covered")
		}
	})
}

// FuzzParseHead: never panics; accepted input round-trips.
func FuzzParseHead(f *testing.F) {
	f.Add("3:" + strings.Repeat("ab", 32))
	f.Add("x")
	f.Fuzz(func(t *testing.T, s string) {
		h, err := audit.ParseHead(s)
		if err == nil && h.String() != strings.ToLower(s) {
			t.Fatalf("ParseHead(%q) round-trips to %q", s, h.String())
		}
	})
}

// forge inserts a well-formed record (its hash computed over its own
// content, previous-hash as given) with raw SQL, as someone with write
// access to the database would.
func forge(t *testing.T, db *store.DB, seq int64, subject string, prev []byte) {
	t.Helper()
	at := t0.UnixNano()
	h := audit.Hash(uint64(seq), at, audit.KindEntryCreate, "admin-token", subject, audit.Success, "{}", prev)
	exec(t, db, `INSERT INTO audit_log (seq, at, kind, actor, subject, outcome, details, prev_hash, hash)
		VALUES ($1, $2, $3, 'admin-token', $4, 'success', '{}', $5, $6)`, seq, at, audit.KindEntryCreate, subject, nonNilBytes(prev), h)
}

func nonNilBytes(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// TestVerifyEveryRow: every row of the audit table belongs to the chain or
// verification fails, naming it. The chain starts at 1, its sequence
// numbers are contiguous, their count is the head's, and nothing is stored
// below 1, above the head, twice, or under a sequence number that is not
// an integer. Each forgery passes a check that only walks from record 1
// (the bug: rows with seq <= 0 were never read), so each must fail here,
// also against a head saved before the forgery (--expect-head), which it
// does not move.
func TestVerifyEveryRow(t *testing.T) {
	tests := []struct {
		name    string
		sqlite  bool // SQLite only (PostgreSQL's BIGINT NOT NULL key refuses it)
		tamper  func(t *testing.T, db *store.DB)
		wantSeq int64
		reason  string
	}{
		{"seq_zero", false, func(t *testing.T, db *store.DB) { forge(t, db, 0, "forged", nil) }, 0, "outside the chain"},
		{"seq_negative", false, func(t *testing.T, db *store.DB) { forge(t, db, -7, "forged", nil) }, -7, "outside the chain"},
		{"seq_min_int64", false, func(t *testing.T, db *store.DB) { forge(t, db, math.MinInt64, "forged", nil) }, math.MinInt64, "outside the chain"},
		{"seq_zero_chain_rewritten_through_it", false, func(t *testing.T, db *store.DB) {
			// Record 0, then every hash recomputed so that record 1 links
			// to it and the head names the new last hash: the links all
			// hold, but a chain starts at 1.
			forge(t, db, 0, "forged", nil)
			rechain(t, db)
		}, 0, "outside the chain"},
		{"seq_far_above_head", false, func(t *testing.T, db *store.DB) { forge(t, db, math.MaxInt64, "forged", nil) }, math.MaxInt64, "after the chain head"},
		{"duplicate_seq_without_primary_key", false, func(t *testing.T, db *store.DB) {
			dropAuditKey(t, db)
			exec(t, db, `INSERT INTO audit_log (seq, at, kind, actor, subject, outcome, details, prev_hash, hash)
				SELECT seq, at, kind, actor, subject, outcome, details, prev_hash, hash FROM audit_log WHERE seq = 3`)
		}, 3, "stored more than once"},
		{"null_seq", true, func(t *testing.T, db *store.DB) {
			exec(t, db, `INSERT INTO audit_log (seq, at, kind, actor, subject, outcome, details, prev_hash, hash)
				VALUES (NULL, 1, 'k', 'a', 'forged', 'success', '{}', X'', X'00')`)
		}, 0, "not an integer"},
		{"text_seq", true, func(t *testing.T, db *store.DB) {
			exec(t, db, `INSERT INTO audit_log (seq, at, kind, actor, subject, outcome, details, prev_hash, hash)
				VALUES ('x7', 1, 'k', 'a', 'forged', 'success', '{}', X'', X'00')`)
		}, 0, "not an integer"},
		{"real_seq", true, func(t *testing.T, db *store.DB) {
			exec(t, db, `INSERT INTO audit_log (seq, at, kind, actor, subject, outcome, details, prev_hash, hash)
				VALUES (2.5, 1, 'k', 'a', 'forged', 'success', '{}', X'', X'00')`)
		}, 0, "not an integer"},
		{"second_head_row", false, func(t *testing.T, db *store.DB) {
			exec(t, db, "INSERT INTO audit_head (id, seq, hash) VALUES (2, 3, $1)", []byte{1})
		}, 3, "second chain head"},
		{"head_negative", false, func(t *testing.T, db *store.DB) {
			exec(t, db, "UPDATE audit_head SET seq = -2")
		}, -2, "chain head names it"},
		{"times_swapped", false, func(t *testing.T, db *store.DB) {
			// Records 2 and 3 exchange their times: an edit of both.
			exec(t, db, "UPDATE audit_log SET at = -at WHERE seq IN (2, 3)")
			exec(t, db, "UPDATE audit_log SET at = (SELECT -at FROM audit_log WHERE seq = 3) WHERE seq = 2")
			exec(t, db, "UPDATE audit_log SET at = (SELECT -at FROM audit_log WHERE seq = 2) WHERE seq = 3")
		}, 2, "edited"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			storetest.Each(t, func(t *testing.T, db *store.DB) {
				if tc.sqlite && db.Dialect() != store.SQLite {
					t.Skip("the PostgreSQL schema cannot hold this row")
				}
				ctx := context.Background()
				fill(t, db, 5)
				saved, err := audit.Verify(ctx, db, audit.VerifyOptions{})
				if err != nil {
					t.Fatal(err)
				}
				tc.tamper(t, db)
				for _, o := range []audit.VerifyOptions{{PageSize: 2}, {ExpectHead: &saved.Head}} {
					_, err := audit.Verify(ctx, db, o)
					var ve *audit.VerifyError
					if !errors.As(err, &ve) || !errors.Is(err, audit.ErrBroken) {
						t.Fatalf("%+v: got %v, want a VerifyError", o, err)
					}
					if int64(ve.Seq) != tc.wantSeq || !strings.Contains(ve.Reason, tc.reason) {
						t.Fatalf("%+v: got record %d (%s), want %d (%s)", o, int64(ve.Seq), ve.Reason, tc.wantSeq, tc.reason)
					}
				}
				// Listing shows the chain, never a row outside it (and
				// fails rather than guess where a broken head points).
				recs, err := audit.List(ctx, db, 0, 100)
				if err != nil && tc.name != "head_negative" {
					t.Fatal(err)
				}
				for _, r := range recs {
					if r.Subject == "forged" || int64(r.Seq) < 1 || r.Seq > 5 {
						t.Errorf("audit list shows a record outside the chain: %d %q", int64(r.Seq), r.Subject)
					}
				}
			})
		})
	}
}

// rechain recomputes every stored row's links and hashes in order of seq,
// from the lowest, and points the head at the last: a forger's consistent
// rewrite.
func rechain(t *testing.T, db *store.DB) {
	t.Helper()
	var prev []byte
	var last int64
	for _, r := range storedRows(t, db, math.MinInt64) {
		h := audit.Hash(uint64(r.Seq), r.At, r.Kind, r.Actor, r.Subject, r.Outcome, r.Details, prev)
		exec(t, db, "UPDATE audit_log SET prev_hash = $1, hash = $2 WHERE seq = $3", nonNilBytes(prev), h, r.Seq)
		prev, last = h, r.Seq
	}
	exec(t, db, "UPDATE audit_head SET seq = $1, hash = $2", last, prev)
}

// dropAuditKey removes audit_log's primary key, as an attacker with DDL
// rights could, so a sequence number can be stored twice.
func dropAuditKey(t *testing.T, db *store.DB) {
	t.Helper()
	if db.Dialect() == store.Postgres {
		exec(t, db, "ALTER TABLE audit_log DROP CONSTRAINT audit_log_pkey")
		return
	}
	exec(t, db, "ALTER TABLE audit_log RENAME TO audit_log_old")
	exec(t, db, `CREATE TABLE audit_log (seq BIGINT, at BIGINT NOT NULL, kind TEXT NOT NULL, actor TEXT NOT NULL,
		subject TEXT NOT NULL, outcome TEXT NOT NULL, details TEXT NOT NULL, prev_hash BLOB NOT NULL, hash BLOB NOT NULL)`)
	exec(t, db, "INSERT INTO audit_log SELECT * FROM audit_log_old")
	exec(t, db, "DROP TABLE audit_log_old")
}

// TestVerifyTailCutAndHeadMovedBack: deleting the newest records and
// moving the head back to the last one left is a consistent shorter chain;
// only a head saved before (--expect-head) tells. The same holds for a
// chain rewritten from an edited record (times reordered, say) forward.
func TestVerifyTailCutAndHeadMovedBack(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		fill(t, db, 5)
		saved, err := audit.Verify(ctx, db, audit.VerifyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rows := storedRows(t, db, 4)
		exec(t, db, "DELETE FROM audit_log WHERE seq = 5")
		exec(t, db, "UPDATE audit_head SET seq = 4, hash = $1", rows[0].Hash)
		if res, err := audit.Verify(ctx, db, audit.VerifyOptions{}); err != nil || res.Records != 4 {
			t.Fatalf("a consistently shortened chain passes the plain check: %+v %v", res, err)
		}
		_, err = audit.Verify(ctx, db, audit.VerifyOptions{ExpectHead: &saved.Head})
		var ve *audit.VerifyError
		if !errors.As(err, &ve) || int64(ve.Seq) != 5 || !strings.Contains(ve.Reason, "expected head") {
			t.Fatalf("expect-head after the tail was cut: %v", err)
		}
	})
}

// TestVerifyDuringAppends: verifying the store of a running server, whose
// appends commit between verify's reads, never reports tampering (verify
// reads one snapshot: rows, their count and the head agree).
func TestVerifyDuringAppends(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		fill(t, db, 3)
		sink := audit.NewStoreSink(db)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := range 100 {
				if err := sink.Append(ctx, audit.Event{Kind: audit.KindAdminCall, Actor: "a", Subject: fmt.Sprint(i), Outcome: audit.Success}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
		for runs := 0; ; runs++ {
			select {
			case <-done:
				if res, err := audit.Verify(ctx, db, audit.VerifyOptions{}); err != nil || res.Records != 103 {
					t.Fatalf("after the appends: %+v %v", res, err)
				}
				t.Logf("%d verifications during the appends", runs)
				return
			default:
			}
			if _, err := audit.Verify(ctx, db, audit.VerifyOptions{PageSize: 7}); err != nil {
				t.Fatalf("verify during appends: %v", err)
			}
		}
	})
}

func TestListKindsMatchesLiteralPrefixes(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		s := audit.NewStoreSink(db)
		for _, k := range []string{"ui.login", "uiXlogin", "oauth.token", "oauth_x.token", "secrets.read", "entry.create", `100%.sure`, `1000.sure`} {
			if err := s.Append(ctx, audit.Event{Kind: k, Actor: "admin-token", Outcome: audit.Success}); err != nil {
				t.Fatal(err)
			}
		}
		tests := []struct {
			name     string
			prefixes []string
			want     []string // newest first
		}{
			{name: "all", want: []string{`1000.sure`, `100%.sure`, "entry.create", "secrets.read", "oauth_x.token", "oauth.token", "uiXlogin", "ui.login"}},
			{name: "dot_is_literal", prefixes: []string{"ui."}, want: []string{"ui.login"}},
			{name: "underscore_is_literal", prefixes: []string{"oauth_"}, want: []string{"oauth_x.token"}},
			{name: "percent_is_literal", prefixes: []string{"100%"}, want: []string{`100%.sure`}},
			{name: "several", prefixes: []string{"oauth.", "secrets."}, want: []string{"secrets.read", "oauth.token"}},
			{name: "none_match", prefixes: []string{"nope."}, want: nil},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				recs, err := audit.ListKinds(ctx, db, 0, 100, tt.prefixes)
				if err != nil {
					t.Fatal(err)
				}
				if got := kindsOf(recs); !slices.Equal(got, tt.want) {
					t.Fatalf("got %q, want %q", got, tt.want)
				}
			})
		}
		// Paging: before excludes the newest.
		recs, err := audit.ListKinds(ctx, db, 8, 1, []string{"100", "ui."})
		if err != nil || len(recs) != 1 || recs[0].Kind != `100%.sure` {
			t.Fatalf("page before 8: %v %v", recs, err)
		}
		// A range: only records from..upTo (seq 1 is ui.login, 8 is 1000.sure).
		for _, tc := range []struct {
			name     string
			from, to uint64
			prefixes []string
			want     []string
		}{
			{name: "range_of_kinds", from: 2, to: 8, prefixes: []string{"ui", "oauth."}, want: []string{"oauth.token", "uiXlogin"}},
			{name: "range_of_all", from: 6, to: 7, want: []string{`100%.sure`, "entry.create"}},
			{name: "from_zero_is_one", from: 0, to: 1, want: []string{"ui.login"}},
			{name: "empty_range", from: 5, to: 4, want: nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				recs, err := audit.ListRange(ctx, db, tc.from, tc.to, 100, tc.prefixes)
				if err != nil {
					t.Fatal(err)
				}
				if got := kindsOf(recs); !slices.Equal(got, tc.want) {
					t.Fatalf("got %q, want %q", got, tc.want)
				}
			})
		}
	})
}

// kindsOf lists the records' kinds in order.
func kindsOf(recs []audit.Record) []string {
	var out []string
	for _, r := range recs {
		out = append(out, r.Kind)
	}
	return out
}

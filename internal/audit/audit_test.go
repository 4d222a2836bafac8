package audit_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
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
		wantSeq uint64
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
			rows, _ := db.AuditRows(context.Background(), 4, 1)
			prev := rows[0].Hash
			h := audit.Hash(6, 1, "k", "a", "s", "success", "{}", prev)
			exec(t, db, `INSERT INTO audit_log (seq, at, kind, actor, subject, outcome, details, prev_hash, hash)
				VALUES (6, 1, 'k', 'a', 's', 'success', '{}', $1, $2)`, prev, h)
		}, 6, "outside the audit sink"},
		{"inserted_garbage_at_end", func(t *testing.T, db *store.DB) {
			exec(t, db, `INSERT INTO audit_log (seq, at, kind, actor, subject, outcome, details, prev_hash, hash)
				SELECT seq + 1, at, kind, actor, subject, outcome, details, hash, hash FROM audit_log WHERE seq = 5`)
		}, 6, "edited"},
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
	rows, _ := db.AuditRows(ctx, 0, 100)
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
		r.Hash = audit.Hash(r.Seq, r.At, r.Kind, r.Actor, r.Subject, r.Outcome, r.Details, r.PrevHash)
		exec(t, db, "UPDATE audit_log SET subject = $1, prev_hash = $2, hash = $3 WHERE seq = $4", r.Subject, r.PrevHash, r.Hash, int64(r.Seq))
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

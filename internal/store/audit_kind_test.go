package store_test

import (
	"context"
	"database/sql"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

// fillAudit appends n audit rows (seq 1..n) whose kinds are mostly
// agent.call, a tenth oauth.token and one in a thousand incident.open:
// the mix of a busy control plane where the dashboard, "audit list
// --kind" and the detectors look for the rare kinds.
func fillAudit(tb testing.TB, db *store.DB, n int) {
	tb.Helper()
	ctx := context.Background()
	const batch = 5000
	for start := 1; start <= n; start += batch {
		rows := make([]store.AuditRow, 0, batch)
		for seq := start; seq < start+batch && seq <= n; seq++ {
			kind := "agent.call"
			switch {
			case seq%1000 == 0:
				kind = "incident.open"
			case seq%10 == 0:
				kind = "oauth.token"
			}
			rows = append(rows, store.AuditRow{Seq: int64(seq), At: int64(seq), Kind: kind, Actor: "spiffe://td/ns/prod/sa/orders",
				Subject: "x", Outcome: "success", Details: "{}", PrevHash: []byte{1}, Hash: []byte{2}})
		}
		if err := db.Tx(ctx, func(tx *sql.Tx) error { return db.AppendAuditRows(ctx, tx, rows) }); err != nil {
			tb.Fatal(err)
		}
	}
}

func BenchmarkAuditRowsKinds(b *testing.B) {
	const n = 100_000
	storetest.EachB(b, func(b *testing.B, db *store.DB) {
		fillAudit(b, db, n)
		if _, err := db.SQL().ExecContext(context.Background(), "ANALYZE"); err != nil {
			b.Fatal(err)
		}
		for _, tc := range []struct {
			name   string
			prefix string
			want   int
		}{
			{"rare_incident", "incident.", 100},
			{"tenth_oauth", "oauth.", 100},
			{"common_agent", "agent.", 100},
		} {
			b.Run(tc.name, func(b *testing.B) {
				for b.Loop() {
					rows, err := db.AuditRowsDescKinds(context.Background(), n, 100, []string{tc.prefix})
					if err != nil {
						b.Fatal(err)
					}
					if len(rows) != tc.want {
						b.Fatalf("%d rows, want %d", len(rows), tc.want)
					}
				}
			})
		}
	})
}

// TestAuditRowsByKind: a read by kind prefix returns exactly the records
// whose kind starts with a prefix (byte for byte: no LIKE wildcards, no
// case folding), newest first, within the seq range, and both of its
// queries go through the audit_log_kind index.
func TestAuditRowsByKind(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		const n = 20_000
		fillAudit(t, db, n)
		extra := []store.AuditRow{
			{Seq: n + 1, Kind: "incident.step"}, {Seq: n + 2, Kind: "incidentXopen"}, {Seq: n + 3, Kind: "INCIDENT.open"},
			{Seq: n + 4, Kind: "oauth_token"}, {Seq: n + 5, Kind: "incident\u00ff"},
		}
		for i := range extra {
			extra[i].At, extra[i].Actor, extra[i].Subject, extra[i].Outcome, extra[i].Details = 1, "a", "s", "success", "{}"
			extra[i].PrevHash, extra[i].Hash = []byte{1}, []byte{2}
		}
		if err := db.Tx(ctx, func(tx *sql.Tx) error { return db.AppendAuditRows(ctx, tx, extra) }); err != nil {
			t.Fatal(err)
		}
		if _, err := db.SQL().ExecContext(ctx, "ANALYZE"); err != nil {
			t.Fatal(err)
		}
		seqs := func(rows []store.AuditRow) []int64 {
			out := []int64{}
			for _, r := range rows {
				out = append(out, r.Seq)
			}
			return out
		}
		for _, tc := range []struct {
			name      string
			from, to  uint64
			limit     int
			prefixes  []string
			wantFirst []int64
			wantLen   int
		}{
			{"rare_prefix", 1, n + 5, 3, []string{"incident."}, []int64{n + 1, n, n - 1000}, 3},
			{"all_of_a_rare_kind", 1, n, 1000, []string{"incident."}, []int64{n, n - 1000}, n / 1000},
			{"two_prefixes_merged_newest_first", 1, n, 4, []string{"incident.", "oauth."}, []int64{n, n - 10, n - 20, n - 30}, 4},
			{"seq_range", n - 2500, n - 1500, 10, []string{"incident."}, []int64{n - 2000}, 1},
			{"underscore_is_no_wildcard", 1, n + 5, 10, []string{"oauth_"}, []int64{n + 4}, 1},
			{"case_sensitive", 1, n + 5, 10, []string{"INCIDENT."}, []int64{n + 3}, 1},
			{"dot_is_literal", 1, n + 5, 10, []string{"incidentX"}, []int64{n + 2}, 1},
			{"high_bytes", 1, n + 5, 10, []string{"incident\u00ff"}, []int64{n + 5}, 1},
			{"no_match", 1, n + 5, 10, []string{"secrets."}, []int64{}, 0},
			{"empty_prefix_is_everything", n, n + 5, 10, []string{""}, []int64{n + 5, n + 4, n + 3}, 6},
		} {
			t.Run(tc.name, func(t *testing.T) {
				rows, err := db.AuditRowsRangeKinds(ctx, tc.from, tc.to, tc.limit, tc.prefixes)
				if err != nil {
					t.Fatal(err)
				}
				got := seqs(rows)
				if len(got) != tc.wantLen || len(got) < len(tc.wantFirst) {
					t.Fatalf("%d rows %v, want %d", len(got), got[:min(len(got), 10)], tc.wantLen)
				}
				for i, w := range tc.wantFirst {
					if got[i] != w {
						t.Fatalf("rows %v, want them to start %v", got[:min(len(got), 10)], tc.wantFirst)
					}
				}
				for i := 1; i < len(got); i++ {
					if got[i] >= got[i-1] {
						t.Fatalf("not newest first: %v", got)
					}
				}
			})
		}
		if _, err := db.AuditRowsRangeKinds(ctx, 1, n, 10, []string{"incident\xff"}); err == nil || !strings.Contains(err.Error(), "not UTF-8") {
			t.Errorf("a prefix that is not UTF-8: %v", err)
		}
		kinds, rows, err := db.AuditKindPlans(ctx, "incident.", "incident.open")
		if err != nil {
			t.Fatal(err)
		}
		for name, plan := range map[string]string{"kinds": kinds, "rows": rows} {
			if !strings.Contains(plan, "audit_log_kind") {
				t.Errorf("the %s query does not use audit_log_kind:\n%s", name, plan)
			}
			if strings.Contains(plan, "SCAN audit_log\n") || strings.Contains(plan, "Seq Scan") {
				t.Errorf("the %s query scans the log:\n%s", name, plan)
			}
		}
	})
}

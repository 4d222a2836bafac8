package store_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

func TestDetectTraffic(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		m0 := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
		row := func(m time.Time, reporter, src string, n uint64) store.EdgeRow {
			return store.EdgeRow{Minute: m, Reporter: reporter, Direction: "inbound", Source: src, Destination: "spiffe://td/ns/prod/sa/orders",
				Port: 8080, Protocol: "http", Method: "GET", Path: "/orders/{*}", Decision: "allow", Status: 2,
				Requests: n, RespBytes: n * 100, LatencySum: n * 10, LatencyMax: 30, PIIMatches: 1}
		}
		rows := []store.EdgeRow{
			row(m0, "r1", "spiffe://td/a", 5), row(m0, "r2", "spiffe://td/a", 7),
			row(m0.Add(time.Minute), "r1", "spiffe://td/a", 1), row(m0.Add(2*time.Minute), "r1", "spiffe://td/b", 2),
		}
		rows[3].LatencyMax = 99
		if err := db.InsertTraffic(ctx, rows, nil); err != nil {
			t.Fatal(err)
		}
		tot, err := db.EdgeTotals(ctx, store.EdgeQuery{Since: m0})
		if err != nil {
			t.Fatal(err)
		}
		if len(tot) != 2 || tot[0].Source != "spiffe://td/b" || tot[1].Requests != 13 || tot[1].RespBytes != 1300 || !tot[1].Minute.Equal(m0) || !tot[1].Last.Equal(m0.Add(time.Minute)) {
			t.Fatalf("totals: %+v", tot)
		}
		if tot[0].LatencyMax != 99 || tot[1].PIIMatches != 3 {
			t.Fatalf("max latency or PII: %+v", tot)
		}
		if tot, _ := db.EdgeTotals(ctx, store.EdgeQuery{Since: m0, Source: "spiffe://td/b"}); len(tot) != 1 {
			t.Fatalf("source filter: %+v", tot)
		}
		if err := db.UpsertWorkload(ctx, store.Workload{SPIFFEID: "spiffe://td/ns/prod/sa/orders", Component: "sidecar", Namespace: "prod",
			Labels: map[string]string{"app": "orders"}, Ports: []int{8080}, LastSeen: m0}); err != nil {
			t.Fatal(err)
		}
		if tot, _ := db.EdgeTotals(ctx, store.EdgeQuery{Since: m0, Namespace: "prod"}); len(tot) != 2 {
			t.Fatalf("namespace filter: %+v", tot)
		}
		if tot, _ := db.EdgeTotals(ctx, store.EdgeQuery{Since: m0, Namespace: "dev"}); len(tot) != 0 {
			t.Fatalf("namespace filter: %+v", tot)
		}
		var minutes []store.EdgeRow
		if err := db.EdgeMinutes(ctx, store.EdgeQuery{Since: m0}, func(r store.EdgeRow) error { minutes = append(minutes, r); return nil }); err != nil {
			t.Fatal(err)
		}
		if len(minutes) != 3 || minutes[0].Requests != 12 || !minutes[2].Minute.Equal(m0.Add(2*time.Minute)) {
			t.Fatalf("minutes: %+v", minutes)
		}
		ev, _ := json.Marshal(map[string]string{"decision": "deny"})
		if err := db.InsertTraffic(ctx, nil, []store.Sample{{At: m0, Reporter: "r1", Source: "spiffe://td/a", Decision: "deny", Event: ev},
			{At: m0.Add(time.Minute), Reporter: "r1", Source: "spiffe://td/b", Decision: "allow", Event: ev}}); err != nil {
			t.Fatal(err)
		}
		if l, _ := db.Samples(ctx, store.SampleQuery{Source: "spiffe://td/a", Limit: 10}); len(l) != 1 || l[0].Decision != "deny" {
			t.Fatalf("samples: %+v", l)
		}
		if n, err := db.PruneTraffic(ctx, m0.Add(90*time.Second)); err != nil || n != 5 { // 3 edge rows, 2 samples
			t.Fatalf("prune: %d %v", n, err)
		}
		if tot, _ := db.EdgeTotals(ctx, store.EdgeQuery{}); len(tot) != 1 || tot[0].Source != "spiffe://td/b" {
			t.Fatalf("after prune: %+v", tot)
		}
		for _, at := range []time.Time{m0, m0.Add(time.Hour)} {
			k := store.KnownEdge{Source: "a", Destination: "b", Method: "GET", Path: "/", FirstSeen: at}
			if err := db.AddKnownEdges(ctx, []store.KnownEdge{k, k}); err != nil {
				t.Fatal(err)
			}
		}
		if k, _ := db.KnownEdges(ctx); len(k) != 1 || !k[0].FirstSeen.Equal(m0) {
			t.Fatalf("known edges keep the first sighting: %+v", k)
		}
	})
}

func TestDetectBlocks(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		now := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
		v0, _ := db.Versions(ctx)
		put := func(b store.Block) {
			if err := db.Tx(ctx, func(tx *sql.Tx) error { _, err := db.PutBlock(ctx, tx, b); return err }); err != nil {
				t.Fatal(err)
			}
		}
		put(store.Block{Source: "a", Destination: "b", IncidentID: "i1", CreatedBy: "test", CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
		put(store.Block{Source: "a", Destination: "c", CreatedBy: "test", CreatedAt: now})
		v1, _ := db.Versions(ctx)
		if v1.Sections[store.SectionRevocations] <= v0.Sections[store.SectionRevocations] {
			t.Fatal("a block did not bump the revocations version")
		}
		if l, _ := db.Blocks(ctx, now); len(l) != 2 || !l[1].ExpiresAt.IsZero() {
			t.Fatalf("blocks: %+v", l)
		}
		if l, _ := db.Blocks(ctx, now.Add(2*time.Hour)); len(l) != 1 || l[0].Destination != "c" {
			t.Fatalf("a lapsed block is still listed: %+v", l)
		}
		var gone []store.Block
		if err := db.Tx(ctx, func(tx *sql.Tx) error {
			var err error
			gone, err = db.PruneBlocks(ctx, tx, now.Add(2*time.Hour))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if len(gone) != 1 || gone[0].IncidentID != "i1" {
			t.Fatalf("pruned: %+v", gone)
		}
		err := db.Tx(ctx, func(tx *sql.Tx) error { _, err := db.DeleteBlock(ctx, tx, "a", "b"); return err })
		if !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("lifting a pruned block: %v", err)
		}
		if err := db.Tx(ctx, func(tx *sql.Tx) error { _, err := db.DeleteBlock(ctx, tx, "a", "c"); return err }); err != nil {
			t.Fatal(err)
		}
	})
}

func TestDetectFindingsAndIncidents(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		now := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
		for i, id := range []string{"f1", "f2", "f3"} {
			f := store.FindingRow{ID: id, At: now.Add(time.Duration(i) * time.Minute), LastAt: now, Detector: "rate", Severity: "medium",
				Identity: "spiffe://td/a", Count: 1, Body: json.RawMessage(`{"id":"` + id + `"}`)}
			if err := db.PutFinding(ctx, db.SQL(), f); err != nil {
				t.Fatal(err)
			}
		}
		if err := db.PutFinding(ctx, db.SQL(), store.FindingRow{ID: "f1", At: now, LastAt: now.Add(time.Hour), Detector: "rate", Severity: "high",
			Identity: "spiffe://td/a", Count: 5, IncidentID: "i1", Body: json.RawMessage(`{}`)}); err != nil {
			t.Fatal(err)
		}
		f, err := db.Finding(ctx, "f1")
		if err != nil || f.Count != 5 || f.IncidentID != "i1" || f.Severity != "high" || !f.LastAt.Equal(now.Add(time.Hour)) {
			t.Fatalf("updated finding: %+v %v", f, err)
		}
		l, _ := db.Findings(ctx, store.FindingQuery{Identity: "spiffe://td/a", Limit: 2})
		if len(l) != 2 || l[0].ID != "f3" {
			t.Fatalf("page 1: %+v", l)
		}
		l, _ = db.Findings(ctx, store.FindingQuery{Before: l[1].At, Limit: 2})
		if len(l) != 1 || l[0].ID != "f1" {
			t.Fatalf("page 2: %+v", l)
		}
		if l, _ := db.Findings(ctx, store.FindingQuery{Severities: []string{"high", "critical"}, Limit: 10}); len(l) != 1 || l[0].ID != "f1" {
			t.Fatalf("high or critical: %+v", l)
		}
		if l, _ := db.Findings(ctx, store.FindingQuery{Severities: []string{"low"}, Limit: 10}); len(l) != 0 {
			t.Fatalf("low: %+v", l)
		}
		if _, err := db.Finding(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unknown finding: %v", err)
		}
		inc := store.IncidentRow{ID: "i1", Identity: "spiffe://td/a", State: "open", OpenedAt: now, UpdatedAt: now, Body: json.RawMessage(`{"x":1}`)}
		if err := db.PutIncident(ctx, db.SQL(), inc); err != nil {
			t.Fatal(err)
		}
		inc.State, inc.UpdatedAt = "released", now.Add(time.Hour)
		err = db.Tx(ctx, func(tx *sql.Tx) error {
			if _, err := db.Incident(ctx, tx, "i1"); err != nil {
				return err
			}
			return db.PutIncident(ctx, tx, inc)
		})
		if err != nil {
			t.Fatal(err)
		}
		if l, _ := db.Incidents(ctx, store.IncidentQuery{State: "released", Limit: 10}); len(l) != 1 || !l[0].UpdatedAt.Equal(now.Add(time.Hour)) {
			t.Fatalf("incidents: %+v", l)
		}
		if l, _ := db.Incidents(ctx, store.IncidentQuery{State: "open", Limit: 10}); len(l) != 0 {
			t.Fatalf("open incidents: %+v", l)
		}
	})
}

// TestRiskSection: the findings the risk section is computed from are
// those last seen in the window, whoever wrote them; the section is
// stored with a new SectionRisk version only when its body changes.
func TestRiskSection(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
		put := func(id, ident, sev string, last time.Time) {
			t.Helper()
			if err := db.PutFinding(ctx, db.SQL(), store.FindingRow{ID: id, At: last.Add(-time.Hour), LastAt: last, Detector: "probing",
				Severity: sev, Identity: ident, Body: json.RawMessage(`{}`)}); err != nil {
				t.Fatal(err)
			}
		}
		put("f1", "spiffe://td/a", "high", now)
		put("f2", "spiffe://td/b", "low", now.Add(-2*time.Hour))
		put("f3", "spiffe://td/a", "medium", now.Add(-time.Hour)) // at the window's edge: counts
		fs, err := db.RiskFindings(ctx, now.Add(-time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if len(fs) != 2 || fs[0].Identity != "spiffe://td/a" || fs[1].Identity != "spiffe://td/a" {
			t.Fatalf("findings in the window: %+v", fs)
		}
		if _, err := db.RiskSection(ctx); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("before any: %v", err)
		}
		version := func() uint64 {
			vs, err := db.Versions(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return vs.Sections[store.SectionRisk]
		}
		body := []byte(`{"scores":[{"spiffe_id":"spiffe://td/a","score":0.85}]}`)
		for i, tc := range []struct {
			body    []byte
			changed bool
		}{{body, true}, {body, false}, {[]byte(`{"scores":[]}`), true}} {
			before := version()
			changed, err := db.PutRiskSection(ctx, tc.body)
			if err != nil {
				t.Fatal(err)
			}
			if changed != tc.changed || (version() > before) != tc.changed {
				t.Fatalf("put %d: changed %v, version %d → %d", i, changed, before, version())
			}
			if got, err := db.RiskSection(ctx); err != nil || string(got) != string(tc.body) {
				t.Fatalf("put %d: stored %s, %v", i, got, err)
			}
		}
	})
}

// TestOpenIncidentClaim: an identity has one open incident however many
// responders claim it at once; the claim ends only with its own incident.
func TestOpenIncidentClaim(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		const who = "spiffe://td/ns/prod/sa/reports"
		claim := func(id string) (string, bool) {
			t.Helper()
			var cur string
			var ok bool
			if err := db.Tx(ctx, func(tx *sql.Tx) (err error) {
				cur, ok, err = db.ClaimOpenIncident(ctx, tx, who, id)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			return cur, ok
		}
		open := func() string {
			t.Helper()
			id, err := db.OpenIncidentOf(ctx, db.SQL(), who)
			if err != nil {
				t.Fatal(err)
			}
			return id
		}
		if id := open(); id != "" {
			t.Fatalf("open before any claim: %q", id)
		}
		const n = 8
		type result struct {
			cur string
			ok  bool
			err error
		}
		res := make(chan result, n)
		for i := range n {
			go func() {
				var r result
				r.err = db.Tx(ctx, func(tx *sql.Tx) (err error) {
					r.cur, r.ok, err = db.ClaimOpenIncident(ctx, tx, who, fmt.Sprintf("inc-%d", i))
					return err
				})
				res <- r
			}()
		}
		won, winner := 0, open()
		for range n {
			r := <-res
			if r.err != nil {
				t.Fatal(r.err)
			}
			if r.ok {
				won++
			}
			if r.cur != open() {
				t.Errorf("a claimant was told %q, the open incident is %q", r.cur, open())
			}
		}
		winner = open()
		if won != 1 || winner == "" {
			t.Fatalf("%d claims won at once (open: %q), want 1", won, winner)
		}
		if cur, ok := claim("later"); ok || cur != winner {
			t.Fatalf("a later claim: %q %v", cur, ok)
		}
		if err := db.ReleaseOpenIncident(ctx, db.SQL(), who, "later"); err != nil {
			t.Fatal(err)
		}
		if open() != winner {
			t.Fatal("another incident's release ended the claim")
		}
		if err := db.ReleaseOpenIncident(ctx, db.SQL(), who, winner); err != nil {
			t.Fatal(err)
		}
		if id := open(); id != "" {
			t.Fatalf("open after the release: %q", id)
		}
		if cur, ok := claim("next"); !ok || cur != "next" {
			t.Fatalf("a claim after the release: %q %v", cur, ok)
		}
	})
}

// TestOpenIncidentBackfill: migration 0064 on a store whose replicas
// opened several incidents for one identity (before the claim existed)
// makes the newest open or contained one the identity's open incident.
func TestOpenIncidentBackfill(t *testing.T) {
	beforeMigration(t, 64, "detect_open_incidents", func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
		for _, r := range []store.IncidentRow{
			{ID: "a-old", Identity: "a", State: "contained", OpenedAt: t0},
			{ID: "a-new", Identity: "a", State: "open", OpenedAt: t0.Add(time.Minute)},
			{ID: "a-released", Identity: "a", State: "released", OpenedAt: t0.Add(2 * time.Minute)},
			{ID: "b-1", Identity: "b", State: "contained", OpenedAt: t0},
			{ID: "c-1", Identity: "c", State: "released", OpenedAt: t0},
		} {
			r.UpdatedAt, r.Body = r.OpenedAt, []byte("{}")
			if err := db.PutIncident(ctx, db.SQL(), r); err != nil {
				t.Fatal(err)
			}
		}
	}, func(t *testing.T, db *store.DB) {
		for who, want := range map[string]string{"a": "a-new", "b": "b-1", "c": ""} {
			if got, err := db.OpenIncidentOf(context.Background(), db.SQL(), who); err != nil || got != want {
				t.Errorf("open incident of %s: %q %v, want %q", who, got, err, want)
			}
		}
	})
}

// beforeMigration checks a backfilling migration, on SQLite and on
// PostgreSQL: seed writes rows into a new store, which is then put back
// as it was before the migration (its table dropped, its version
// forgotten) and reopened, so that the migration runs on those rows;
// check reads what it made of them.
func beforeMigration(t *testing.T, version int, table string, seed, check func(t *testing.T, db *store.DB)) {
	for _, tc := range []struct {
		name string
		dsn  func(t *testing.T) string
	}{
		{"sqlite", func(t *testing.T) string { return "sqlite:" + filepath.Join(t.TempDir(), "moatless.db") }},
		{"postgres", func(t *testing.T) string { return storetest.PostgresDSN(t) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dsn := tc.dsn(t)
			db, err := store.Open(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			seed(t, db)
			for _, stmt := range []string{"DROP TABLE " + table, fmt.Sprintf("DELETE FROM schema_migrations WHERE version = %d", version)} {
				if _, err := db.SQL().ExecContext(ctx, stmt); err != nil {
					t.Fatal(err)
				}
			}
			db.Close()
			if db, err = store.Open(ctx, dsn); err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			check(t, db)
		})
	}
}

// TestEdgeSumsSaturate: rows whose counters were saturated when stored
// (one hostile node's report) sum to a saturated total instead of
// failing the listing: SQLite's SUM raises "integer overflow" past
// 2^63-1, and PostgreSQL's numeric sum does not fit the int64 scanned.
func TestEdgeSumsSaturate(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		m0 := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
		const huge = ^uint64(0)
		row := func(reporter string, n uint64) store.EdgeRow {
			return store.EdgeRow{Minute: m0, Reporter: reporter, Direction: "inbound", Source: "spiffe://td/a", Destination: "spiffe://td/b",
				Protocol: "http", Method: "GET", Path: "/", Decision: "allow", Status: 2,
				Requests: n, ReqBytes: n, RespBytes: n, LatencySum: n, LatencyMax: n, PIISampled: n, PIIMatches: n}
		}
		other := row("r3", 5)
		other.Path = "/other"
		if err := db.InsertTraffic(ctx, []store.EdgeRow{row("r1", huge), row("r2", huge), row("r2", 7), other}, nil); err != nil {
			t.Fatal(err)
		}
		tot, err := db.EdgeTotals(ctx, store.EdgeQuery{Since: m0})
		if err != nil {
			t.Fatalf("edge totals: %v", err)
		}
		if len(tot) != 2 {
			t.Fatalf("totals: %+v", tot)
		}
		for _, x := range tot {
			want := uint64(5)
			if x.Path == "/" {
				want = huge
			}
			for name, v := range map[string]uint64{"requests": x.Requests, "req_bytes": x.ReqBytes, "resp_bytes": x.RespBytes,
				"latency_sum": x.LatencySum, "pii_sampled": x.PIISampled, "pii_matches": x.PIIMatches} {
				if v != want {
					t.Errorf("%s %s: %d, want %d", x.Path, name, v, want)
				}
			}
		}
		var minutes []store.EdgeRow
		if err := db.EdgeMinutes(ctx, store.EdgeQuery{Since: m0}, func(r store.EdgeRow) error { minutes = append(minutes, r); return nil }); err != nil {
			t.Fatalf("edge minutes: %v", err)
		}
		if len(minutes) != 2 || min(minutes[0].Requests, minutes[1].Requests) != 5 || max(minutes[0].Requests, minutes[1].Requests) != huge {
			t.Fatalf("minutes: %+v", minutes)
		}
	})
}

// TestInsertTrafficAllOrNothing: a report whose samples cannot be stored
// leaves none of its edges either, so the reporter's retry counts its
// traffic once.
func TestInsertTrafficAllOrNothing(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *store.DB) {
		ctx := context.Background()
		m0 := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
		var rows []store.EdgeRow
		for i := range 450 { // three statements of edges
			rows = append(rows, store.EdgeRow{Minute: m0, Reporter: "r1", Direction: "inbound", Source: "spiffe://td/a", Destination: "spiffe://td/b",
				Protocol: "http", Method: "GET", Path: fmt.Sprintf("/p%d", i), Decision: "allow", Status: 2, Requests: 3})
		}
		samples := []store.Sample{{At: m0, Reporter: "r1", Source: "spiffe://td/a", Decision: "deny", Event: json.RawMessage(`{}`)}}
		undo, err := db.FailInserts(ctx, "detect_samples")
		if err != nil {
			t.Fatal(err)
		}
		if err := db.InsertTraffic(ctx, rows, samples); err == nil {
			t.Fatal("insert with failing samples succeeded")
		}
		if tot, err := db.EdgeTotals(ctx, store.EdgeQuery{Since: m0}); err != nil || len(tot) != 0 {
			t.Fatalf("a failed report left %d edges (%v)", len(tot), err)
		}
		if err := undo(); err != nil {
			t.Fatal(err)
		}
		if err := db.InsertTraffic(ctx, rows, samples); err != nil {
			t.Fatal(err)
		}
		tot, err := db.EdgeTotals(ctx, store.EdgeQuery{Since: m0})
		if err != nil || len(tot) != len(rows) {
			t.Fatalf("%d edges after the retry, want %d (%v)", len(tot), len(rows), err)
		}
		for _, x := range tot {
			if x.Requests != 3 {
				t.Fatalf("%s: %d requests after the retry, want 3 (counted twice?)", x.Path, x.Requests)
			}
		}
		if l, err := db.Samples(ctx, store.SampleQuery{Limit: 10}); err != nil || len(l) != 1 {
			t.Fatalf("samples: %d %v", len(l), err)
		}
	})
}

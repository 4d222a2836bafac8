package detect

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
)

// TestVolumeSplitAcrossPaths: the exfiltration detector judged the bytes
// of one edge, path included, so a caller pulling 15 MiB a minute from a
// service as 200 distinct paths of 80 KiB (GET /api/export/a,
// /api/export/b, ...; or one path whose varying segment the template does
// not recognise as an ID) stayed under bytes_per_minute on each and
// raised nothing. The engine now also sums a minute's responses per
// caller→destination, against the limit and the pair's own baseline,
// with the top paths by bytes as evidence, and one finding per burst
// (never counted twice when a single path's volume raises it too).
// split_paths_over_the_limit and split_paths_over_the_baseline fail on
// the parent (no finding).
func TestVolumeSplitAcrossPaths(t *testing.T) {
	const (
		reports = "spiffe://example.org/ns/prod/sa/reports"
		orders  = "spiffe://example.org/ns/prod/sa/orders"
	)
	start := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	rec := func(at time.Time, path string, bytes uint64) Record {
		return Record{Time: at, Reporter: orders, Source: reports, Destination: orders, Method: "GET", Path: path,
			Decision: "allow", Status: 2, Requests: 1, RespBytes: bytes}
	}
	burst := func(at time.Time, n int, each uint64) []Record {
		var recs []Record
		for i := range n {
			recs = append(recs, rec(at.Add(time.Duration(i)*time.Millisecond), fmt.Sprintf("/api/export/part-%c%c", 'a'+i/26, 'a'+i%26), each))
		}
		return recs
	}
	exfil := func(fs []Finding) []Finding {
		var out []Finding
		for _, f := range fs {
			if f.Detector == DetectorExfiltration && f.Identity == reports {
				out = append(out, f)
			}
		}
		return out
	}
	// learn a day of normal traffic: 10 paths of 100 KiB a minute.
	learn := func(e *Engine) time.Time {
		var recs []Record
		for m := range 1500 {
			at := start.Add(time.Duration(m) * time.Minute)
			for p := range 10 {
				recs = append(recs, rec(at, fmt.Sprintf("/api/orders/page-%d", p), 100<<10))
			}
		}
		e.Learn(recs)
		return start.Add(1500 * time.Minute)
	}

	t.Run("split_paths_over_the_limit", func(t *testing.T) {
		e := NewEngine(config.DetectSettings{Thresholds: config.DetectThresholds{BytesPerMinute: 4 << 20}})
		now := start.Add(30 * time.Second)
		fs := exfil(e.Ingest(now, burst(now, 200, 80<<10)))
		if len(fs) != 1 {
			t.Fatalf("15.6 MiB in a minute from orders over 200 paths: want one exfiltration finding, got %+v", fs)
		}
		f := fs[0]
		t.Logf("%s: %s; evidence %v", f.Severity, f.Summary, f.Evidence)
		if f.Severity != High || f.Destination != orders || f.Evidence["kind"] != "volume" || f.Evidence["scope"] != "destination" || f.Evidence["paths"] == "" ||
			!strings.Contains(f.Evidence["top_paths"], "GET /api/export/part-") || len(f.Records) == 0 || len(f.Records) > maxEvidence {
			t.Fatalf("finding: %+v", f)
		}
		if !f.Anomaly() {
			t.Fatalf("a volume finding stays an anomaly: %+v", f)
		}
	})
	t.Run("split_paths_over_the_baseline", func(t *testing.T) {
		e := NewEngine(config.DetectSettings{})
		now := learn(e).Add(30 * time.Second)
		// 20 MiB over 200 paths never called: each 100 KiB, below
		// min_bytes and without a baseline of its own.
		fs := exfil(e.Ingest(now, burst(now, 200, 100<<10)))
		if len(fs) != 1 || fs[0].Severity != Medium || fs[0].Evidence["expected_bytes_per_minute"] == "" || fs[0].Evidence["scope"] != "destination" {
			t.Fatalf("20 MiB in a minute against a pair baseline of 1 MiB: want one medium exfiltration finding, got %+v", fs)
		}
		t.Logf("%s: %s; evidence %v", fs[0].Severity, fs[0].Summary, fs[0].Evidence)
	})
	t.Run("normal_spread_raises_nothing", func(t *testing.T) {
		e := NewEngine(config.DetectSettings{})
		now := learn(e).Add(30 * time.Second)
		var recs []Record
		for p := range 12 { // 1.2 MiB over 12 paths: as usual
			recs = append(recs, rec(now, fmt.Sprintf("/api/orders/page-%d", p), 100<<10))
		}
		if fs := exfil(e.Ingest(now, recs)); len(fs) != 0 {
			t.Fatalf("usual volume: %+v", fs)
		}
	})
	t.Run("one_path_is_counted_once", func(t *testing.T) {
		e := NewEngine(config.DetectSettings{Thresholds: config.DetectThresholds{BytesPerMinute: 4 << 20}})
		now := start.Add(30 * time.Second)
		fs := exfil(e.Ingest(now, []Record{rec(now, "/api/dump", 16<<20)}))
		if len(fs) != 1 || fs[0].Count != 1 || fs[0].Evidence["scope"] == "destination" {
			t.Fatalf("one path over the limit: want one finding counted once, per path; got %+v", fs)
		}
		// more of the same burst, over more paths: the same finding.
		fs = exfil(e.Ingest(now.Add(time.Second), burst(now.Add(time.Second), 3, 10<<10)))
		if len(fs) != 1 || fs[0].Count != 4 {
			t.Fatalf("one burst, one finding, one detection per record: %+v", fs)
		}
	})
}

// TestPairsBounded: one caller keeps at most maxPerIdent pair states
// (calling many destinations cannot fill the table the next caller's
// volume check needs), and a pair idle for 35 days is forgotten.
func TestPairsBounded(t *testing.T) {
	defer func(n int) { maxPerIdent = n }(maxPerIdent)
	maxPerIdent = 3
	e := NewEngine(config.DetectSettings{})
	now := time.Date(2026, 12, 7, 12, 0, 30, 0, time.UTC)
	var recs []Record
	for d := range 5 {
		recs = append(recs, Record{Time: now, Source: "spiffe://example.org/ns/prod/sa/a", Destination: fmt.Sprintf("spiffe://example.org/ns/prod/sa/d%d", d),
			Method: "GET", Path: "/", Decision: "allow", Requests: 1, RespBytes: 10})
	}
	e.Ingest(now, recs)
	if len(e.pairs) != 3 || e.idents["spiffe://example.org/ns/prod/sa/a"].pairs != 3 {
		t.Fatalf("pairs of one caller: %d, want 3", len(e.pairs))
	}
	e.Tick(now.Add(36 * 24 * time.Hour))
	if len(e.pairs) != 0 || e.idents["spiffe://example.org/ns/prod/sa/a"].pairs != 0 {
		t.Fatalf("idle pairs kept: %d", len(e.pairs))
	}
}

// TestFutureRecordBlindsNoEdge: a record's time is its reporter's clock
// (the start of its window), which the server accepts up to 2 minutes
// ahead of its own. The engine moved the edge's, the pair's and the
// identity's minute to that future minute, and every record of the
// current minute after it was late and counted toward no rate, no
// volume: one replica of orders with a fast clock (or an attacker
// holding one) blinded the detectors to what every other replica of
// orders reported about its callers, for as long as its reports kept
// coming. A record from the future is now judged at the server's time.
// Fails on the parent (no finding for the 200 MiB pull).
func TestFutureRecordBlindsNoEdge(t *testing.T) {
	const (
		reports = "spiffe://example.org/ns/prod/sa/reports"
		orders  = "spiffe://example.org/ns/prod/sa/orders"
	)
	now := time.Date(2026, 12, 7, 12, 0, 10, 0, time.UTC)
	rec := func(at time.Time, path string, bytes uint64) Record {
		return Record{Time: at, Reporter: orders, Source: reports, Destination: orders, Method: "GET", Path: path,
			Decision: "allow", Status: 2, Requests: 1, RespBytes: bytes}
	}
	for _, tc := range []struct {
		name string
		pull []Record
	}{
		{"one_path", []Record{rec(now, "/api/export", 200<<20)}},
		{"split_paths", []Record{rec(now, "/api/export/a", 60<<20), rec(now, "/api/export/b", 60<<20)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := NewEngine(config.DetectSettings{})
			// The skewed replica's window starts 110 s ahead: the next
			// minute and then some.
			e.Ingest(now, []Record{rec(now.Add(110*time.Second), "/api/export", 1)})
			var got []Finding
			for _, f := range e.Ingest(now, tc.pull) {
				if f.Detector == DetectorExfiltration && f.Identity == reports {
					got = append(got, f)
				}
			}
			if len(got) != 1 || got[0].Severity != High {
				t.Fatalf("the pull another replica reported after a record from the future: %+v", got)
			}
		})
	}
}

// TestPairFollowsEdge: the pair state and the edge state count minutes
// the same way (one mechanism, minutes.roll): for a caller that calls
// its destination on one path only, the pair's byte baseline, minute and
// count are the edge's, whatever the records' gaps (a quiet day and more
// is learned as at most a day of empty minutes), late records and ticks.
func TestPairFollowsEdge(t *testing.T) {
	const (
		reports = "spiffe://example.org/ns/prod/sa/reports"
		orders  = "spiffe://example.org/ns/prod/sa/orders"
	)
	e := NewEngine(config.DetectSettings{})
	at := time.Date(2026, 12, 7, 12, 0, 30, 0, time.UTC)
	steps := []time.Duration{0, 10 * time.Second, time.Minute, 7 * time.Minute, -2 * time.Minute, 3 * time.Hour, 30 * time.Hour, time.Minute, 61 * time.Second}
	for i, d := range steps {
		at = at.Add(d)
		e.Ingest(at, []Record{{Time: at, Reporter: orders, Source: reports, Destination: orders, Method: "GET", Path: "/export",
			Decision: "allow", Requests: 1, RespBytes: uint64(1000 * (i + 1))}})
		if i%3 == 2 {
			e.Tick(at.Add(90 * time.Second))
		}
		e.mu.Lock()
		es, ps := e.edges[edgeKey{reports, orders, "GET", "/export"}], e.pairs[pairKey{reports, orders}]
		same := es.bytes == ps.bytes && es.minute.Equal(ps.minute) && es.curByte == ps.cur && es.lastSeen.Equal(ps.lastSeen)
		n := es.bytes.Minutes()
		e.mu.Unlock()
		if !same {
			t.Fatalf("step %d: the pair's minute or baseline differs from its only edge's", i)
		}
		if i == len(steps)-1 && (n < 1440 || n > 3*1440) {
			t.Fatalf("%d minutes learned", n)
		}
	}
}

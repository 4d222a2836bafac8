package detect

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/traffic"
)

// TestOverflowHidesNoEdge: a caller can fill a reporter's record table
// (or the engine's) with distinct paths so that what comes after it is
// not recorded apart. The sidecar now keeps a quarter of its table per
// caller and reports the caller's further requests on an overflow edge
// that names it, with their decisions (internal/proxy
// TestRecorderBounds); the engine judges that edge: the overflow is an
// anomaly about the caller that caused it, refusals in it are still
// refusals. The engine keeps at most maxPerIdent edges apart per caller,
// so one caller cannot take the table others' new edges need; past it,
// its edges to a destination share one state, so a volume spread over
// many paths adds up. The named overflow case fails on the parent (no
// finding about the caller whose requests overflowed).
func TestOverflowHidesNoEdge(t *testing.T) {
	const (
		attacker = "spiffe://example.org/ns/prod/sa/attacker"
		victim   = "spiffe://example.org/ns/prod/sa/newcomer"
		orders   = "spiffe://example.org/ns/prod/sa/orders"
	)
	now := time.Date(2026, 12, 7, 12, 0, 30, 0, time.UTC)
	rec := func(src, path, decision string, requests, bytes uint64) Record {
		r := Record{Time: now, Reporter: orders, Source: src, Destination: orders, Method: "GET", Path: path, Decision: decision, Requests: requests, RespBytes: bytes}
		if traffic.IsOverflow(path) {
			r.Method = ""
		}
		if decision == "deny" {
			r.Reason = "no_allow_match"
		}
		return r
	}
	kinds := func(fs []Finding, who string) map[string]Finding {
		out := map[string]Finding{}
		for _, f := range fs {
			if f.Identity == who {
				out[f.Detector+":"+f.Evidence["kind"]] = f
			}
		}
		return out
	}
	t.Run("sidecar_overflow_names_the_caller", func(t *testing.T) {
		e := NewEngine(config.DetectSettings{})
		fs := e.Ingest(now, []Record{rec(attacker, traffic.OverflowPeerPath, "allow", 500, 0)})
		f, ok := kinds(fs, attacker)["probing:record_overflow"]
		if !ok || !f.Anomaly() || f.Evidence["overflow_at"] != orders {
			t.Fatalf("want an anomaly about the caller whose requests overflowed orders' record: %+v", fs)
		}
	})
	t.Run("refusals_in_the_overflow_are_refusals", func(t *testing.T) {
		e := NewEngine(config.DetectSettings{})
		fs := e.Ingest(now, []Record{rec(attacker, traffic.OverflowPeerPath, "deny", 100, 0)})
		f := kinds(fs, attacker)["probing:refusals"]
		if f.Evidence["refusals_per_minute"] != "100" || f.Evidence["overflow_requests"] != "100" || f.Anomaly() {
			t.Fatalf("refusals on the overflow edge: %+v", fs)
		}
	})
	t.Run("table_full_overflow_is_no_anomaly_but_a_new_edge", func(t *testing.T) {
		e := NewEngine(config.DetectSettings{LearningPeriod: 1})
		learned := rec(attacker, "/orders/{*}", "allow", 1, 0)
		learned.Time = now.Add(-time.Hour)
		e.Ingest(learned.Time, []Record{learned}) // the mesh is learned
		r := rec(victim, traffic.OverflowPath, "allow", 1, 0)
		fs := e.Ingest(now, []Record{r})
		got := kinds(fs, victim)
		if _, ok := got["new_edge:new_identity"]; !ok || len(got) != 1 {
			t.Fatalf("a new caller on the overflow edge of a full table: %+v", fs)
		}
	})
	t.Run("engine_bound_per_caller", func(t *testing.T) {
		defer func(n int) { maxPerIdent = n }(maxPerIdent)
		maxPerIdent = 50
		e := NewEngine(config.DetectSettings{})
		var recs []Record
		// 200 distinct paths, 1 MiB each: under the 100 MiB limit on
		// every one of them.
		for i := range 200 {
			recs = append(recs, rec(attacker, fmt.Sprintf("/files/p%c%c", 'a'+i/26, 'a'+i%26), "allow", 1, 1<<20))
		}
		fs := e.Ingest(now, recs)
		got := kinds(fs, attacker)
		if f, ok := got["probing:record_overflow"]; !ok || f.Evidence["overflow_at"] != "server" || !f.Anomaly() {
			t.Fatalf("want an anomaly about the caller past the engine's bound: %+v", fs)
		}
		if f, ok := got["exfiltration:volume"]; !ok || f.Evidence["bytes_per_minute"] != fmt.Sprint(150<<20) {
			t.Fatalf("want the 150 MiB past the bound to add up on one state: %+v", got)
		}
		e.mu.Lock()
		n := e.idents[attacker].edges
		e.mu.Unlock()
		if n != 51 {
			t.Fatalf("%d edge states for the caller, want 50 and its overflow", n)
		}
		fs = e.Ingest(now, []Record{rec(victim, "/orders/export", "allow", 1, 200<<20)})
		if _, ok := kinds(fs, victim)["exfiltration:volume"]; !ok {
			t.Fatalf("the next caller's pull: %+v", fs)
		}
	})
}

// TestDestinationsPastTheBound: the engine remembers at most maxPerIdent
// destinations per caller. A caller that first touched that many
// harmless destinations then reached the real target raised no new_edge
// finding about it: the caller's open new_edge finding stopped counting
// (and aged out of the risk window while the calls went on), and the
// target was named nowhere once the overflow finding had its 20
// records. A destination the engine does not remember is now still
// judged new (never remembered: each call to it counts) and named in
// the new_edge finding's destinations, beside the overflow anomaly.
// Fails on the parent (no new_edge detection past the bound).
func TestDestinationsPastTheBound(t *testing.T) {
	defer func(n int) { maxPerIdent = n }(maxPerIdent)
	maxPerIdent = 5
	const (
		attacker = "spiffe://example.org/ns/prod/sa/attacker"
		target   = "spiffe://example.org/ns/prod/sa/vault"
	)
	now := time.Date(2026, 12, 7, 12, 0, 30, 0, time.UTC)
	call := func(dst string, at time.Time) Record {
		return Record{Time: at, Reporter: dst, Source: attacker, Destination: dst, Method: "GET", Path: "/", Decision: "allow", Requests: 1}
	}
	e := NewEngine(config.DetectSettings{LearningPeriod: 1})
	e.Ingest(now.Add(-time.Hour), []Record{call("spiffe://example.org/ns/prod/sa/d0", now.Add(-time.Hour))})
	for i := 1; i < 30; i++ {
		d := fmt.Sprintf("spiffe://example.org/ns/prod/sa/d%d", i)
		e.Ingest(now, []Record{call(d, now)})
	}
	later := now.Add(10 * time.Minute)
	var newEdge, overflow *Finding
	for _, f := range e.Ingest(later, []Record{call(target, later)}) {
		switch f.Detector + ":" + f.Evidence["kind"] {
		case "new_edge:destination":
			newEdge = &f
		case "probing:record_overflow":
			overflow = &f
		}
	}
	if newEdge == nil || !newEdge.LastSeen.Equal(later) || newEdge.Count != 30 || !strings.Contains(newEdge.Evidence["destinations"], target) {
		t.Fatalf("want the call to %s past the bound counted on the new_edge finding: %+v", target, newEdge)
	}
	if overflow == nil || !overflow.Anomaly() {
		t.Fatalf("want the overflow anomaly: %+v", overflow)
	}
	e.mu.Lock()
	n := len(e.idents[attacker].dsts)
	e.mu.Unlock()
	if n != maxPerIdent {
		t.Fatalf("%d destinations remembered, want %d", n, maxPerIdent)
	}
}

// TestReporterCannotFillIdentities: the caller an inbound record names is
// its node's word. One node reporting calls from made-up identities could
// fill the engine's table of identities (200,000), and every identity
// that appeared after would go unjudged. A node now makes at most
// maxIdentsPerReporter identities known; its further new callers are not
// judged (nor kept), the flood is an anomaly about the node, and another
// node's new caller is judged as before.
func TestReporterCannotFillIdentities(t *testing.T) {
	const (
		liar    = "spiffe://example.org/ns/prod/sa/liar"
		orders  = "spiffe://example.org/ns/prod/sa/orders"
		minted  = "spiffe://example.org/ns/prod/sa/minted"
		regular = "spiffe://example.org/ns/prod/sa/frontend"
	)
	defer func(n int) { maxIdentsPerReporter = n }(maxIdentsPerReporter)
	maxIdentsPerReporter = 10
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	e := NewEngine(config.DetectSettings{LearningPeriod: 1})
	e.Ingest(now.Add(-time.Hour), []Record{{Time: now.Add(-time.Hour), Reporter: orders, Source: regular, Destination: orders, Method: "GET", Path: "/", Decision: "allow", Requests: 1}})
	var recs []Record
	for i := range 50 {
		recs = append(recs, Record{Time: now, Reporter: liar, Source: fmt.Sprintf("spiffe://example.org/ns/fake/sa/s%d", i), Destination: liar, Method: "GET", Path: "/", Decision: "allow", Requests: 1})
	}
	var flood *Finding
	for _, f := range e.Ingest(now, recs) {
		if f.Identity == liar && f.Evidence["kind"] == "caller_flood" {
			flood = &f
		}
	}
	if flood == nil || !flood.Anomaly() || flood.Evidence["identities_introduced"] != "10" {
		t.Fatalf("want an anomaly about the node that named 50 new callers: %+v", flood)
	}
	e.mu.Lock()
	n := len(e.idents)
	e.mu.Unlock()
	if n != 11 {
		t.Fatalf("%d identities kept, want frontend and the first 10 made-up ones", n)
	}
	fs := e.Ingest(now, []Record{{Time: now, Reporter: orders, Source: minted, Destination: orders, Method: "GET", Path: "/admin", Decision: "allow", Requests: 1}})
	if len(fs) != 1 || fs[0].Identity != minted || fs[0].Detector != DetectorNewEdge {
		t.Fatalf("another node's new caller: %+v", fs)
	}
}

// TestReporterBudgetSurvivesRestart: the identities a node's records
// made known are persisted as known edges and loaded at start
// (LoadKnown), but the node's count of them started afresh: each restart
// let a compromised node make another maxIdentsPerReporter made-up
// callers known, until the table of identities was full. LoadKnown now
// counts each identity it makes known against the destination of its
// earliest known edge (an inbound record's reporter). Fails on the
// parent (the node names 10 more new callers after the restart without
// a caller_flood).
func TestReporterBudgetSurvivesRestart(t *testing.T) {
	const (
		liar   = "spiffe://example.org/ns/prod/sa/liar"
		orders = "spiffe://example.org/ns/prod/sa/orders"
	)
	defer func(n int) { maxIdentsPerReporter = n }(maxIdentsPerReporter)
	maxIdentsPerReporter = 10
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	calls := func(from, n int, at time.Time) []Record {
		var recs []Record
		for i := from; i < from+n; i++ {
			recs = append(recs, Record{Time: at, Reporter: liar, Source: fmt.Sprintf("spiffe://example.org/ns/fake/sa/s%d", i), Destination: liar, Method: "GET", Path: "/", Decision: "allow", Requests: 1})
		}
		return recs
	}
	e := NewEngine(config.DetectSettings{})
	e.Ingest(now, calls(0, 10, now))
	// An honest caller of orders, known before: not the liar's.
	known := append(e.TakeNewKnown(), KnownEdge{Source: liar, Destination: orders, Method: "GET", Path: "/", FirstSeen: now.Add(-time.Hour)})
	restarted := NewEngine(config.DetectSettings{})
	restarted.LoadKnown(known)
	later := now.Add(time.Hour)
	var flood bool
	for _, f := range restarted.Ingest(later, calls(10, 10, later)) {
		flood = flood || f.Identity == liar && f.Evidence["kind"] == "caller_flood"
	}
	restarted.mu.Lock()
	n, byOrders := len(restarted.idents), restarted.introduced[orders]
	restarted.mu.Unlock()
	if !flood || n != 11 || byOrders != 1 {
		t.Fatalf("after a restart: caller flood %v, %d identities (want the 10 made-up ones and liar), %d introduced by orders (want 1)", flood, n, byOrders)
	}
}

// TestFullTablesCounted: made-up callers from several nodes, each within
// maxIdentsPerReporter, can fill the engine's tables, and every record
// after was judged without its identity's, edge's or pair's state, in
// silence: no finding, no metric. The engine now counts such records per
// table (Untracked, the server's moatless_detect_untracked_records_total).
// Fails on the parent (no count: it does not compile there).
func TestFullTablesCounted(t *testing.T) {
	defer func(n int) { maxTracked = n }(maxTracked)
	maxTracked = 4
	const orders = "spiffe://example.org/ns/prod/sa/orders"
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	e := NewEngine(config.DetectSettings{})
	for i := range 6 {
		e.Ingest(now, []Record{{Time: now, Reporter: orders, Source: fmt.Sprintf("spiffe://example.org/ns/prod/sa/s%d", i), Destination: orders,
			Method: "GET", Path: "/", Decision: "allow", Requests: 1}})
	}
	// 4 identities and pairs kept; 4 edges and one shared overflow edge
	// (maxTracked/4 of them).
	if got, want := e.Untracked(), (Untracked{Identities: 2, Edges: 1, Pairs: 2}); got != want {
		t.Fatalf("untracked %+v, want %+v", got, want)
	}
	e.Learn([]Record{{Time: now, Source: "spiffe://example.org/ns/prod/sa/s9", Destination: orders, Method: "GET", Path: "/", Decision: "allow", Requests: 1}})
	if got := e.Untracked(); got.Identities != 2 {
		t.Fatalf("learned records counted: %+v", got)
	}
}

// TestRefusalCountDoesNotWrap: refusals reported about one caller in a
// minute were summed in a uint64 that wrapped: one node reporting
// 2^64-15 refusals right after another node's 15 brought the caller's
// count back to 0, and the next 15 (30 by the honest node's count, over
// the burst of 20) raised nothing. The sum now saturates. Fails on the
// parent (no probing finding).
func TestRefusalCountDoesNotWrap(t *testing.T) {
	const (
		caller = "spiffe://example.org/ns/prod/sa/scanner"
		orders = "spiffe://example.org/ns/prod/sa/orders"
		liar   = "spiffe://example.org/ns/prod/sa/liar"
	)
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	deny := func(reporter string, n uint64) []Record {
		return []Record{{Time: now, Reporter: reporter, Source: caller, Destination: reporter, Method: "GET", Path: "/admin", Decision: "deny", Reason: "no_allow_match", Requests: n}}
	}
	e := NewEngine(config.DetectSettings{})
	var fs []Finding
	for _, recs := range [][]Record{deny(orders, 15), deny(liar, ^uint64(0)-14), deny(orders, 15)} {
		fs = append(fs, e.Ingest(now, recs)...)
	}
	var got bool
	for _, f := range fs {
		got = got || f.Identity == caller && f.Detector == DetectorProbing
	}
	if !got {
		t.Fatalf("30 refusals by orders in a minute, and a liar's wrap, raised nothing: %+v", fs)
	}
}

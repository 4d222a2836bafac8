package server_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/traffic"
	"github.com/moatless/moatless/internal/wire"
)

const (
	ordersID  = "spiffe://example.org/ns/prod/sa/orders"
	reportsID = "spiffe://example.org/ns/prod/sa/reports"
)

// reportSeq makes every report's window its own.
var reportSeq atomic.Int64

// report is a valid one-window report from orders' sidecar. Its window
// starts a few nanoseconds apart from every other report's, as a
// reporter's windows never repeat: the server counts a report sent twice
// (a retry after a lost answer) once, and the test clock stands still.
func (e *env) report(edges ...wire.EdgeRecord) wire.RecordReport {
	now := e.clock.Now().UTC()
	return wire.RecordReport{Component: "sidecar", Namespace: "prod", Labels: map[string]string{"app": "orders"}, Ports: []int{8080},
		Start: now.Add(-5*time.Second + time.Duration(reportSeq.Add(1))), End: now, Edges: edges}
}

func inboundEdge(src, method, path, decision string, requests uint64) wire.EdgeRecord {
	return wire.EdgeRecord{Direction: "inbound", Source: src, Port: 8080, Protocol: "http", Method: method, Path: path,
		Decision: decision, Status: 2, Requests: requests, RespBytes: requests * 1000, LatencySumMicros: requests * 500, LatencyMaxMicros: 900}
}

func TestRecordsStoredAndListed(t *testing.T) {
	e := start(t, "")
	n := e.attest(ordersID)
	rep := e.report(
		inboundEdge(reportsID, "GET", "/orders/{*}", "allow", 10),
		inboundEdge(reportsID, "DELETE", "/orders/{*}", "deny", 2),
		wire.EdgeRecord{Direction: "outbound", Destination: "spiffe://example.org/ns/prod/sa/payments", Protocol: "http", Method: "POST", Path: "/payments", Decision: "allow", Status: 2, Requests: 3},
	)
	rep.Edges[1].Reason, rep.Edges[1].Status = "deny_rule", 4
	rep.Samples = []wire.AuditEvent{{Time: e.clock.Now(), Listener: "in", Source: reportsID, Destination: "prod:8080", Protocol: "http",
		Method: "DELETE", Path: "/orders/42\x1b[31m", Decision: "deny", Policy: "prod/orders", Rule: -1, ReasonCode: "no_allow_match"}}
	if st, body := e.do(n.http, "POST", wire.PathRecords, "", rep); st != 204 {
		t.Fatalf("report: %d %s", st, body)
	}
	var edges server.Page[server.EdgeSummary]
	e.admin("GET", server.PathAdminEdges, nil, &edges)
	if len(edges.Items) != 3 {
		t.Fatalf("%d edges, want 3: %+v", len(edges.Items), edges.Items)
	}
	byKey := map[string]server.EdgeSummary{}
	for _, x := range edges.Items {
		byKey[x.Direction+" "+x.Source+" "+x.Destination+" "+x.Method] = x
	}
	in := byKey["inbound "+reportsID+" "+ordersID+" GET"]
	if in.Requests != 10 || in.RespBytes != 10000 || in.LatencyAvg != 0.5 || in.Path != "/orders/{*}" {
		t.Errorf("inbound edge as listed: %+v", in)
	}
	if out := byKey["outbound "+ordersID+" spiffe://example.org/ns/prod/sa/payments POST"]; out.Requests != 3 {
		t.Errorf("outbound edge: the reporter must be its source: %+v", edges.Items)
	}
	var ds server.Page[store.Sample]
	e.admin("GET", server.PathAdminDecisions+"?identity="+reportsID, nil, &ds)
	if len(ds.Items) != 1 || ds.Items[0].Reporter != ordersID {
		t.Fatalf("decision samples: %+v", ds.Items)
	}
	var ev wire.AuditEvent
	json.Unmarshal(ds.Items[0].Event, &ev)
	if strings.ContainsRune(ev.Path, 0x1b) {
		t.Errorf("a control character in a reported path was stored: %q", ev.Path)
	}
	var ws server.Page[store.Workload]
	e.admin("GET", server.PathAdminWorkloads, nil, &ws)
	if len(ws.Items) != 1 || ws.Items[0].Namespace != "prod" || ws.Items[0].Labels["app"] != "orders" {
		t.Errorf("workloads: %+v", ws.Items)
	}
	var tr server.TrafficSnapshot
	e.admin("GET", server.PathAdminTraffic+"?since=1h", nil, &tr)
	if len(tr.Edges) != 2 || len(tr.Workloads) != 1 {
		t.Errorf("traffic snapshot: %d inbound edges, %d workloads", len(tr.Edges), len(tr.Workloads))
	}
}

// A sidecar whose table filled up sends its overflow edges, outbound too:
// those that name no one have no destination, and the report is taken.
// One that names the caller who took its share of the table
// ({overflow:peer}) raises an anomaly about that caller (on the parent,
// nothing: an outsider could crowd others' new edges out of the record
// unseen).
func TestRecordsOverflowEdges(t *testing.T) {
	e := start(t, "")
	n := e.attest(ordersID)
	crowd := inboundEdge(reportsID, "", traffic.OverflowPeerPath, "allow", 700)
	rep := e.report(
		wire.EdgeRecord{Direction: "outbound", Protocol: "http", Path: "{overflow}", Decision: "overflow", Requests: 9},
		wire.EdgeRecord{Direction: "inbound", Protocol: "http", Path: "{overflow}", Decision: "overflow", Requests: 4},
		crowd,
	)
	rep.Dropped = 713
	if st, body := e.do(n.http, "POST", wire.PathRecords, "", rep); st != 204 {
		t.Fatalf("report with overflow edges: %d %s", st, body)
	}
	fs := findingsAbout(e, reportsID)
	if len(fs) != 1 || fs[0].Evidence["kind"] != "record_overflow" || fs[0].Evidence["overflow_requests"] != "700" || !fs[0].Anomaly() {
		t.Fatalf("want an anomaly about the caller that overflowed orders' record: %+v", fs)
	}
}

func TestRecordsRefused(t *testing.T) {
	e := start(t, "")
	n := e.attest(ordersID)
	now := e.clock.Now().UTC()
	ok := inboundEdge(reportsID, "GET", "/", "allow", 1)
	for _, tc := range []struct {
		name   string
		mutate func(r *wire.RecordReport)
		want   string
	}{
		{"inbound_destination_not_the_reporter", func(r *wire.RecordReport) { r.Edges[0].Destination = "spiffe://example.org/ns/prod/sa/payments" }, "edges[0].destination"},
		{"outbound_source_not_the_reporter", func(r *wire.RecordReport) {
			r.Edges[0] = wire.EdgeRecord{Direction: "outbound", Source: reportsID, Destination: ordersID, Protocol: "http", Decision: "allow", Requests: 1}
		}, "edges[0].source"},
		{"bad_direction", func(r *wire.RecordReport) { r.Edges[0].Direction = "sideways" }, "edges[0].direction"},
		{"outbound_without_destination", func(r *wire.RecordReport) {
			r.Edges[0] = wire.EdgeRecord{Direction: "outbound", Protocol: "http", Method: "GET", Path: "/", Decision: "allow", Requests: 1}
		}, "edges[0].destination"},
		{"bad_source", func(r *wire.RecordReport) { r.Edges[0].Source = "https://evil" }, "edges[0].source"},
		{"bad_decision", func(r *wire.RecordReport) { r.Edges[0].Decision = "maybe" }, "edges[0].decision"},
		{"bad_reason", func(r *wire.RecordReport) { r.Edges[0].Reason = "Deny Rule" }, "edges[0].reason"},
		{"bad_status", func(r *wire.RecordReport) { r.Edges[0].Status = 7 }, "edges[0].status"},
		{"no_requests", func(r *wire.RecordReport) { r.Edges[0].Requests = 0 }, "edges[0].requests"},
		{"requests_beyond_physical", func(r *wire.RecordReport) { r.Edges[0].Requests = 1<<63 - 1 }, "edges[0].requests"},
		{"resp_bytes_beyond_physical", func(r *wire.RecordReport) { r.Edges[0].RespBytes = ^uint64(0) }, "edges[0].resp_bytes"},
		{"latency_beyond_physical", func(r *wire.RecordReport) { r.Edges[0].LatencySumMicros = 1<<52 + 1 }, "edges[0].latency_sum_us"},
		{"pii_beyond_physical", func(r *wire.RecordReport) { r.Edges[0].PII = &wire.PIISample{Sampled: 1, Cards: ^uint64(0), Emails: 1} }, "edges[0].pii"},
		{"future_window", func(r *wire.RecordReport) { r.Start, r.End = now.Add(time.Hour), now.Add(time.Hour+time.Second) }, "end"},
		{"stale_window", func(r *wire.RecordReport) { r.Start, r.End = now.Add(-3*time.Hour), now.Add(-3*time.Hour+time.Second) }, "start"},
		{"long_window", func(r *wire.RecordReport) { r.Start = now.Add(-time.Hour) }, "window"},
		{"bad_component", func(r *wire.RecordReport) { r.Component = "toaster" }, "component"},
		{"too_many_edges", func(r *wire.RecordReport) {
			r.Edges = make([]wire.EdgeRecord, wire.MaxEdgeRecords+1)
			for i := range r.Edges {
				r.Edges[i] = ok
			}
		}, "edges"},
		{"label_with_control_character", func(r *wire.RecordReport) { r.Labels = map[string]string{"app": "a\nb"} }, "labels"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := e.report(ok)
			tc.mutate(&rep)
			st, body := e.do(n.http, "POST", wire.PathRecords, "", rep)
			if st != 400 || !strings.Contains(string(body), tc.want) {
				t.Fatalf("got %d %s, want 400 naming %s", st, body, tc.want)
			}
		})
	}
	t.Run("unknown_field", func(t *testing.T) {
		st, body := e.do(n.http, "POST", wire.PathRecords, "", `{"component":"sidecar","start":"2026-01-01T00:00:00Z","end":"2026-01-01T00:00:00Z","edges":[],"extra":1}`)
		if st != 400 || !strings.Contains(string(body), "extra") {
			t.Fatalf("got %d %s", st, body)
		}
	})
	t.Run("no_client_certificate", func(t *testing.T) {
		if st, _ := e.do(e.client(nil), "POST", wire.PathRecords, "", e.report(ok)); st != 401 {
			t.Fatalf("got %d, want 401", st)
		}
	})
	t.Run("hostile_path_clipped_not_refused", func(t *testing.T) {
		edge := inboundEdge(reportsID, "G\x00ET", "/"+strings.Repeat("\x1b", 2000), "deny", 1)
		if st, body := e.do(n.http, "POST", wire.PathRecords, "", e.report(edge)); st != 204 {
			t.Fatalf("got %d %s", st, body)
		}
		var edges server.Page[server.EdgeSummary]
		e.admin("GET", server.PathAdminEdges+"?source="+reportsID, nil, &edges)
		for _, x := range edges.Items {
			if strings.ContainsAny(x.Path+x.Method, "\x1b\x00") || len(x.Path) > 512 {
				t.Fatalf("stored path %q method %q", x.Path, x.Method)
			}
		}
	})
	var edges server.Page[server.EdgeSummary]
	e.admin("GET", server.PathAdminEdges, nil, &edges)
	for _, x := range edges.Items {
		if x.Method == "GET" && x.Path == "/" {
			t.Fatalf("a refused report was stored: %+v", x)
		}
	}
}

func TestRecordsBudget(t *testing.T) {
	e := start(t, "")
	n := e.attest(ordersID)
	var limited bool
	for i := 0; i < 80 && !limited; i++ {
		st, _ := e.do(n.http, "POST", wire.PathRecords, "", e.report(inboundEdge(reportsID, "GET", fmt.Sprintf("/p%d", i), "allow", 1)))
		switch st {
		case 204:
		case 429:
			limited = true
		default:
			t.Fatalf("report %d: %d", i, st)
		}
	}
	if !limited {
		t.Fatal("80 reports at once were all taken: no budget per node")
	}
}

// TestRecordsAllOrNothing: a report the store fails to record half-way
// (its samples refused after its edges) leaves nothing, so the node's
// retry counts its traffic once, not twice.
func TestRecordsAllOrNothing(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir)
	n := e.attest(ordersID)
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "moatless.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, "CREATE TRIGGER fail_samples BEFORE INSERT ON detect_samples BEGIN SELECT RAISE(ABORT, 'injected failure'); END"); err != nil {
		t.Fatal(err)
	}
	rep := e.report(inboundEdge(reportsID, "GET", "/orders/{*}", "allow", 10))
	rep.Samples = []wire.AuditEvent{{Time: e.clock.Now(), Source: reportsID, Method: "GET", Path: "/orders/1", Decision: "allow"}}
	if st, body := e.do(n.http, "POST", wire.PathRecords, "", rep); st < 500 {
		t.Fatalf("report with failing samples: %d %s", st, body)
	}
	if _, err := db.ExecContext(ctx, "DROP TRIGGER fail_samples"); err != nil {
		t.Fatal(err)
	}
	if st, body := e.do(n.http, "POST", wire.PathRecords, "", rep); st != 204 {
		t.Fatalf("retried report: %d %s", st, body)
	}
	var edges server.Page[server.EdgeSummary]
	e.admin("GET", server.PathAdminEdges, nil, &edges)
	if len(edges.Items) != 1 || edges.Items[0].Requests != 10 {
		t.Fatalf("after a failure and a retry: %+v, want one edge of 10 requests", edges.Items)
	}
}

// TestRecordsRetriedReportCountedOnce: a report the server stored whose
// answer the node never got (a timeout) is sent again; it was stored and
// judged twice, doubling the edge's requests and bytes (a rate or volume
// finding that never happened). It is now taken once, however its JSON
// is spaced, and only from the node that sent it; another window with
// the same edges still counts.
func TestRecordsRetriedReportCountedOnce(t *testing.T) {
	e := start(t, "")
	orders, reports := e.attest(ordersID), e.attest(reportsID)
	rep := e.report(inboundEdge(reportsID, "GET", "/orders/{*}", "allow", 10))
	body, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var spaced bytes.Buffer
	json.Indent(&spaced, body, "", "  ")
	next := rep
	next.Start, next.End = rep.End, rep.End.Add(time.Second)
	tests := []struct {
		name   string
		from   *node
		body   any
		wantTo map[string]uint64 // requests per destination after the post
	}{
		{"first", orders, rep, map[string]uint64{ordersID: 10}},
		{"retried", orders, rep, map[string]uint64{ordersID: 10}},
		{"retried_spaced_otherwise", orders, spaced.Bytes(), map[string]uint64{ordersID: 10}},
		{"same_body_from_another_node", reports, rep, map[string]uint64{ordersID: 10, reportsID: 10}},
		{"next_window", orders, next, map[string]uint64{ordersID: 20, reportsID: 10}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if st, b := e.do(tc.from.http, "POST", wire.PathRecords, "", tc.body); st != 204 {
				t.Fatalf("report: %d %s", st, b)
			}
			var edges server.Page[server.EdgeSummary]
			e.admin("GET", server.PathAdminEdges, nil, &edges)
			got := map[string]uint64{}
			for _, x := range edges.Items {
				got[x.Destination] += x.Requests
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.wantTo) {
				t.Fatalf("requests per destination %v, want %v", got, tc.wantTo)
			}
		})
	}
}

// TestRecordsBudgetChargesRefused: reports refused as invalid are
// charged too, so a node cannot make the server decode and check
// megabytes of bad reports for free; once its budget is spent its valid
// report waits as well.
func TestRecordsBudgetChargesRefused(t *testing.T) {
	e := start(t, "")
	n := e.attest(ordersID)
	bad := e.report(inboundEdge(reportsID, "GET", "/", "allow", 1))
	bad.Component = "toaster"
	var limited bool
	for i := 0; i < 80 && !limited; i++ {
		switch st, body := e.do(n.http, "POST", wire.PathRecords, "", bad); st {
		case 400:
		case 429:
			limited = true
		default:
			t.Fatalf("invalid report %d: %d %s", i, st, body)
		}
	}
	if !limited {
		t.Fatal("80 invalid reports at once were all checked: refusals cost nothing")
	}
	if st, body := e.do(n.http, "POST", wire.PathRecords, "", e.report(inboundEdge(reportsID, "GET", "/", "allow", 1))); st != 429 {
		t.Fatalf("valid report after the budget was spent: %d %s", st, body)
	}
}

func TestRecordsRaiseFindings(t *testing.T) {
	e := start(t, "")
	n := e.attest(ordersID)
	// reports, already revoked, is still knocking: orders' sidecar
	// refused its handshakes.
	refused := wire.EdgeRecord{Direction: "inbound", Source: reportsID, Protocol: "http", Decision: "refused", Reason: "revoked", Requests: 3}
	// and a burst of denials from frontend.
	deny := inboundEdge("spiffe://example.org/ns/prod/sa/frontend", "GET", "/admin/{*}", "deny", 40)
	deny.Reason, deny.Status = "no_allow_match", 4
	if st, body := e.do(n.http, "POST", wire.PathRecords, "", e.report(refused, deny)); st != 204 {
		t.Fatalf("report: %d %s", st, body)
	}
	var fs server.Page[detect.Finding]
	e.admin("GET", server.PathAdminFindings, nil, &fs)
	got := map[string]detect.Finding{}
	for _, f := range fs.Items {
		got[f.Detector+" "+f.Identity] = f
	}
	if f, ok := got[detect.DetectorRevoked+" "+reportsID]; !ok || f.Severity != detect.High || f.Destination != ordersID || len(f.Records) != 1 {
		t.Errorf("revoked credential finding: %+v (all: %+v)", f, fs.Items)
	}
	if f, ok := got[detect.DetectorProbing+" spiffe://example.org/ns/prod/sa/frontend"]; !ok || f.Evidence["refusals_per_minute"] != "40" {
		t.Errorf("probing finding: %+v", f)
	}
	var high server.Page[detect.Finding]
	e.admin("GET", server.PathAdminFindings+"?severity=high", nil, &high)
	if len(high.Items) != 1 || high.Items[0].Detector != detect.DetectorRevoked {
		t.Errorf("high or above: %+v", high.Items)
	}
	if st, body := e.do(e.client(nil), "GET", server.PathAdminFindings+"?severity=extreme", e.token, nil); st != 400 || !strings.Contains(string(body), "want low, medium, high or critical") {
		t.Errorf("unknown severity: %d %s", st, body)
	}
	var one detect.Finding
	e.admin("GET", server.PathAdminFindings+"/"+fs.Items[0].ID, nil, &one)
	if one.ID != fs.Items[0].ID {
		t.Fatalf("finding by ID: %+v", one)
	}
	var risk server.Page[detect.IdentityRisk]
	e.admin("GET", server.PathAdminRisk, nil, &risk)
	if len(risk.Items) < 2 || risk.Items[0].Identity != reportsID || risk.Items[0].Risk != 0.75 {
		t.Errorf("risk: %+v", risk.Items)
	}
}

// TestRecommendWhatIfRoundTrip: traffic recorded by two sidecars →
// policies recommended from the traffic snapshot → the what-if endpoint
// replays the same traffic through them: nothing newly denied; a new
// edge recorded afterwards is.
func TestRecommendWhatIfRoundTrip(t *testing.T) {
	e := start(t, "")
	orders := e.attest(ordersID)
	const paymentsID = "spiffe://example.org/ns/prod/sa/payments"
	payments := e.attest(paymentsID)
	post := func(n *node, rep wire.RecordReport) {
		t.Helper()
		if st, body := e.do(n.http, "POST", wire.PathRecords, "", rep); st != 204 {
			t.Fatalf("report: %d %s", st, body)
		}
	}
	denied := inboundEdge("spiffe://example.org/ns/prod/sa/frontend", "DELETE", "/orders/{*}", "deny", 3)
	denied.Reason, denied.Status = "no_allow_match", 4
	post(orders, e.report(
		inboundEdge("spiffe://example.org/ns/prod/sa/frontend", "GET", "/orders/{*}", "allow", 50),
		inboundEdge(reportsID, "GET", "/orders/export", "allow", 2),
		denied,
	))
	failed := inboundEdge(ordersID, "POST", "/payments", "allow", 4)
	failed.Status = 5 // the same edge, another status class
	pay := e.report(inboundEdge(ordersID, "POST", "/payments", "allow", 40), failed)
	pay.Labels = map[string]string{"app": "payments"}
	post(payments, pay)

	var snap server.TrafficSnapshot
	e.admin("GET", server.PathAdminTraffic+"?since=1h&namespace=prod", nil, &snap)
	edges, ws := snap.Detect()
	rec := detect.Recommend(edges, ws, "prod", snap.Since, snap.Until, nil)
	if rec.Policies != 3 || rec.Edges != 3 {
		t.Fatalf("%d policies for %d edges:\n%s", rec.Policies, rec.Edges, rec.YAML)
	}
	whatIf := func() server.WhatIfResponse {
		var res server.WhatIfResponse
		e.admin("POST", server.PathAdminWhatIf, server.WhatIfRequest{Files: []server.PolicyFile{{Name: "recommended.yaml", Content: rec.YAML}}, Since: "1h"}, &res)
		return res
	}
	// The server takes the recommendation as a policy set.
	var applied server.PolicyApplyResponse
	e.admin("POST", server.PathAdminPolicies, server.PolicyApplyRequest{Files: []server.PolicyFile{{Name: "recommended.yaml", Content: rec.YAML}}}, &applied)
	if applied.Version == 0 {
		t.Fatalf("apply: %+v", applied)
	}
	res := whatIf()
	if res.NewlyDenied != 0 || res.NewlyAllowed != 0 || len(res.Items) != 4 {
		t.Fatalf("round trip: %d newly denied, %d newly allowed, %d edges: %+v", res.NewlyDenied, res.NewlyAllowed, len(res.Items), res.Items)
	}

	// reports starts calling payments: the recommendation denies it.
	post(payments, func() wire.RecordReport {
		r := e.report(inboundEdge(reportsID, "POST", "/payments", "allow", 1))
		r.Labels = map[string]string{"app": "payments"}
		return r
	}())
	res = whatIf()
	if res.NewlyDenied != 1 || res.Items[0].Source != reportsID || res.Items[0].Destination != "spiffe://example.org/ns/prod/sa/payments" ||
		res.Items[0].Change != detect.ChangeNewlyDenied || res.Items[0].Reason == "" {
		t.Fatalf("new edge: %+v", res)
	}

	for _, tc := range []struct {
		name string
		req  server.WhatIfRequest
		want string
	}{
		{"no_files", server.WhatIfRequest{}, "at least one policy file"},
		{"bad_policy", server.WhatIfRequest{Files: []server.PolicyFile{{Name: "x.yaml", Content: "kind: AuthorizationPolicy\napiVersion: security.istio.io/v1\nmetadata: {name: x, namespace: prod}\nspec: {action: NUKE}\n"}}}, "x.yaml"},
		{"bad_since", server.WhatIfRequest{Files: []server.PolicyFile{{Name: "r.yaml", Content: rec.YAML}}, Since: "-1h"}, "since"},
		{"bad_root_namespace", server.WhatIfRequest{Files: []server.PolicyFile{{Name: "r.yaml", Content: rec.YAML}}, RootNamespace: "Not_A_Namespace"}, "root namespace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, body := e.do(e.client(nil), "POST", server.PathAdminWhatIf, e.token, tc.req)
			if st != 400 || !strings.Contains(string(body), tc.want) {
				t.Fatalf("%d %s", st, body)
			}
		})
	}
	if st, _ := e.do(e.client(nil), "POST", server.PathAdminWhatIf, "", server.WhatIfRequest{}); st != 401 {
		t.Fatalf("without the admin credential: %d", st)
	}
}

// TestUntrackedRecordsMetric: the records the engine judged without a
// state because a table was full are counted per table (the engine's
// side is TestFullTablesCounted in internal/detect).
func TestUntrackedRecordsMetric(t *testing.T) {
	e := start(t, "")
	resp, err := e.client(nil).Get("https://" + e.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, table := range []string{"identities", "edges", "pairs"} {
		if want := `moatless_detect_untracked_records_total{table="` + table + `"} 0`; !strings.Contains(string(b), want) {
			t.Errorf("no %s in /metrics", want)
		}
	}
}

// TestFutureRowsBlindNoRestart: a report's window may start up to 2
// minutes ahead of the server's clock, and its rows are stored with that
// minute. The engine judges such a record at the server's time
// (detect.Engine.Ingest), but a server restarting within those minutes
// learned the stored row as it was: the edge's minute moved ahead, and
// what orders reported next was late, counted toward no volume. The
// server now learns a row from the future at its start time. Fails on
// the parent (no finding for the 200 MB pull after the restart).
func TestFutureRowsBlindNoRestart(t *testing.T) {
	e := start(t, "")
	n := e.attest(ordersID)
	rep := e.report(inboundEdge(reportsID, "GET", "/export", "allow", 1))
	rep.Start, rep.End = rep.Start.Add(110*time.Second), rep.End.Add(110*time.Second)
	if st, body := e.do(n.http, "POST", wire.PathRecords, "", rep); st != 204 {
		t.Fatalf("report: %d %s", st, body)
	}
	e.stop()
	e = start(t, e.dir)
	n = e.attest(ordersID)
	// The pull's window [now-5s, now] must not start in the minute
	// before the restart's (1 in 12 starts, at the first 5 s of a
	// minute): that minute is late whatever the fix.
	e.clock.Add(time.Minute)
	pull := inboundEdge(reportsID, "GET", "/export", "allow", 1)
	pull.RespBytes = 200 << 20
	if st, body := e.do(n.http, "POST", wire.PathRecords, "", e.report(pull)); st != 204 {
		t.Fatalf("report: %d %s", st, body)
	}
	var got []detect.Finding
	for _, f := range findingsAbout(e, reportsID) {
		if f.Detector == detect.DetectorExfiltration {
			got = append(got, f)
		}
	}
	if len(got) != 1 {
		t.Fatalf("the pull after a restart that learned a row from the future: %+v", findingsAbout(e, reportsID))
	}
}

package ui

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/audit"
)

func decision(kind, caller, callee, policy string, at time.Time) audit.Record {
	d := map[string]string{"decision": strings.TrimPrefix(kind, "decision."), "destination": "prod:8080", "policy": policy, "rule": "0",
		"reason_code": "deny_rule", "method": "GET", "path": "/reports"}
	if kind == audit.KindDecisionAudit {
		d["decision"], d["audit_policy"] = "allow", policy
		delete(d, "policy")
	}
	return audit.Record{Event: audit.Event{Kind: kind, Actor: callee, Subject: caller, Time: at, Details: d}}
}

func TestBuildGraph(t *testing.T) {
	const (
		web     = "spiffe://example.org/ns/prod/sa/web"
		orders  = "spiffe://example.org/ns/prod/sa/orders"
		reports = "spiffe://example.org/ns/prod/sa/reports"
		db      = "spiffe://example.org/ns/prod/sa/db"
	)
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		recs  []audit.Record
		edges []string // "from>to:class:denied/allowed", in order
		cols  map[string]int
	}{
		{name: "empty", edges: nil},
		{name: "chain_flows_left_to_right",
			recs: []audit.Record{
				decision(audit.KindDecisionAudit, orders, db, "prod/audit-db", t0.Add(2*time.Second)),
				decision(audit.KindDecisionAudit, web, orders, "prod/audit", t0.Add(time.Second)),
				decision(audit.KindDecisionAudit, web, orders, "prod/audit", t0),
			},
			edges: []string{web + ">" + orders + ":allowed:0/2", orders + ">" + db + ":allowed:0/1"},
			cols:  map[string]int{web: 0, orders: 1, db: 2}},
		{name: "denied_edges_first_and_mixed",
			recs: []audit.Record{
				decision(audit.KindDecisionDeny, reports, db, "prod/deny-reports", t0.Add(3*time.Second)),
				decision(audit.KindDecisionUnauthenticated, reports, db, "", t0.Add(2*time.Second)),
				decision(audit.KindDecisionAudit, web, orders, "prod/audit", t0.Add(time.Second)),
				decision(audit.KindDecisionDeny, web, orders, "prod/orders", t0),
				decision(audit.KindDecisionAudit, web, orders, "prod/audit", t0),
			},
			edges: []string{web + ">" + orders + ":mixed:1/2", reports + ">" + db + ":denied:2/0"}},
		{name: "cycle_terminates",
			recs: []audit.Record{
				decision(audit.KindDecisionDeny, web, orders, "p", t0),
				decision(audit.KindDecisionDeny, orders, web, "p", t0),
				decision(audit.KindDecisionDeny, web, web, "p", t0),
			},
			edges: []string{orders + ">" + web + ":denied:1/0", web + ">" + orders + ":denied:1/0", web + ">" + web + ":denied:1/0"}},
		{name: "plaintext_caller_is_its_ip",
			recs:  []audit.Record{decision(audit.KindDecisionUnauthenticated, "127.0.0.1", orders, "", t0)},
			edges: []string{"127.0.0.1>" + orders + ":denied:1/0"}},
		{name: "other_records_ignored",
			recs:  []audit.Record{{Event: audit.Event{Kind: "entry.create", Actor: "admin-token", Subject: "x"}}},
			edges: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := buildGraph(tt.recs, map[string]bool{db: true})
			var got []string
			for _, e := range g.Edges {
				got = append(got, e.From+">"+e.To+":"+e.Class()+":"+strconv.Itoa(e.Denied)+"/"+strconv.Itoa(e.Allowed))
			}
			if strings.Join(got, "\n") != strings.Join(tt.edges, "\n") {
				t.Fatalf("edges:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.edges, "\n"))
			}
			if len(g.Drawn) != len(g.Edges) {
				t.Errorf("drew %d of %d edges", len(g.Drawn), len(g.Edges))
			}
			x := map[string]int{}
			for _, n := range g.Nodes {
				x[n.ID] = n.X
				if n.X < 0 || n.Y < 0 || n.X+nodeW > g.Width || n.Y+nodeH > g.Height {
					t.Errorf("node %s at (%d,%d) outside %dx%d", n.ID, n.X, n.Y, g.Width, g.Height)
				}
				if n.Revoked != (n.ID == db) {
					t.Errorf("node %s revoked=%v", n.ID, n.Revoked)
				}
			}
			for id, c := range tt.cols {
				if want := margin + loopRoom + c*(nodeW+colGap); x[id] != want {
					t.Errorf("%s at x=%d, want column %d (x=%d)", id, x[id], c, want)
				}
			}
		})
	}
}

func TestBuildGraphBoundsTheDrawing(t *testing.T) {
	var recs []audit.Record
	for i := range 200 {
		recs = append(recs, decision(audit.KindDecisionDeny, "spiffe://example.org/ns/a/sa/c"+strconv.Itoa(i), "spiffe://example.org/ns/a/sa/s", "p", time.Time{}))
	}
	g := buildGraph(recs, nil)
	if len(g.Nodes) > maxGraphNodes || len(g.Edges) != 200 || g.TooMany != 200-len(g.Drawn) || g.TooMany == 0 {
		t.Fatalf("nodes %d edges %d drawn %d too many %d", len(g.Nodes), len(g.Edges), len(g.Drawn), g.TooMany)
	}
}

package ui_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/server"
)

// BenchmarkGraphPage is one refresh of the service graph (an open
// dashboard tab asks every 10 s) with 5,000 decision records among 100
// identities in the audit log: read, aggregate, lay out, render.
func BenchmarkGraphPage(b *testing.B) {
	e := startServer(b)
	e.appendDecisions(b, 5000, func(i int) string { return fmt.Sprintf("spiffe://example.org/ns/prod/sa/s%d", i%7) })
	benchPage(b, e, "/ui/graph", func(body string) bool { return len(body) >= 1000 })
}

// BenchmarkIncidentPage is one refresh of an incident's page (an open tab
// asks every 5 s) with 20,000 decision records in the audit log after the
// incident opened: the incident, its audit records (read by kind, so the
// decision records are not scanned), the risk scores, render.
func BenchmarkIncidentPage(b *testing.B) {
	e := startServer(b)
	inc := e.openIncident(server.IncidentRequest{Identity: frontendID, Action: detect.ActionIsolate})
	e.appendDecisions(b, 20000, func(int) string { return ordersID })
	benchPage(b, e, "/ui/incidents/"+inc.ID, func(body string) bool { return strings.Contains(body, "revocation.create") })
}

// appendDecisions appends n deny decision records from 100 callers to
// callee(i).
func (e *env) appendDecisions(b *testing.B, n int, callee func(i int) string) {
	evs := make([]audit.Event, 0, n)
	for i := range n {
		evs = append(evs, audit.Event{Kind: audit.KindDecisionDeny, Actor: callee(i), Subject: fmt.Sprintf("spiffe://example.org/ns/prod/sa/c%d", i%100),
			Outcome: audit.Denied, Details: map[string]string{"decision": "deny", "destination": "prod:8080", "policy": "prod/deny", "rule": "0",
				"reason_code": "deny_rule", "method": "GET", "path": "/x", "policy_version": "1"}})
	}
	if err := e.srv.Audit().AppendWith(context.Background(), nil, evs...); err != nil {
		b.Fatal(err)
	}
}

// benchPage logs in and fetches path once per iteration; ok checks the
// page.
func benchPage(b *testing.B, e *env, path string, ok func(body string) bool) {
	c := e.client()
	e.login(b, c)
	b.ResetTimer()
	for b.Loop() {
		resp, body := e.get(c, path)
		if resp.StatusCode != http.StatusOK || !ok(body) {
			b.Fatalf("%s: %d", path, resp.StatusCode)
		}
	}
}

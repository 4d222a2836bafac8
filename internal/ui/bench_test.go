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
	evs := make([]audit.Event, 0, 5000)
	for i := range 5000 {
		caller := fmt.Sprintf("spiffe://example.org/ns/prod/sa/c%d", i%100)
		callee := fmt.Sprintf("spiffe://example.org/ns/prod/sa/s%d", i%7)
		evs = append(evs, audit.Event{Kind: audit.KindDecisionDeny, Actor: callee, Subject: caller, Outcome: audit.Denied,
			Details: map[string]string{"decision": "deny", "destination": "prod:8080", "policy": "prod/deny", "rule": "0",
				"reason_code": "deny_rule", "method": "GET", "path": "/x", "policy_version": "1"}})
	}
	if err := e.srv.Audit().AppendWith(context.Background(), nil, evs...); err != nil {
		b.Fatal(err)
	}
	c := e.client()
	e.login(b, c)
	b.ResetTimer()
	for b.Loop() {
		resp, body := e.get(c, "/ui/graph")
		if resp.StatusCode != http.StatusOK || len(body) < 1000 {
			b.Fatalf("graph: %d", resp.StatusCode)
		}
	}
}

// BenchmarkIncidentPage is one refresh of an incident's page (an open tab
// asks every 5 s) with 20,000 decision records in the audit log after the
// incident opened: the incident, its audit records (read by kind, so the
// decision records are not scanned), the risk scores, render.
func BenchmarkIncidentPage(b *testing.B) {
	e := startServer(b)
	var inc detect.Incident
	if st := e.admin("POST", server.PathAdminIncidents, server.IncidentRequest{Identity: frontendID, Action: detect.ActionIsolate}, &inc); st != http.StatusCreated {
		b.Fatalf("isolate: %d", st)
	}
	for range 4 {
		evs := make([]audit.Event, 0, 5000)
		for i := range 5000 {
			evs = append(evs, audit.Event{Kind: audit.KindDecisionDeny, Actor: ordersID, Subject: fmt.Sprintf("spiffe://example.org/ns/prod/sa/c%d", i%100),
				Outcome: audit.Denied, Details: map[string]string{"decision": "deny", "destination": "prod:8080", "policy": "prod/deny", "method": "GET", "path": "/x"}})
		}
		if err := e.srv.Audit().AppendWith(context.Background(), nil, evs...); err != nil {
			b.Fatal(err)
		}
	}
	c := e.client()
	e.login(b, c)
	b.ResetTimer()
	for b.Loop() {
		resp, body := e.get(c, "/ui/incidents/"+inc.ID)
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, "revocation.create") {
			b.Fatalf("incident page: %d", resp.StatusCode)
		}
	}
}

package server

import (
	"testing"
	"time"

	"github.com/moatless/moatless/internal/wire"
)

// TestReportedDecisionNamesItsToken: a reported decision's verified token
// (issuer, subject) reaches the audit record's details whatever the
// decision, a denial by policy as a 401, so that audit can attribute
// calls by token; control characters are escaped. Fails on the parent
// (only an unauthenticated decision kept them).
func TestReportedDecisionNamesItsToken(t *testing.T) {
	for _, tc := range []struct{ decision, audit string }{{"deny", ""}, {"unauthenticated", ""}, {"allow", "ns/audit-all"}} {
		t.Run(tc.decision, func(t *testing.T) {
			e := wire.AuditEvent{Time: time.Now(), Decision: tc.decision, AuditPolicy: tc.audit, Protocol: "http", ReasonCode: "deny_rule", Rule: -1,
				Listener: "in", Destination: "prod:8080", Source: "spiffe://example.org/ns/prod/sa/frontend", TokenIssuer: "https://idp.example", TokenSubject: "alice\nforged"}
			ev, err := reportedEvent(0, &e)
			if err != nil {
				t.Fatal(err)
			}
			if ev.Details["token_issuer"] != "https://idp.example" || ev.Details["token_subject"] != "alice%0Aforged" {
				t.Fatalf("details %v", ev.Details)
			}
		})
	}
}

package server_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/wire"
)

// TestRelayedTokensFrameNoOne: frontend forwards its users' tokens to
// orders and payments (Istio's end-user authentication: the backends'
// sidecars verify them). An outsider sends a revoked token, or a stream
// of bad ones, through frontend; both backends refuse them (401) and
// report frontend as the caller. That is no evidence against frontend,
// whose own SVID passed mTLS, so no finding is raised about it and it is
// not contained, however many nodes report it. Controls: frontend's own
// revoked SVID still knocking, and requests frontend makes that policy
// denies, are still its own, and two nodes reporting them contain it.
// Fails on the parent commit: there, one revoked token (or 100 bad ones
// in a minute) forwarded to two backends got frontend isolated.
func TestRelayedTokensFrameNoOne(t *testing.T) {
	// unauthenticated is the event a sidecar reports for a 401 (source:
	// the caller's SPIFFE ID, empty for the gateway's clients).
	unauthenticated := func(source, reason string) wire.AuditEvent {
		ev := denyEvent("/checkout")
		ev.Source, ev.SourceIP, ev.Method, ev.Decision, ev.Policy, ev.Rule = source, "203.0.113.9", "POST", "unauthenticated", "", -1
		ev.Reason, ev.ReasonCode = reason, "invalid_token"
		return ev
	}
	// audit reports evs as n's sidecar.
	audit := func(t *testing.T, e *env, n *node, evs ...wire.AuditEvent) {
		t.Helper()
		if st, body := e.do(n.http, "POST", wire.PathAudit, "", wire.AuditReport{Events: evs}); st != 204 {
			t.Fatalf("audit report: %d %s", st, body)
		}
	}
	// records reports edge as n's sidecar.
	records := func(t *testing.T, e *env, n *node, edge wire.EdgeRecord) {
		t.Helper()
		if st, body := e.do(n.http, "POST", wire.PathRecords, "", e.report(edge)); st != 204 {
			t.Fatalf("records: %d %s", st, body)
		}
	}
	for _, tc := range []struct {
		name string
		// act plays orders' and payments' sidecars.
		act       func(t *testing.T, e *env, backends ...*node)
		contained bool
	}{
		{"revoked_token_relayed", func(t *testing.T, e *env, backends ...*node) {
			for _, n := range backends {
				audit(t, e, n, unauthenticated(frontendID, "invalid token: token revoked"))
			}
		}, false},
		{"token_for_revoked_identity_relayed", func(t *testing.T, e *env, backends ...*node) {
			for _, n := range backends {
				audit(t, e, n, unauthenticated(frontendID, "invalid token: issued to or for a revoked identity"))
			}
		}, false},
		{"bad_tokens_relayed", func(t *testing.T, e *env, backends ...*node) {
			for _, n := range backends {
				bad := inboundEdge(frontendID, "POST", "/checkout", "unauthenticated", 150)
				bad.Reason, bad.Status = "invalid_token", 4
				records(t, e, n, bad)
			}
		}, false},
		{"control_own_revoked_svid", func(t *testing.T, e *env, backends ...*node) {
			for _, n := range backends {
				records(t, e, n, wire.EdgeRecord{Direction: "inbound", Source: frontendID, Protocol: "http", Decision: "refused", Reason: "revoked", Requests: 3})
			}
		}, true},
		{"control_own_denied_calls", func(t *testing.T, e *env, backends ...*node) {
			for _, n := range backends {
				e.probeBy(t, n, frontendID, 120)
			}
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, "")
			e.admin("POST", server.PathAdminPlaybooks, server.PlaybookApplyRequest{Files: []server.PolicyFile{{Name: "contain.yaml", Content: containPlaybook}}}, nil)
			orders, payments := e.attest(ordersID), e.attest(paymentsID)
			tc.act(t, e, orders, payments)
			// The gateway's client presenting a revoked token itself is
			// still a finding about it (by address); once it is stored,
			// the events reported before it have been judged.
			audit(t, e, orders, unauthenticated("", "invalid token: token revoked"))
			waitFor(t, "the finding about the gateway's client", func() bool {
				return len(findingsAbout(e, "203.0.113.9")) == 1
			})

			incs := incidentsOf(t, e)
			if !tc.contained {
				if fs := findingsAbout(e, frontendID); len(fs) != 0 || len(incs) != 0 {
					t.Fatalf("frontend judged by the tokens it relayed: findings %+v, incidents %+v", fs, incs)
				}
				return
			}
			if len(incs) != 1 || incs[0].Identity != frontendID || incs[0].State != detect.IncidentContained {
				t.Fatalf("want frontend contained: %+v", incs)
			}
		})
	}
}

// findingsAbout lists the stored findings about identity.
func findingsAbout(e *env, identity string) []detect.Finding {
	return itemsOf[detect.Finding](e, fmt.Sprintf("%s?identity=%s", server.PathAdminFindings, strings.ReplaceAll(identity, "/", "%2F")))
}

package server_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/wire"
)

const gatewayID = "spiffe://example.org/ns/prod/sa/gateway"

// TestRelayScannedContainsNoOne: internet scanners ask the edge gateway
// for /.git/config, /wp-admin, …; the gateway forwards them, and orders'
// and payments' sidecars, whose policies allow the gateway only the
// paths it was seen calling, refuse them (403) and report the gateway as
// the caller. Two nodes' word, borne out by the gateway's own outbound
// records: on the parent commit that was evidence of compromise and the
// documented playbook isolated the mesh's front door on the internet's
// say-so. With the gateway in detect.relays the refusals are an anomaly:
// the incident opens and notifies, its containment is held, even under a
// playbook that names probing. Controls: the gateway's own revoked SVID
// still knocking is evidence against it, and the same refusals of an
// identity not listed as a relay still contain it. Fails on the parent
// (the config has no relays field; without it, the gateway is contained).
func TestRelayScannedContainsNoOne(t *testing.T) {
	const probingPlaybook = `apiVersion: moatless.io/v1alpha1
kind: Playbook
metadata: {name: contain-probing}
spec:
  trigger: {risk: 0.75, detectors: [probing], identities: ["spiffe://example.org/ns/prod/*"]}
  steps:
  - action: notify
  - action: isolate
`
	// A playbook that contains on one medium probing finding.
	probingMedium := strings.Replace(probingPlaybook, "risk: 0.75", "risk: 0.5", 1)
	// scanned reports, as the caller's own gateway, the calls it made,
	// and as each backend's sidecar, 120 refusals of them (scanners'
	// paths): the caller's records bear the backends out.
	scanned := func(caller string) func(t *testing.T, e *env, gw *node, backends ...*node) {
		return func(t *testing.T, e *env, gw *node, backends ...*node) {
			e.calls(t, gw, ordersID, 120)
			e.calls(t, gw, paymentsID, 120)
			for _, n := range backends {
				for _, p := range []string{"/.git/config", "/wp-admin"} {
					deny := inboundEdge(caller, "GET", p, "deny", 60)
					deny.Reason, deny.Status = "no_allow_match", 4
					if st, body := e.do(n.http, "POST", wire.PathRecords, "", e.report(deny)); st != 204 {
						t.Fatalf("records: %d %s", st, body)
					}
				}
			}
		}
	}
	// slowScan: the caller, learned (it called / two minutes ago),
	// forwards ten never-seen paths to each backend within the minute,
	// one request each: under the burst of refusals, over new_paths.
	// The caller's records bear the backends out. On the parent the
	// gateway's finding was probing of kind paths, not relayed, and the
	// playbook naming probing isolated it.
	slowScan := func(caller string) func(t *testing.T, e *env, gw *node, backends ...*node) {
		return func(t *testing.T, e *env, gw *node, backends ...*node) {
			for _, n := range backends {
				if st, body := e.do(n.http, "POST", wire.PathRecords, "", e.report(inboundEdge(caller, "GET", "/", "allow", 1))); st != 204 {
					t.Fatalf("records: %d %s", st, body)
				}
			}
			e.clock.Add(2 * time.Minute)
			e.calls(t, gw, ordersID, 10)
			e.calls(t, gw, paymentsID, 10)
			for _, n := range backends {
				var edges []wire.EdgeRecord
				for i := range 10 {
					deny := inboundEdge(caller, "GET", fmt.Sprintf("/scan-%c", 'a'+i), "deny", 1)
					deny.Reason, deny.Status = "no_allow_match", 4
					edges = append(edges, deny)
				}
				if st, body := e.do(n.http, "POST", wire.PathRecords, "", e.report(edges...)); st != 204 {
					t.Fatalf("records: %d %s", st, body)
				}
			}
		}
	}
	for _, tc := range []struct {
		name     string
		relays   []string
		playbook string
		caller   string
		act      func(t *testing.T, e *env, gw *node, backends ...*node)
		// contained: the playbook isolates the caller.
		contained bool
	}{
		{"relay_scanned", []string{gatewayID}, containPlaybook, gatewayID, scanned(gatewayID), false},
		{"relay_by_pattern", []string{"spiffe://example.org/ns/*/sa/gateway"}, containPlaybook, gatewayID, scanned(gatewayID), false},
		{"relay_under_probing_playbook", []string{gatewayID}, probingPlaybook, gatewayID, scanned(gatewayID), false},
		{"control_relay_own_revoked_svid", []string{gatewayID}, containPlaybook, gatewayID, func(t *testing.T, e *env, gw *node, backends ...*node) {
			scanned(gatewayID)(t, e, gw, backends...)
			for _, n := range backends {
				rec := wire.EdgeRecord{Direction: "inbound", Source: gatewayID, Protocol: "http", Decision: "refused", Reason: "revoked", Requests: 3}
				if st, body := e.do(n.http, "POST", wire.PathRecords, "", e.report(rec)); st != 204 {
					t.Fatalf("records: %d %s", st, body)
				}
			}
		}, true},
		{"control_not_a_relay", []string{gatewayID}, containPlaybook, frontendID, scanned(frontendID), true},
		{"relay_new_paths_under_probing_playbook", []string{gatewayID}, probingMedium, gatewayID, slowScan(gatewayID), false},
		{"control_new_paths_not_a_relay", []string{gatewayID}, probingMedium, frontendID, slowScan(frontendID), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, "", func(st *config.Server) {
				st.Detect.Relays = tc.relays
				st.Detect.LearningPeriod = wire.Duration(time.Minute)
			})
			e.admin("POST", server.PathAdminPlaybooks, server.PlaybookApplyRequest{Files: []server.PolicyFile{{Name: "contain.yaml", Content: tc.playbook}}}, nil)
			gw, orders, payments := e.attest(tc.caller), e.attest(ordersID), e.attest(paymentsID)
			tc.act(t, e, gw, orders, payments)

			incs := incidentsOf(t, e)
			if len(incs) != 1 || incs[0].Identity != tc.caller || !incs[0].Notified {
				t.Fatalf("want one incident about %s, notified: %+v", tc.caller, incs)
			}
			inc := incs[0]
			if tc.contained {
				if inc.State != detect.IncidentContained || !inc.Revoked {
					t.Fatalf("want %s contained: %+v", tc.caller, inc)
				}
				return
			}
			if inc.State == detect.IncidentContained || inc.Revoked || len(inc.Held) == 0 || !strings.Contains(inc.Corroboration, "relay") {
				t.Fatalf("the gateway contained on what scanners asked it for: state %s, revoked %v, held %v, %s", inc.State, inc.Revoked, inc.Held, inc.Corroboration)
			}
			fs := findingsAbout(e, gatewayID)
			if len(fs) != 1 || !fs[0].Relayed() || !strings.Contains(fs[0].Summary, "relay") {
				t.Fatalf("want one relayed probing finding about the gateway: %+v", fs)
			}
			t.Logf("finding: %s\nincident: %s, %s", fs[0].Summary, inc.State, inc.Corroboration)
		})
	}
}

// TestRevokedTokenNamesItsOwner: an outsider holds a token the server's
// token service issued to the reports workload, revoked since, and sends
// it through frontend to orders and payments. Their sidecars refuse it
// (401) and report the token's verified issuer and subject. The finding
// names reports, whose credential is out, and not frontend, which only
// relayed it (TestRelayedTokensFrameNoOne). It is an anomaly: the
// incident about reports opens and notifies but contains nothing, since
// the thief is not reports and its token is refused already. A subject
// only a foreign issuer vouches for, or one of another trust domain,
// names no one. Fails on the parent (no finding names reports).
func TestRevokedTokenNamesItsOwner(t *testing.T) {
	for _, tc := range []struct {
		name   string
		issuer func(e *env) string
		sub    string
		named  bool
	}{
		{"issued_by_this_server", func(e *env) string { return e.srv.OAuth().Issuer() }, reportsID, true},
		{"foreign_issuer", func(*env) string { return "https://idp.example.com" }, reportsID, false},
		{"other_trust_domain", func(e *env) string { return e.srv.OAuth().Issuer() }, "spiffe://other.example/ns/prod/sa/reports", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, "")
			e.admin("POST", server.PathAdminPlaybooks, server.PlaybookApplyRequest{Files: []server.PolicyFile{{Name: "contain.yaml", Content: containPlaybook}}}, nil)
			for _, n := range []*node{e.attest(ordersID), e.attest(paymentsID)} {
				ev := denyEvent("/checkout")
				ev.Source, ev.Method, ev.Decision, ev.Policy, ev.Rule = frontendID, "POST", "unauthenticated", "", -1
				ev.Reason, ev.ReasonCode = "invalid token: token revoked", "invalid_token"
				ev.TokenIssuer, ev.TokenSubject = tc.issuer(e), tc.sub
				if st, body := e.do(n.http, "POST", wire.PathAudit, "", wire.AuditReport{Events: []wire.AuditEvent{ev}}); st != 204 {
					t.Fatalf("audit report: %d %s", st, body)
				}
			}
			// A plaintext caller's revoked token is a finding about its
			// address: once it is stored, the events before it have been
			// judged.
			ev := denyEvent("/checkout")
			ev.Source, ev.SourceIP, ev.Decision, ev.Policy, ev.Rule, ev.Reason, ev.ReasonCode = "", "203.0.113.9", "unauthenticated", "", -1, "invalid token: token revoked", "invalid_token"
			if st, body := e.do(e.attest(ordersID).http, "POST", wire.PathAudit, "", wire.AuditReport{Events: []wire.AuditEvent{ev}}); st != 204 {
				t.Fatalf("audit report: %d %s", st, body)
			}
			waitFor(t, "the finding about the address", func() bool { return len(findingsAbout(e, "203.0.113.9")) == 1 })
			if fs := findingsAbout(e, frontendID); len(fs) != 0 {
				t.Fatalf("frontend, which relayed the token, judged: %+v", fs)
			}
			var fs []detect.Finding
			if tc.named {
				waitFor(t, "the finding about the token's owner", func() bool { fs = findingsAbout(e, reportsID); return len(fs) == 1 })
			}
			fs = findingsAbout(e, reportsID)
			if !tc.named {
				if len(fs) != 0 {
					t.Fatalf("a subject the server did not issue named: %+v", fs)
				}
				return
			}
			f := fs[0]
			if f.Detector != detect.DetectorRevoked || !f.Anomaly() || f.Evidence["revoked_token_of"] != reportsID || !strings.Contains(f.Summary, "presented by "+frontendID) || len(f.Witnesses()) != 2 {
				t.Fatalf("finding about the token's owner: %+v", f)
			}
			waitFor(t, "the incident about reports", func() bool {
				for _, inc := range incidentsOf(t, e) {
					if inc.Identity == reportsID && inc.Notified {
						return true
					}
				}
				return false
			})
			for _, inc := range incidentsOf(t, e) {
				if inc.Identity == reportsID && (inc.State == detect.IncidentContained || inc.Revoked) {
					t.Fatalf("reports contained because a thief replayed its revoked token: %+v", inc)
				}
			}
		})
	}
}

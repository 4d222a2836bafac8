package server_test

import (
	"strings"
	"testing"

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
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, "", func(st *config.Server) { st.Detect.Relays = tc.relays })
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
		})
	}
}

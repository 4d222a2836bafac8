package server_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store"
)

const paymentsID = "spiffe://example.org/ns/prod/sa/payments"

// TestDetectionCannotFrame: a node reports fabricated records about
// another identity (payments "probed" it). Each node is a real attested
// identity talking to the server; payments is innocent unless its own
// sidecar's records, or enough other nodes, bear the claims out. Fails on
// the parent commit: there, one node's records got payments isolated.
func TestDetectionCannotFrame(t *testing.T) {
	const heldMetric = "moatless_detect_uncorroborated_incidents_total"
	for _, tc := range []struct {
		name string
		// witnesses sets the playbook's spec.trigger.witnesses (0: the
		// default, 2).
		witnesses string
		// act plays the nodes: orders, frontend and payments' own.
		act func(t *testing.T, e *env, orders, frontend, payments *node)
		// contained: payments is isolated; otherwise the incident is open
		// with isolate and block-pair held.
		contained bool
		held      float64 // the metric after act
	}{
		{"one_node_frames_payments", "", func(t *testing.T, e *env, orders, _, _ *node) {
			e.probeBy(t, orders, paymentsID, 120)
		}, false, 1},
		{"one_node_inflates_real_calls", "", func(t *testing.T, e *env, orders, _, payments *node) {
			e.calls(t, payments, ordersID, 10) // payments did call orders: 10 times
			e.probeBy(t, orders, paymentsID, 120)
		}, false, 1},
		{"one_node_inflates_by_half", "", func(t *testing.T, e *env, orders, _, payments *node) {
			e.calls(t, payments, ordersID, 80)
			e.probeBy(t, orders, paymentsID, 120)
		}, false, 1},
		{"own_records_a_little_short", "", func(t *testing.T, e *env, orders, _, payments *node) {
			e.calls(t, payments, ordersID, 100) // 100 of 120 (83%): the two ends' windows need not match exactly
			e.probeBy(t, orders, paymentsID, 120)
		}, true, 0},
		{"one_node_repeats_its_claim", "", func(t *testing.T, e *env, orders, _, _ *node) {
			for range 3 {
				e.probeBy(t, orders, paymentsID, 120)
			}
		}, false, 1},
		{"own_records_first", "", func(t *testing.T, e *env, orders, _, payments *node) {
			e.calls(t, payments, ordersID, 120)
			e.probeBy(t, orders, paymentsID, 120)
		}, true, 0},
		{"own_records_come_later", "", func(t *testing.T, e *env, orders, _, payments *node) {
			e.probeBy(t, orders, paymentsID, 120)
			e.calls(t, payments, ordersID, 120)
		}, true, 1},
		{"two_nodes_report_it", "", func(t *testing.T, e *env, orders, frontend, _ *node) {
			e.probeBy(t, orders, paymentsID, 120)
			e.probeBy(t, frontend, paymentsID, 120)
		}, true, 1},
		{"playbook_trusts_one_node", "1", func(t *testing.T, e *env, orders, _, _ *node) {
			e.probeBy(t, orders, paymentsID, 120)
		}, true, 0},
		{"playbook_wants_three_nodes", "3", func(t *testing.T, e *env, orders, frontend, _ *node) {
			e.probeBy(t, orders, paymentsID, 120)
			e.probeBy(t, frontend, paymentsID, 120)
		}, false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, "")
			pb := containPlaybook
			if tc.witnesses != "" {
				pb = strings.Replace(pb, `prod/*"]}`, `prod/*"], witnesses: `+tc.witnesses+`}`, 1)
			}
			e.admin("POST", server.PathAdminPlaybooks, server.PlaybookApplyRequest{Files: []server.PolicyFile{{Name: "contain.yaml", Content: pb}}}, nil)
			orders, frontend, payments := e.attest(ordersID), e.attest("spiffe://example.org/ns/prod/sa/frontend"), e.attest(paymentsID)
			tc.act(t, e, orders, frontend, payments)

			var incs server.Page[detect.Incident]
			e.admin("GET", server.PathAdminIncidents, nil, &incs)
			if len(incs.Items) != 1 || incs.Items[0].Identity != paymentsID {
				t.Fatalf("incidents: %+v", incs.Items)
			}
			inc := incs.Items[0]
			var revs store.RevocationList
			e.admin("GET", server.PathAdminRevocations, nil, &revs)
			if got := metric(t, e, heldMetric); got != tc.held {
				t.Errorf("%s = %v, want %v", heldMetric, got, tc.held)
			}
			if tc.contained {
				if inc.State != detect.IncidentContained || !inc.Revoked || inc.Uncorroborated() || len(revs.IDs) != 1 ||
					!strings.HasPrefix(inc.Corroboration, "corroborated") {
					t.Fatalf("want payments contained: %+v, revoked %+v", inc, revs.IDs)
				}
				return
			}
			if inc.State != detect.IncidentOpen || inc.Revoked || len(inc.Blocks) != 0 || len(revs.IDs) != 0 {
				t.Fatalf("payments contained on uncorroborated findings: %+v, revoked %+v", inc, revs.IDs)
			}
			var held []string
			for _, h := range inc.Held {
				held = append(held, h.Action)
			}
			if !slices.Equal(held, []string{detect.ActionIsolate, detect.ActionBlockPair}) || !strings.HasPrefix(inc.Corroboration, "uncorroborated") ||
				!strings.Contains(inc.Corroboration, ordersID) {
				t.Fatalf("held %v, corroboration %q", held, inc.Corroboration)
			}
			var outcomes []string
			for _, s := range inc.Steps {
				outcomes = append(outcomes, s.Action+":"+s.Outcome)
			}
			if strings.Join(outcomes, " ") != "notify:done isolate:held block-pair:held" {
				t.Fatalf("steps: %v", outcomes)
			}
			// The finding says whose word it is.
			var f detect.Finding
			e.admin("GET", server.PathAdminFindings+"/"+inc.Findings[0], nil, &f)
			if len(f.Reporters) == 0 || slices.Contains(f.Reporters, paymentsID) {
				t.Fatalf("finding reporters: %v", f.Reporters)
			}

			// An admin who has looked confirms: the held steps run, as the
			// admin, and the confirmation is audited.
			var conf detect.Incident
			e.admin("POST", server.PathAdminIncidents+"/"+inc.ID+"/confirm", nil, &conf)
			if conf.State != detect.IncidentContained || !conf.Revoked || conf.Uncorroborated() || len(conf.Blocks) == 0 {
				t.Fatalf("confirmed: %+v", conf)
			}
			for _, b := range conf.Blocks {
				if !b.ExpiresAt.IsZero() {
					t.Fatalf("a block of the confirmed incident still lapses: %+v", b)
				}
			}
			last := conf.Steps[len(conf.Steps)-1]
			if last.Action != "confirm" || !strings.Contains(last.Detail, "held steps run") {
				t.Fatalf("confirm step: %+v", last)
			}
			for _, s := range conf.Steps {
				if s.Action == detect.ActionIsolate && s.Outcome == detect.OutcomeDone && s.Actor == "playbook:contain" {
					t.Fatalf("isolate run by the playbook, not the admin: %+v", s)
				}
			}
			e.admin("GET", server.PathAdminRevocations, nil, &revs)
			if len(revs.IDs) != 1 || revs.IDs[0].SPIFFEID != paymentsID {
				t.Fatalf("revocations after confirm: %+v", revs.IDs)
			}
			if len(kinds(t, e)[server.KindIncidentConfirm]) != 1 {
				t.Fatal("confirm not audited")
			}
		})
	}
}

// Releasing an uncorroborated incident drops its held steps: nothing runs
// later, and there is nothing left to confirm.
func TestUncorroboratedIncidentReleased(t *testing.T) {
	e := start(t, "")
	e.admin("POST", server.PathAdminPlaybooks, server.PlaybookApplyRequest{Files: []server.PolicyFile{{Name: "contain.yaml", Content: containPlaybook}}}, nil)
	orders, payments := e.attest(ordersID), e.attest(paymentsID)
	e.probeBy(t, orders, paymentsID, 120)
	var incs server.Page[detect.Incident]
	e.admin("GET", server.PathAdminIncidents, nil, &incs)
	if len(incs.Items) != 1 || !incs.Items[0].Uncorroborated() {
		t.Fatalf("incidents: %+v", incs.Items)
	}
	id := incs.Items[0].ID
	var rel detect.Incident
	e.admin("POST", server.PathAdminIncidents+"/"+id+"/release", server.ReleaseRequest{Reason: "orders lied"}, &rel)
	if rel.State != detect.IncidentReleased || rel.Uncorroborated() || rel.Revoked {
		t.Fatalf("released: %+v", rel)
	}
	// payments' own records arriving now corroborate nothing: the
	// incident is closed.
	e.calls(t, payments, ordersID, 120)
	var revs store.RevocationList
	e.admin("GET", server.PathAdminRevocations, nil, &revs)
	if len(revs.IDs) != 0 {
		t.Fatalf("revoked after release: %+v", revs.IDs)
	}
	if st, body := e.do(e.client(nil), "POST", server.PathAdminIncidents+"/"+id+"/confirm", e.token, nil); st != 400 || !strings.Contains(string(body), "no held step") {
		t.Fatalf("confirm after release: %d %s", st, body)
	}
}

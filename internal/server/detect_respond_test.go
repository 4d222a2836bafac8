package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

const containPlaybook = `apiVersion: moatless.io/v1alpha1
kind: Playbook
metadata: {name: contain}
spec:
  trigger: {risk: 0.75, identities: ["spiffe://example.org/ns/prod/*"]}
  steps:
  - action: notify
  - action: isolate
  - {action: block-pair, duration: 1h}
`

// probe reports, as orders' sidecar, a burst of refusals from reports
// (probing, high: the identity's risk reaches 0.75).
func (e *env) probe(t *testing.T, n *node) {
	t.Helper()
	e.probeBy(t, n, reportsID, 120)
}

// probeBy reports, as n's sidecar, requests refusals from src.
func (e *env) probeBy(t *testing.T, n *node, src string, requests uint64) {
	t.Helper()
	deny := inboundEdge(src, "GET", "/admin/{*}", "deny", requests)
	deny.Reason, deny.Status = "no_allow_match", 4
	if st, body := e.do(n.http, "POST", wire.PathRecords, "", e.report(deny)); st != 204 {
		t.Fatalf("report: %d %s", st, body)
	}
}

// calls reports, as n's sidecar (the caller's own), requests it sent to
// dst and the response bytes it got back: its side of what dst reports.
func (e *env) calls(t *testing.T, n *node, dst string, requests uint64) {
	t.Helper()
	out := wire.EdgeRecord{Direction: "outbound", Destination: dst, Port: 8080, Protocol: "http", Method: "GET", Path: "/admin/{*}",
		Decision: "allow", Status: 4, Requests: requests, RespBytes: requests * 1000}
	if st, body := e.do(n.http, "POST", wire.PathRecords, "", e.report(out)); st != 204 {
		t.Fatalf("report: %d %s", st, body)
	}
}

func kinds(t *testing.T, e *env) map[string][]server.AuditRecord {
	t.Helper()
	var page server.AuditPage
	e.admin("GET", server.PathAdminAudit+"?limit=1000", nil, &page)
	out := map[string][]server.AuditRecord{}
	for _, r := range page.Records {
		out[r.Kind] = append(out[r.Kind], r)
	}
	return out
}

func TestPlaybookContainsAndReleases(t *testing.T) {
	e := start(t, "")
	e.admin("POST", server.PathAdminPlaybooks, server.PlaybookApplyRequest{Files: []server.PolicyFile{{Name: "contain.yaml", Content: containPlaybook}}}, nil)
	orders := e.attest(ordersID)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	updates := e.watch(ctx, orders)
	next(t, updates) // the first, whole update

	// reports' own sidecar reports the calls orders refused: the
	// findings are corroborated (detect_frame_test.go has the cases where
	// they are not).
	e.calls(t, e.attest(reportsID), ordersID, 120)
	e.probe(t, orders)

	var incs server.Page[detect.Incident]
	e.admin("GET", server.PathAdminIncidents, nil, &incs)
	if len(incs.Items) != 1 {
		t.Fatalf("%d incidents, want 1", len(incs.Items))
	}
	inc := incs.Items[0]
	if inc.Identity != reportsID || inc.State != detect.IncidentContained || inc.Playbook != "contain" || !inc.Revoked || len(inc.Findings) != 1 {
		t.Fatalf("incident %+v", inc)
	}
	var actions []string
	for _, s := range inc.Steps {
		actions = append(actions, s.Action+":"+s.Outcome)
		if s.FindingID != inc.Findings[0] || s.Actor != "playbook:contain" {
			t.Errorf("step %+v does not name the finding and the playbook", s)
		}
	}
	if strings.Join(actions, " ") != "notify:done isolate:done block-pair:done" {
		t.Fatalf("steps: %v", actions)
	}
	if len(inc.Blocks) != 1 || inc.Blocks[0].Destination != ordersID || inc.Blocks[0].ExpiresAt.Sub(e.clock.Now()) > time.Hour {
		t.Fatalf("blocks: %+v", inc.Blocks)
	}
	// Every node is told: the revocation and the blocked pair.
	deadline := time.After(10 * time.Second)
	for seen := false; !seen; {
		select {
		case u := <-updates:
			if r := u.Revocations; r != nil && len(r.SPIFFEIDs) == 1 && r.SPIFFEIDs[0] == reportsID && len(r.BlockedEdges) == 1 {
				seen = true
			}
		case <-deadline:
			t.Fatal("no revocation with the blocked pair on the watch stream")
		}
	}
	// The audit log tells the story, each step with its finding.
	k := kinds(t, e)
	if len(k[server.KindIncidentOpen]) != 1 || len(k[server.KindIncidentStep]) != 3 || len(k[audit.KindRevoke]) != 1 {
		t.Fatalf("audit: %d opens, %d steps, %d revocations", len(k[server.KindIncidentOpen]), len(k[server.KindIncidentStep]), len(k[audit.KindRevoke]))
	}
	if r := k[audit.KindRevoke][0]; r.Details["incident"] != inc.ID || r.Details["finding"] != inc.Findings[0] || r.Actor != "playbook:contain" {
		t.Fatalf("revocation record: %+v", r)
	}
	// More findings join the open incident; no second one opens.
	e.probe(t, orders)
	e.admin("GET", server.PathAdminIncidents, nil, &incs)
	if len(incs.Items) != 1 {
		t.Fatalf("%d incidents after a second burst, want 1", len(incs.Items))
	}

	// The block lapses by itself an hour later.
	e.clock.Add(61 * time.Minute)
	waitFor(t, "the block to lapse", func() bool {
		var now detect.Incident
		e.admin("GET", server.PathAdminIncidents+"/"+inc.ID, nil, &now)
		inc = now
		return len(now.Blocks) == 0
	})
	var bs server.Page[store.Block]
	e.admin("GET", server.PathAdminBlocks, nil, &bs)
	if len(bs.Items) != 0 {
		t.Fatalf("blocks after they lapsed: %+v", bs.Items)
	}
	if last := inc.Steps[len(inc.Steps)-1]; last.Action != detect.ActionRelease || !strings.Contains(last.Detail, "expired") || len(inc.Blocks) != 0 {
		t.Fatalf("after the block lapsed: %+v", inc)
	}
	if inc.State != detect.IncidentContained {
		t.Fatalf("still revoked, the incident is %s", inc.State)
	}

	// Forensics, then release.
	var b server.ForensicsBundle
	e.admin("GET", server.PathAdminIncidents+"/"+inc.ID+"/export", nil, &b)
	if b.Format != "moatless-forensics/v1" || b.Incident.ID != inc.ID || len(b.Findings) == 0 || len(b.AuditRecords) < 5 || b.AuditHead.Seq == 0 ||
		len(b.Revocations.IDs) != 1 || len(b.Traffic) == 0 || len(b.Findings[0].Records) == 0 {
		t.Fatalf("bundle: %d findings, %d audit records, head %d, %d revocations, %d edges", len(b.Findings), len(b.AuditRecords), b.AuditHead.Seq, len(b.Revocations.IDs), len(b.Traffic))
	}
	var rel detect.Incident
	e.admin("POST", server.PathAdminIncidents+"/"+inc.ID+"/release", server.ReleaseRequest{Reason: "false alarm"}, &rel)
	inc = rel
	if inc.State != detect.IncidentReleased || inc.Revoked || inc.ReleasedAt.IsZero() {
		t.Fatalf("released: %+v", inc)
	}
	var revs store.RevocationList
	e.admin("GET", server.PathAdminRevocations, nil, &revs)
	if len(revs.IDs) != 0 {
		t.Fatalf("revocation not lifted: %+v", revs.IDs)
	}
	if st, body := e.do(e.client(nil), "POST", server.PathAdminIncidents+"/"+inc.ID+"/release", e.token, nil); st != 409 {
		t.Fatalf("second release: %d %s", st, body)
	}
	if _, err := audit.Verify(context.Background(), e.srv.Store(), audit.VerifyOptions{}); err != nil {
		t.Fatalf("audit chain after the incident: %v", err)
	}
}

func TestIncidentByHand(t *testing.T) {
	e := start(t, "")
	payments := "spiffe://example.org/ns/prod/sa/payments"
	var inc detect.Incident
	e.admin("POST", server.PathAdminIncidents, server.IncidentRequest{Identity: reportsID, Action: detect.ActionQuarantine, Reason: "looks odd"}, &inc)
	if inc.State != detect.IncidentOpen || len(inc.Steps) != 1 || inc.Steps[0].Outcome != detect.OutcomeDryRun || !strings.Contains(inc.Steps[0].Detail, "dry run") {
		t.Fatalf("quarantine: %+v", inc)
	}
	var revs store.RevocationList
	e.admin("GET", server.PathAdminRevocations, nil, &revs)
	if len(revs.IDs) != 0 {
		t.Fatal("a dry run revoked something")
	}
	// A block by hand joins the open incident, then is confirmed: it
	// no longer lapses.
	e.admin("POST", server.PathAdminIncidents, server.IncidentRequest{Identity: reportsID, Action: detect.ActionBlockPair, Destination: payments, Duration: wire.Duration(time.Hour)}, &inc)
	if len(inc.Steps) != 2 || inc.State != detect.IncidentContained || len(inc.Blocks) != 1 {
		t.Fatalf("block by hand: %+v", inc)
	}
	e.admin("POST", server.PathAdminIncidents+"/"+inc.ID+"/confirm", nil, &inc)
	e.clock.Add(2 * time.Hour)
	time.Sleep(1500 * time.Millisecond) // two maintenance passes on the server's own ticker
	var bs server.Page[store.Block]
	e.admin("GET", server.PathAdminBlocks, nil, &bs)
	if len(bs.Items) != 1 || !bs.Items[0].ExpiresAt.IsZero() {
		t.Fatalf("a confirmed block: %+v", bs.Items)
	}
	for _, tc := range []struct {
		name string
		in   server.IncidentRequest
		want int
	}{
		{"no_action", server.IncidentRequest{Identity: reportsID}, 400},
		{"both", server.IncidentRequest{Identity: reportsID, Action: "isolate", Playbook: "x"}, 400},
		{"unknown_action", server.IncidentRequest{Identity: reportsID, Action: "nuke"}, 400},
		{"release_is_not_an_action", server.IncidentRequest{Identity: reportsID, Action: "release"}, 400},
		{"bad_identity", server.IncidentRequest{Identity: "reports", Action: "isolate"}, 400},
		{"the_server", server.IncidentRequest{Identity: "spiffe://example.org/moatless/server", Action: "isolate"}, 400},
		{"block_without_destination", server.IncidentRequest{Identity: reportsID, Action: "block-pair"}, 400},
		{"unknown_playbook", server.IncidentRequest{Identity: reportsID, Playbook: "nope"}, 404},
		{"unknown_finding", server.IncidentRequest{Identity: reportsID, Action: "isolate", Finding: "nope"}, 404},
		{"finding_id_too_long", server.IncidentRequest{Identity: reportsID, Action: "isolate", Finding: strings.Repeat("f", 200)}, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if st, body := e.do(e.client(nil), "POST", server.PathAdminIncidents, e.token, tc.in); st != tc.want {
				t.Fatalf("got %d %s, want %d", st, body, tc.want)
			}
		})
	}
	if st, _ := e.do(e.client(nil), "GET", server.PathAdminIncidents, "", nil); st != 401 {
		t.Fatalf("incidents without a credential: %d", st)
	}
}

func TestPlaybooksVersioned(t *testing.T) {
	e := start(t, "")
	var pv store.PolicyVersion
	e.admin("POST", server.PathAdminPlaybooks, server.PlaybookApplyRequest{Files: []server.PolicyFile{{Name: "c.yaml", Content: containPlaybook}}}, &pv)
	if pv.Version != 1 {
		t.Fatalf("version %d", pv.Version)
	}
	e.admin("DELETE", server.PathAdminPlaybooks+"/contain", nil, &pv)
	var set server.PlaybookSet
	e.admin("GET", server.PathAdminPlaybooks, nil, &set)
	if set.Version != 2 || len(set.Items) != 0 {
		t.Fatalf("after delete: %+v", set)
	}
	e.admin("GET", server.PathAdminPlaybooks+"?version=1", nil, &set)
	if len(set.Items) != 1 || set.Items[0].Name != "contain" {
		t.Fatalf("version 1: %+v", set)
	}
	st, body := e.do(e.client(nil), "POST", server.PathAdminPlaybooks, e.token, server.PlaybookApplyRequest{Files: []server.PolicyFile{{Name: "bad.yaml", Content: "apiVersion: moatless.io/v1alpha1\nkind: Playbook\nmetadata: {name: x}\nspec: {steps: [{action: nuke}]}\n"}}})
	if st != 400 || !strings.Contains(string(body), "bad.yaml") || !strings.Contains(string(body), "spec.steps[0].action") {
		t.Fatalf("bad playbook: %d %s", st, body)
	}
	if st, _ := e.do(e.client(nil), "DELETE", server.PathAdminPlaybooks+"/nope", e.token, nil); st != 404 {
		t.Fatalf("delete unknown: %d", st)
	}
}

// waitFor polls cond until it holds or 10 seconds pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

package server_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/wire"
)

// watchPlaybook fires at 0.85: one high finding (0.75) is not enough, a
// second finding about the same identity is.
const watchPlaybook = `apiVersion: moatless.io/v1alpha1
kind: Playbook
metadata: {name: watch}
spec:
  trigger: {risk: 0.85, identities: ["spiffe://example.org/ns/prod/*"]}
  steps:
  - action: notify
`

func riskOf(t *testing.T, e *env) []detect.IdentityRisk {
	t.Helper()
	var p server.Page[detect.IdentityRisk]
	e.admin("GET", server.PathAdminRisk, nil, &p)
	return p.Items
}

func incidentsOf(t *testing.T, e *env) []detect.Incident {
	t.Helper()
	var p server.Page[detect.Incident]
	e.admin("GET", server.PathAdminIncidents, nil, &p)
	return p.Items
}

// TestRiskAndPlaybooksAcrossReplicas: two replicas on one PostgreSQL
// store answer /risk alike whichever replica's detectors raised the
// findings, a replica restarted with an empty engine still does, and a
// playbook fires once for the identity: on the replica whose finding
// took the stored risk over the trigger, never again on the other.
func TestRiskAndPlaybooksAcrossReplicas(t *testing.T) {
	rs := startReplicas(t, 2)
	a, b := rs[0], rs[1]
	a.admin("POST", server.PathAdminPlaybooks, server.PlaybookApplyRequest{Files: []server.PolicyFile{{Name: "watch.yaml", Content: watchPlaybook}}}, nil)

	// A high probing finding about reports, raised on a.
	orders := a.attest(ordersID)
	a.probe(t, orders)
	ra, rb := riskOf(t, a), riskOf(t, b)
	if len(ra) != 1 || ra[0].Identity != reportsID || ra[0].Risk != 0.75 || len(ra[0].Findings) != 1 {
		t.Fatalf("a's /risk after its finding: %+v", ra)
	}
	if diff := cmp.Diff(ra, rb); diff != "" {
		t.Fatalf("b answers /risk unlike a (-a +b):\n%s", diff)
	}
	if incs := incidentsOf(t, a); len(incs) != 0 {
		t.Fatalf("0.75 is under the trigger, yet: %+v", incs)
	}

	// A second one, raised on b from another sidecar: the stored risk is
	// now 0.85 and b's playbook fires, with both findings.
	b.probe(t, b.attest("spiffe://example.org/ns/prod/sa/payments"))
	incs := incidentsOf(t, a)
	if len(incs) != 1 || incs[0].Playbook != "watch" || len(incs[0].Findings) != 2 {
		t.Fatalf("after the second finding (on b): %+v", incs)
	}
	// A third, on a again (reports, revoked, still knocking): a's own
	// findings now reach the trigger too, yet the finding joins b's
	// incident; no second one opens.
	refused := wire.EdgeRecord{Direction: "inbound", Source: reportsID, Protocol: "http", Decision: "refused", Reason: "revoked", Requests: 3}
	if st, body := a.do(orders.http, "POST", wire.PathRecords, "", a.report(refused)); st != 204 {
		t.Fatalf("report to a: %d %s", st, body)
	}
	incs = incidentsOf(t, b)
	if len(incs) != 1 || len(incs[0].Findings) != 3 {
		t.Fatalf("after the third finding (on a): %+v", incs)
	}
	if n := len(kinds(t, a)[server.KindIncidentOpen]); n != 1 {
		t.Fatalf("%d incident.open records, want 1", n)
	}
	ra, rb = riskOf(t, a), riskOf(t, b)
	if len(ra) != 1 || ra[0].Risk < 0.95 || len(ra[0].Findings) != 3 {
		t.Fatalf("a's /risk after three findings: %+v", ra)
	}
	if diff := cmp.Diff(ra, rb); diff != "" {
		t.Fatalf("b answers /risk unlike a (-a +b):\n%s", diff)
	}

	// a restarts: its engine is empty, the stored findings are not.
	a.stop()
	a = startTB(t, a.dir, nil, a.opts...)
	if diff := cmp.Diff(rb, riskOf(t, a)); diff != "" {
		t.Fatalf("a after a restart answers /risk unlike before (-before +after):\n%s", diff)
	}
}

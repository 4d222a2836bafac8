package server_test

import (
	"fmt"
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

// itemsOf is the first page of an admin listing.
func itemsOf[T any](e *env, path string) []T {
	e.t.Helper()
	var p server.Page[T]
	e.admin("GET", path, nil, &p)
	return p.Items
}

func riskOf(t *testing.T, e *env) []detect.IdentityRisk {
	return itemsOf[detect.IdentityRisk](e, server.PathAdminRisk)
}

func incidentsOf(t *testing.T, e *env) []detect.Incident {
	return itemsOf[detect.Incident](e, server.PathAdminIncidents)
}

// watchedReplicas starts two replicas on one PostgreSQL store with the
// watch playbook applied.
func watchedReplicas(t *testing.T) (a, b *env) {
	rs := startReplicas(t, 2)
	rs[0].admin("POST", server.PathAdminPlaybooks, server.PlaybookApplyRequest{Files: []server.PolicyFile{{Name: "watch.yaml", Content: watchPlaybook}}}, nil)
	return rs[0], rs[1]
}

// TestRiskAndPlaybooksAcrossReplicas: two replicas on one PostgreSQL
// store answer /risk alike whichever replica's detectors raised the
// findings, a replica restarted with an empty engine still does, and a
// playbook fires once for the identity: on the replica whose finding
// took the stored risk over the trigger, never again on the other.
func TestRiskAndPlaybooksAcrossReplicas(t *testing.T) {
	a, b := watchedReplicas(t)

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

	// A second one, raised on b from another sidecar (reports, revoked,
	// still knocking on payments): the stored risk is now 0.85 and b's
	// playbook fires, with both findings.
	refused := wire.EdgeRecord{Direction: "inbound", Source: reportsID, Protocol: "http", Decision: "refused", Reason: "revoked", Requests: 3}
	payments := b.attest("spiffe://example.org/ns/prod/sa/payments")
	if st, body := b.do(payments.http, "POST", wire.PathRecords, "", b.report(refused)); st != 204 {
		t.Fatalf("report to b: %d %s", st, body)
	}
	incs := incidentsOf(t, a)
	if len(incs) != 1 || incs[0].Playbook != "watch" || len(incs[0].Findings) != 2 {
		t.Fatalf("after the second finding (on b): %+v", incs)
	}
	// A third, on a again (reports knocking on orders too): a's own
	// findings now reach the trigger too, yet the finding joins b's
	// incident; no second one opens.
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

// TestFindingMergedAcrossReplicas: one burst of refusals by reports that
// reaches two replicas (orders' sidecar reports to a, payments' to b) is
// one stored finding, whichever replica's detectors saw which part of it
// and however close together: its count is every detection's, its
// severity and evidence the most severe and latest, and the identity's
// risk is that of one finding, which stays under a trigger that two
// findings would cross.
func TestFindingMergedAcrossReplicas(t *testing.T) {
	a, b := watchedReplicas(t)
	orders, payments := a.attest(ordersID), b.attest("spiffe://example.org/ns/prod/sa/payments")

	// 30 refusals seen on a (medium), 120 on b (high).
	few := inboundEdge(reportsID, "GET", "/admin/{*}", "deny", 30)
	few.Reason, few.Status = "no_allow_match", 4
	if st, body := a.do(orders.http, "POST", wire.PathRecords, "", a.report(few)); st != 204 {
		t.Fatalf("report to a: %d %s", st, body)
	}
	b.probe(t, payments)
	check := func(when string, count int) detect.Finding {
		t.Helper()
		fs := itemsOf[detect.Finding](b, server.PathAdminFindings)
		if len(fs) != 1 || fs[0].Detector != detect.DetectorProbing || fs[0].Identity != reportsID || fs[0].Count != count {
			t.Fatalf("%s: stored findings %+v, want one probing finding about reports, count %d", when, fs, count)
		}
		for _, e := range []*env{a, b} {
			if r := riskOf(t, e); len(r) != 1 || r[0].Risk != 0.75 || len(r[0].Findings) != 1 || r[0].Findings[0] != fs[0].ID {
				t.Fatalf("%s: /risk %+v, want 0.75 from %s alone", when, r, fs[0].ID)
			}
		}
		if incs := incidentsOf(t, a); len(incs) != 0 {
			t.Fatalf("%s: one finding (0.75) is under the trigger, yet: %+v", when, incs)
		}
		return fs[0]
	}
	first := check("after a burst seen by both replicas", 2)
	// a opened it, b's detection joined it.
	for name, c := range map[string]struct {
		e    *env
		want map[string]float64
	}{"a": {a, map[string]float64{"opened": 1}}, "b": {b, map[string]float64{"joined": 1}}} {
		for _, outcome := range []string{"opened", "joined", "updated", "error"} {
			if got := c.e.metric(t, `moatless_detect_finding_writes_total{outcome="`+outcome+`"}`); got != c.want[outcome] {
				t.Errorf("%s's finding writes %s: %v, want %v", name, outcome, got, c.want[outcome])
			}
		}
	}
	if first.Severity != detect.High || len(first.Records) != 2 || first.Evidence["refusals_per_minute"] != "120" {
		t.Fatalf("b's detection did not upgrade a's finding: %+v", first)
	}

	// Each replica's engine now follows the stored finding: later
	// detections on either count on it.
	b.probe(t, payments)
	a.probe(t, orders)
	if f := check("after one more detection on each", 4); f.ID != first.ID || !f.Time.Equal(first.Time) {
		t.Fatalf("the finding changed: %s (%v), was %s (%v)", f.ID, f.Time, first.ID, first.Time)
	}

	// Both replicas persisting at the same moment: one row, every count.
	const each = 4
	deny := inboundEdge(reportsID, "GET", "/admin/{*}", "deny", 120)
	deny.Reason, deny.Status = "no_allow_match", 4
	errs := make(chan string, 2*each)
	for _, p := range []struct {
		e *env
		n *node
	}{{a, orders}, {b, payments}} {
		for range each {
			go func() {
				st, body := p.e.do(p.n.http, "POST", wire.PathRecords, "", p.e.report(deny))
				if st != 204 {
					errs <- fmt.Sprintf("report: %d %s", st, body)
					return
				}
				errs <- ""
			}()
		}
	}
	for range 2 * each {
		if msg := <-errs; msg != "" {
			t.Fatal(msg)
		}
	}
	check("after concurrent detections on both", 4+2*each)

	// orders' sidecar moves to b mid-burst (its replica went away): b's
	// detection of what it reports counts on the same finding.
	if st, body := b.do(orders.http, "POST", wire.PathRecords, "", b.report(deny)); st != 204 {
		t.Fatalf("report to b: %d %s", st, body)
	}
	check("after orders' sidecar reported to b", 5+2*each)
}

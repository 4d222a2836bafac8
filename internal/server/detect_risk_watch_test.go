package server_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

// TestRiskSectionOnWatchStream: the risk section is in every first
// update (empty before any finding), follows findings as they are
// raised, is skipped by a resume after it and sent to one from before,
// does not move for a finding that changes no score, and empties once the
// findings leave the risk window.
func TestRiskSectionOnWatchStream(t *testing.T) {
	e := start(t, "")
	n := e.attest(ordersID)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := e.watch(ctx, n)
	first := next(t, ch)
	if first.Risk == nil || len(first.Risk.Scores) != 0 {
		t.Fatalf("first update: risk %+v, want an empty section", first.Risk)
	}
	frontendID := "spiffe://example.org/ns/prod/sa/frontend"
	deny := inboundEdge(frontendID, "GET", "/admin/{*}", "deny", 40)
	deny.Reason, deny.Status = "no_allow_match", 4
	refused := wire.EdgeRecord{Direction: "inbound", Source: reportsID, Protocol: "http", Decision: "refused", Reason: "revoked", Requests: 3}
	if st, body := e.do(n.http, "POST", wire.PathRecords, "", e.report(deny, refused)); st != 204 {
		t.Fatalf("report: %d %s", st, body)
	}
	want := []wire.RiskScore{{SPIFFEID: frontendID, Score: 0.5}, {SPIFFEID: reportsID, Score: 0.75}}
	var raised wire.Update
	for raised.Risk == nil {
		raised = next(t, ch)
	}
	if diff := cmp.Diff(want, raised.Risk.Scores); diff != "" {
		t.Fatalf("risk after the findings (-want +got):\n%s", diff)
	}
	versions := func() store.Versions {
		vs, err := e.srv.Store().Versions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return vs
	}
	riskAt := versions().Sections[store.SectionRisk]

	// The same refusals again fold into the same findings: no score
	// moves, the section keeps its version.
	if st, body := e.do(n.http, "POST", wire.PathRecords, "", e.report(refused)); st != 204 {
		t.Fatalf("report: %d %s", st, body)
	}
	if v := versions().Sections[store.SectionRisk]; v != riskAt {
		t.Errorf("a finding that moved no score bumped the risk section: %d → %d", riskAt, v)
	}
	// A new finding within a second of the last recomputation is
	// pushed by the next maintenance pass.
	paymentsID := "spiffe://example.org/ns/prod/sa/payments"
	burst := inboundEdge(paymentsID, "POST", "/admin/{*}", "deny", 25)
	burst.Reason, burst.Status = "no_allow_match", 4
	if st, body := e.do(n.http, "POST", wire.PathRecords, "", e.report(burst)); st != 204 {
		t.Fatalf("report: %d %s", st, body)
	}
	var third wire.Update
	for third.Risk == nil {
		third = next(t, ch)
	}
	want = append(want[:1], wire.RiskScore{SPIFFEID: paymentsID, Score: 0.5}, want[1])
	if diff := cmp.Diff(want, third.Risk.Scores); diff != "" {
		t.Fatalf("risk after the third identity's finding (-want +got):\n%s", diff)
	}

	resume := func(since uint64) wire.Update {
		rctx, rcancel := context.WithCancel(ctx)
		defer rcancel()
		return next(t, e.watchQuery(rctx, n, "since="+strconv.FormatUint(since, 10)+"&epoch="+first.Epoch))
	}
	if u := resume(third.Version); !u.Resumed || u.Risk != nil {
		t.Errorf("resumed after the risk change: resumed %v, risk %+v; want no risk section", u.Resumed, u.Risk)
	}
	if u := resume(first.Version); !u.Resumed || u.Risk == nil || !cmp.Equal(u.Risk.Scores, want) {
		t.Errorf("resumed before the risk change: resumed %v, risk %+v; want the scores", u.Resumed, u.Risk)
	}
	// A stream from another history (a wrong epoch) gets it whole.
	if u := next(t, e.watchQuery(ctx, n, "since="+strconv.FormatUint(raised.Version, 10)+"&epoch=00")); u.Resumed || u.Risk == nil || len(u.Risk.Scores) != 3 {
		t.Errorf("snapshot for another epoch: resumed %v, risk %+v", u.Resumed, u.Risk)
	}

	// An hour later the findings are out of the risk window: the next
	// detect tick empties the section.
	e.clock.Add(61 * time.Minute)
	deadline := time.Now().Add(15 * time.Second)
	for {
		u := next(t, ch)
		if u.Risk != nil {
			if len(u.Risk.Scores) != 0 {
				t.Fatalf("after the risk window: %+v", u.Risk.Scores)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the risk section was not emptied after the risk window")
		}
	}
}

// TestRiskSectionAcrossReplicas: two replicas on one PostgreSQL store. A
// finding raised on one replica (from a report sent to it) reaches a
// stream on the other, and the other replica's own recomputations agree:
// the section does not flap between the replicas' views.
func TestRiskSectionAcrossReplicas(t *testing.T) {
	rs := startReplicas(t, 2)
	a, b := rs[0], rs[1]

	n := a.attest(ordersID)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := b.watch(ctx, n)
	if first := next(t, ch); first.Risk == nil || len(first.Risk.Scores) != 0 {
		t.Fatalf("first update from b: risk %+v", first.Risk)
	}
	deny := inboundEdge("spiffe://example.org/ns/prod/sa/frontend", "GET", "/admin/{*}", "deny", 40)
	deny.Reason, deny.Status = "no_allow_match", 4
	if st, body := a.do(n.http, "POST", wire.PathRecords, "", a.report(deny)); st != 204 {
		t.Fatalf("report to a: %d %s", st, body)
	}
	var u wire.Update
	for u.Risk == nil {
		u = next(t, ch)
	}
	want := []wire.RiskScore{{SPIFFEID: "spiffe://example.org/ns/prod/sa/frontend", Score: 0.5}}
	if diff := cmp.Diff(want, u.Risk.Scores); diff != "" {
		t.Fatalf("b's stream after a's finding (-want +got):\n%s", diff)
	}
	// b recomputes on its detect ticks (due every 10 s of its clock, on
	// the maintenance loop's next pass): move its clock on and wait for
	// two recomputations. Its engine never saw the report, yet the
	// stored section keeps its version.
	vs, err := b.srv.Store().Versions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const unchanged = `moatless_detect_risk_section_updates_total{outcome="unchanged"}`
	for range 2 {
		seen := metric(t, b, unchanged)
		b.clock.Add(11 * time.Second)
		deadline := time.Now().Add(10 * time.Second)
		for metric(t, b, unchanged) == seen {
			if time.Now().After(deadline) {
				t.Fatal("b did not recompute the risk section")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if got := metric(t, b, "moatless_detect_risk_section_identities"); got != 1 {
		t.Errorf("b's risk section gauge: %v identities, want 1", got)
	}
	after, err := b.srv.Store().Versions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.Sections[store.SectionRisk] != vs.Sections[store.SectionRisk] {
		t.Errorf("b's ticks rewrote the risk section a published: version %d → %d", vs.Sections[store.SectionRisk], after.Sections[store.SectionRisk])
	}
}

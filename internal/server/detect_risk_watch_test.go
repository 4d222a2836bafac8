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

	resume := func(since uint64) wire.Update {
		rctx, rcancel := context.WithCancel(ctx)
		defer rcancel()
		return next(t, e.watchQuery(rctx, n, "since="+strconv.FormatUint(since, 10)+"&epoch="+first.Epoch))
	}
	if u := resume(raised.Version); !u.Resumed || u.Risk != nil {
		t.Errorf("resumed after the risk change: resumed %v, risk %+v; want no risk section", u.Resumed, u.Risk)
	}
	if u := resume(first.Version); !u.Resumed || u.Risk == nil || !cmp.Equal(u.Risk.Scores, want) {
		t.Errorf("resumed before the risk change: resumed %v, risk %+v; want the scores", u.Resumed, u.Risk)
	}
	// A stream from another history (a wrong epoch) gets it whole.
	if u := next(t, e.watchQuery(ctx, n, "since="+strconv.FormatUint(raised.Version, 10)+"&epoch=00")); u.Resumed || u.Risk == nil || len(u.Risk.Scores) != 2 {
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

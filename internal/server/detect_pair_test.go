package server_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

const frontendID = "spiffe://example.org/ns/prod/sa/frontend"

// exfilBytes is what exfilBy reports pulled: above the default 100 MiB a
// minute.
const exfilBytes = 128 << 20

// exfilBy reports, as n's sidecar, src pulling exfilBytes from it in 4
// calls (exfiltration, high).
func (e *env) exfilBy(t *testing.T, n *node, src string) {
	t.Helper()
	in := inboundEdge(src, "GET", "/export", "allow", 4)
	in.RespBytes = exfilBytes
	if st, body := e.do(n.http, "POST", wire.PathRecords, "", e.report(in)); st != 204 {
		t.Fatalf("report: %d %s", st, body)
	}
}

// pulled reports, as n's sidecar (the caller's own), the 4 calls to dst
// and the exfilBytes it got back: its side of what exfilBy reports.
func (e *env) pulled(t *testing.T, n *node, dst string) {
	t.Helper()
	out := wire.EdgeRecord{Direction: "outbound", Destination: dst, Port: 8080, Protocol: "http", Method: "GET", Path: "/export",
		Decision: "allow", Status: 2, Requests: 4, RespBytes: exfilBytes}
	if st, body := e.do(n.http, "POST", wire.PathRecords, "", e.report(out)); st != 204 {
		t.Fatalf("report: %d %s", st, body)
	}
}

// blocked lists the destinations payments is blocked from calling.
func blocked(t *testing.T, e *env) []string {
	t.Helper()
	var bs server.Page[store.Block]
	e.admin("GET", server.PathAdminBlocks, nil, &bs)
	var out []string
	for _, b := range bs.Items {
		if b.Source == paymentsID {
			out = append(out, b.Destination)
		}
	}
	slices.Sort(out)
	return out
}

// TestBlockPairOnlyCorroborated: payments has a corroborated finding
// about its calls to orders (its own records bear out what orders
// reports), and frontend, a node an attacker holds, claims payments
// pulled 128 MiB from it. A playbook's block-pair blocks payments → orders only;
// payments → frontend, on frontend's word alone, is held until a
// corroborated finding names it or an admin confirms. Fails on the parent
// commit: there, frontend's word got payments blocked from calling it.
func TestBlockPairOnlyCorroborated(t *testing.T) {
	const pb = `apiVersion: moatless.io/v1alpha1
kind: Playbook
metadata: {name: pair}
spec:
  trigger: {risk: 0.75, identities: ["spiffe://example.org/ns/prod/*"], witnesses: 3}
  steps:
  - action: notify
  - {action: block-pair, duration: 1h}
`
	for _, tc := range []struct {
		name string
		// then runs after the block-pair ran: an admin's confirm, or
		// payments' own records bearing frontend's claim out.
		then    func(t *testing.T, e *env, inc detect.Incident, payments *node)
		blocked []string
	}{
		{"left_held", nil, []string{ordersID}},
		{"admin_confirms", func(t *testing.T, e *env, inc detect.Incident, _ *node) {
			var conf detect.Incident
			e.admin("POST", server.PathAdminIncidents+"/"+inc.ID+"/confirm", nil, &conf)
			if len(conf.HeldDestinations) != 0 || len(conf.Blocks) != 2 {
				t.Fatalf("confirmed: %+v", conf)
			}
			for _, b := range conf.Blocks {
				if !b.ExpiresAt.IsZero() {
					t.Fatalf("a confirmed block still lapses: %+v", b)
				}
			}
			if last := conf.Steps[len(conf.Steps)-1]; last.Action != "confirm" || last.Actor == "playbook:pair" || !strings.Contains(last.Detail, frontendID) {
				t.Fatalf("confirm step: %+v", last)
			}
		}, []string{frontendID, ordersID}},
		{"borne_out_later", func(t *testing.T, e *env, _ detect.Incident, payments *node) {
			e.pulled(t, payments, frontendID) // payments did pull that much from frontend
		}, []string{frontendID, ordersID}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, "")
			e.admin("POST", server.PathAdminPlaybooks, server.PlaybookApplyRequest{Files: []server.PolicyFile{{Name: "pair.yaml", Content: pb}}}, nil)
			orders, frontend, payments := e.attest(ordersID), e.attest(frontendID), e.attest(paymentsID)

			e.calls(t, payments, ordersID, 120)   // payments' own side of its calls to orders
			e.exfilBy(t, frontend, paymentsID)    // the lie: opens the incident, block-pair held
			e.probeBy(t, orders, paymentsID, 120) // borne out by payments' records: corroborated

			var incs server.Page[detect.Incident]
			e.admin("GET", server.PathAdminIncidents, nil, &incs)
			if len(incs.Items) != 1 {
				t.Fatalf("incidents: %+v", incs.Items)
			}
			inc := incs.Items[0]
			if inc.State != detect.IncidentContained || inc.Uncorroborated() || !slices.Equal(inc.HeldDestinations, []string{frontendID}) {
				t.Fatalf("incident: %+v", inc)
			}
			if got := blocked(t, e); !slices.Equal(got, []string{ordersID}) {
				t.Fatalf("blocked %v, want only orders (frontend's word alone blocked payments → frontend)", got)
			}
			var step detect.StepResult
			for _, s := range inc.Steps {
				if s.Action == detect.ActionBlockPair && s.Outcome == detect.OutcomeDone {
					step = s
				}
			}
			if step.Actor != "playbook:pair" || !strings.Contains(step.Detail, "held (only uncorroborated findings name them): "+paymentsID+" → "+frontendID) {
				t.Fatalf("block-pair step: %+v", step)
			}
			if tc.then != nil {
				tc.then(t, e, inc, payments)
			}
			if got := blocked(t, e); !slices.Equal(got, tc.blocked) {
				t.Fatalf("blocked %v, want %v", got, tc.blocked)
			}
		})
	}
}

// TestDetectorsFilterCorroborated: a playbook that contains on
// exfiltration only. payments has a corroborated probing finding (risk
// 0.75) and, on frontend's word alone, an exfiltration finding: the
// incident opens and notifies, but isolate is held until an
// exfiltration finding is corroborated. Fails on the parent commit:
// there, the uncorroborated exfiltration finding met the filter and
// payments was isolated.
func TestDetectorsFilterCorroborated(t *testing.T) {
	const pb = `apiVersion: moatless.io/v1alpha1
kind: Playbook
metadata: {name: exfil}
spec:
  trigger: {risk: 0.75, detectors: [exfiltration], identities: ["spiffe://example.org/ns/prod/*"], witnesses: 3}
  steps:
  - action: notify
  - action: isolate
`
	e := start(t, "")
	e.admin("POST", server.PathAdminPlaybooks, server.PlaybookApplyRequest{Files: []server.PolicyFile{{Name: "exfil.yaml", Content: pb}}}, nil)
	orders, frontend, payments := e.attest(ordersID), e.attest(frontendID), e.attest(paymentsID)
	e.calls(t, payments, ordersID, 120)
	e.probeBy(t, orders, paymentsID, 120) // corroborated, but probing
	e.exfilBy(t, frontend, paymentsID)    // exfiltration, on frontend's word

	var incs server.Page[detect.Incident]
	e.admin("GET", server.PathAdminIncidents, nil, &incs)
	if len(incs.Items) != 1 {
		t.Fatalf("incidents: %+v", incs.Items)
	}
	inc := incs.Items[0]
	var revs store.RevocationList
	e.admin("GET", server.PathAdminRevocations, nil, &revs)
	if inc.Revoked || len(revs.IDs) != 0 || !inc.Uncorroborated() || inc.Held[0].Action != detect.ActionIsolate {
		t.Fatalf("isolated on an uncorroborated exfiltration finding: %+v, revoked %+v", inc, revs.IDs)
	}
	if !strings.Contains(inc.Corroboration, "no corroborated finding of exfiltration (corroborated: probing)") {
		t.Fatalf("corroboration: %q", inc.Corroboration)
	}
	// The corroborated risk, beside the reported one.
	if inc.CorroboratedRisk == nil || *inc.CorroboratedRisk != 0.75 || inc.Risk <= 0.75 {
		t.Fatalf("risk %v, corroborated %v", inc.Risk, inc.CorroboratedRisk)
	}
	var outcomes []string
	for _, s := range inc.Steps {
		outcomes = append(outcomes, s.Action+":"+s.Outcome)
	}
	if strings.Join(outcomes, " ") != "notify:done isolate:held" {
		t.Fatalf("steps: %v", outcomes)
	}
}

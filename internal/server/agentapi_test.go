package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/proxy"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/wire"
)

// metric returns the value of the sample series (a name with its labels in
// Prometheus' sorted order, e.g. `x_total{endpoint="renew",outcome="denied"}`)
// from the server's /metrics, 0 when absent.
func metric(t *testing.T, e *env, series string) float64 {
	t.Helper()
	st, body := e.do(e.client(nil), "GET", "/metrics", "", nil)
	if st != 200 {
		t.Fatalf("/metrics: %d", st)
	}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", series, err)
			}
			return f
		}
	}
	return 0
}

// lastAudit returns the newest audit record.
func lastAudit(t *testing.T, e *env) audit.Record {
	t.Helper()
	recs, err := audit.List(context.Background(), e.srv.Store(), 0, 1)
	if err != nil || len(recs) != 1 {
		t.Fatalf("audit list: %v %v", recs, err)
	}
	return recs[0]
}

// countAudit counts the records of kind.
func countAudit(t *testing.T, e *env, kind string) int {
	t.Helper()
	recs, err := audit.List(context.Background(), e.srv.Store(), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if r.Kind == kind {
			n++
		}
	}
	return n
}

// TestAgentRefusalsAudited: an agent API call refused for its credential
// (none, a workload SVID, a revoked node, a node SVID that expired on a
// kept-alive connection) is audited as agent.call/denied naming the
// certificate's SPIFFE ID and the reason; past the bound shared with
// anonymous refusals the caller gets 429 and only a metric.
func TestAgentRefusalsAudited(t *testing.T) {
	e := start(t, "")
	n := e.attest("spiffe://example.org/agent/refusals")
	revoked := e.attest("spiffe://example.org/agent/revoked")
	expiring := e.attest("spiffe://example.org/agent/expiring")
	var ent wire.Entry
	e.admin("POST", server.PathAdminEntries, entryReq(n.id, "spiffe://example.org/ns/prod/sa/w", "unix:uid:5"), &ent)
	wkey := newKey(t)
	st, body := e.do(n.http, "POST", wire.PathSignX509, "", wire.SignX509Request{Requests: []wire.X509SVIDRequest{{EntryID: ent.ID, CSR: csr(t, wkey)}}})
	if st != 200 {
		t.Fatalf("sign: %d %s", st, body)
	}
	var signed wire.SignX509Response
	mustJSON(t, body, &signed)
	workload := &node{id: ent.SPIFFEID, key: wkey, svid: signed.SVIDs[0]}
	workload.http = e.client(workload.cert())
	e.admin("POST", server.PathAdminRevocations, server.RevokeRequest{SPIFFEID: revoked.id, Reason: "test"}, nil)
	// A connection opened while the SVID is valid and kept alive past its
	// expiry: the handshake check cannot catch it, the per-request one must.
	if st, body := e.do(expiring.http, "POST", wire.PathAck, "", wire.Ack{Version: 1, Component: "agent"}); st != 204 {
		t.Fatalf("ack: %d %s", st, body)
	}

	tests := []struct {
		name         string
		before       func()
		caller       *node
		method, path string
		body         any
		status       int
		want         string
		actor        string
		reason       string
	}{
		{"no_client_cert_renew", nil, &node{http: e.client(nil)}, "POST", wire.PathRenew, wire.RenewRequest{CSR: csr(t, newKey(t))}, 401, "mutual TLS", "anonymous", "no_client_cert"},
		{"no_client_cert_watch", nil, &node{http: e.client(nil)}, "GET", wire.PathWatch, nil, 401, "mutual TLS", "anonymous", "no_client_cert"},
		{"workload_svid_sign", nil, workload, "POST", wire.PathSignX509, wire.SignX509Request{Requests: []wire.X509SVIDRequest{{EntryID: ent.ID, CSR: csr(t, wkey)}}}, 403, "not an attested node", ent.SPIFFEID, "not_a_node"},
		{"workload_svid_jwt", nil, workload, "POST", wire.PathSignJWT, wire.SignJWTRequest{EntryID: ent.ID, Audience: []string{"a"}}, 403, "not an attested node", ent.SPIFFEID, "not_a_node"},
		{"revoked_node_watch", nil, revoked, "GET", wire.PathWatch, nil, 403, "revoked", revoked.id, "revoked"},
		{"revoked_node_renew", nil, revoked, "POST", wire.PathRenew, wire.RenewRequest{CSR: csr(t, newKey(t))}, 403, "revoked", revoked.id, "revoked"},
		{"expired_node_renew", func() { e.clock.Add(2 * time.Hour) }, expiring, "POST", wire.PathRenew, wire.RenewRequest{CSR: csr(t, newKey(t))}, 401, "expired", expiring.id, "expired"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.before != nil {
				tc.before()
			}
			st, body := e.do(tc.caller.http, tc.method, tc.path, "", tc.body)
			if st != tc.status || !strings.Contains(string(body), tc.want) {
				t.Fatalf("got %d %s, want %d containing %q", st, body, tc.status, tc.want)
			}
			r := lastAudit(t, e)
			if r.Kind != audit.KindAgentCall || r.Outcome != audit.Denied || r.Actor != tc.actor ||
				r.Subject != tc.method+" "+tc.path || r.Details["reason"] != tc.reason || r.Details["remote"] == "" {
				t.Fatalf("audit record: %+v", r)
			}
			if tc.actor != "anonymous" && r.Details["serial"] == "" {
				t.Fatalf("audit record names no serial: %+v", r)
			}
		})
	}

	// The bound is the one anonymous refusals have (burst 200, 50/s): with
	// the clock frozen after a refill, 200 refusals are audited, the rest
	// get 429 and a metric only.
	e.clock.Add(time.Minute)
	before := countAudit(t, e, audit.KindAgentCall)
	codes := map[int]int{}
	plain := e.client(nil)
	for range 230 {
		st, _ := e.do(plain, "POST", wire.PathRenew, "", wire.RenewRequest{CSR: []byte{1}})
		codes[st]++
	}
	if codes[401] != 200 || codes[429] != 30 {
		t.Fatalf("status counts %v, want 200 refusals then 30 rate-limited", codes)
	}
	if got := countAudit(t, e, audit.KindAgentCall) - before; got != 200 {
		t.Fatalf("%d refusals audited, want 200", got)
	}
	if got := metric(t, e, `moatless_agent_requests_total{endpoint="renew",outcome="rate_limited"}`); got != 30 {
		t.Fatalf("rate-limited renewals counted: %v, want 30", got)
	}
	// An anonymous admin refusal now meets the same spent bound.
	if st, _ := e.do(plain, "GET", server.PathAdminEntries, "mla_guess", nil); st != 429 {
		t.Fatalf("anonymous admin refusal after the agent flood: %d, want 429", st)
	}
	if _, err := audit.Verify(context.Background(), e.srv.Store(), audit.VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
}

func mustJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}

// denyEvent is a reported deny as the sidecar sends it.
func denyEvent(path string) wire.AuditEvent {
	return wire.AuditEvent{
		Time: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), Listener: "inbound-http", Source: "spiffe://example.org/ns/prod/sa/orders",
		SourceIP: "10.0.0.7", Destination: "prod:8080", Protocol: "http", Method: "DELETE", Path: path, Decision: "deny",
		Policy: "prod/deny-admin", Rule: 0, Reason: "denied by prod/deny-admin rule 0", ReasonCode: "deny_rule", PolicyVersion: 3,
	}
}

// reportJSON is a report with one event whose JSON is the deny event
// edited by edit (a field set to a raw JSON value, or removed when "").
func reportJSON(t *testing.T, edit map[string]string) string {
	t.Helper()
	b, _ := json.Marshal(denyEvent("/admin"))
	var m map[string]json.RawMessage
	mustJSON(t, b, &m)
	for k, v := range edit {
		if v == "" {
			delete(m, k)
		} else {
			m[k] = json.RawMessage(v)
		}
	}
	out, _ := json.Marshal(map[string]any{"events": []any{m}})
	return string(out)
}

// TestAuditReport: a node reports decisions over mTLS with its node SVID;
// each becomes an audit record whose actor is the node (whatever the body
// says), malformed reports are refused naming the field and write
// nothing, and only node SVIDs may report.
func TestAuditReport(t *testing.T) {
	e := start(t, "")
	n := e.attest("spiffe://example.org/sidecar/payments")

	unauth := denyEvent("")
	unauth.Decision, unauth.Source, unauth.Method, unauth.ReasonCode, unauth.Rule = "unauthenticated", "", "", "invalid_token", -1
	audited := denyEvent("/orders/7")
	audited.Decision, audited.AuditPolicy, audited.Method = "allow", "prod/audit-orders", "GET"
	audited.TraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	poisoned := denyEvent("/x\n2026-01-01 admin.call success\x1b[2J" + strings.Repeat("é", 3000))
	st, body := e.do(n.http, "POST", wire.PathAudit, "", wire.AuditReport{Events: []wire.AuditEvent{denyEvent("/admin"), unauth, audited, poisoned}})
	if st != 204 {
		t.Fatalf("report: %d %s", st, body)
	}
	recs, err := audit.List(context.Background(), e.srv.Store(), 0, 4)
	if err != nil {
		t.Fatal(err)
	}
	// Newest first: poisoned, audited, unauth, deny.
	want := []struct{ kind, outcome, subject string }{
		{audit.KindDecisionDeny, audit.Denied, "spiffe://example.org/ns/prod/sa/orders"},
		{audit.KindDecisionAudit, audit.Success, "spiffe://example.org/ns/prod/sa/orders"},
		{audit.KindDecisionUnauthenticated, audit.Denied, "10.0.0.7"},
		{audit.KindDecisionDeny, audit.Denied, "spiffe://example.org/ns/prod/sa/orders"},
	}
	for i, w := range want {
		r := recs[i]
		if r.Kind != w.kind || r.Outcome != w.outcome || r.Actor != n.id || r.Subject != w.subject || r.Details["remote"] == "" ||
			r.Details["decision_time"] != "2026-01-02T03:04:05.000000006Z" || r.Details["destination"] != "prod:8080" {
			t.Fatalf("record %d: %+v", i, r)
		}
	}
	if d := recs[3].Details; d["path"] != "/admin" || d["method"] != "DELETE" || d["policy"] != "prod/deny-admin" || d["rule"] != "0" ||
		d["reason_code"] != "deny_rule" || d["policy_version"] != "3" || d["source_ip"] != "10.0.0.7" {
		t.Fatalf("deny details: %v", d)
	}
	if recs[2].Details["rule"] != "-1" || recs[2].Details["source"] != "" {
		t.Fatalf("unauthenticated details: %v", recs[2].Details)
	}
	if recs[1].Details["audit_policy"] != "prod/audit-orders" || recs[1].Details["trace_id"] != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("audit details: %v", recs[1].Details)
	}
	// A path from the denied caller is escaped and clipped, never refused.
	p := recs[0].Details["path"]
	if !strings.HasPrefix(p, "/x%0A2026-01-01 admin.call success%1B[2J") || !strings.HasSuffix(p, "…[truncated]") || len(p) > 2048 {
		t.Fatalf("poisoned path stored as %q (%d bytes)", p[:min(len(p), 80)], len(p))
	}

	decisions := func() int {
		return countAudit(t, e, audit.KindDecisionDeny) + countAudit(t, e, audit.KindDecisionUnauthenticated) + countAudit(t, e, audit.KindDecisionAudit)
	}
	before := decisions()
	many := make([]wire.AuditEvent, wire.MaxAuditEvents+1)
	for i := range many {
		many[i] = denyEvent("/")
	}
	bad := []struct {
		name string
		body any
		want string
	}{
		{"actor_in_event", reportJSON(t, map[string]string{"actor": `"spiffe://example.org/moatless/admin"`}), `unknown field \"actor\"`},
		{"reporter_in_report", `{"events":[],"reporter":"spiffe://example.org/x"}`, `unknown field \"reporter\"`},
		{"no_events", `{"events":[]}`, "events: want 1 to 500"},
		{"too_many_events", wire.AuditReport{Events: many}, "events: want 1 to 500"},
		{"body_over_1_MiB", `{"events":[` + strings.Repeat(" ", wire.MaxBodySize) + `]}`, "larger than"},
		{"trailing_data", reportJSON(t, nil) + `{}`, "more than one JSON value"},
		{"wrong_type", reportJSON(t, map[string]string{"rule": `"0"`}), "rule"},
		{"bad_decision", reportJSON(t, map[string]string{"decision": `"maybe"`}), "events[0].decision"},
		{"allow_without_audit_policy", reportJSON(t, map[string]string{"decision": `"allow"`}), "events[0].decision"},
		{"no_time", reportJSON(t, map[string]string{"time": ""}), "events[0].time"},
		{"no_listener", reportJSON(t, map[string]string{"listener": ""}), "events[0].listener"},
		{"listener_control_chars", reportJSON(t, map[string]string{"listener": `"in\nbound"`}), "events[0].listener"},
		{"destination_too_long", reportJSON(t, map[string]string{"destination": `"` + strings.Repeat("d", 257) + `"`}), "events[0].destination"},
		{"source_not_spiffe", reportJSON(t, map[string]string{"source": `"orders"`}), "events[0].source"},
		{"source_ip_bad", reportJSON(t, map[string]string{"source_ip": `"10.0.0.300"`}), "events[0].source_ip"},
		{"protocol_bad", reportJSON(t, map[string]string{"protocol": `"udp"`}), "events[0].protocol"},
		{"reason_code_bad", reportJSON(t, map[string]string{"reason_code": `"Deny Rule"`}), "events[0].reason_code"},
		{"rule_below_minus_one", reportJSON(t, map[string]string{"rule": `-2`}), "events[0].rule"},
		{"trace_id_upper_case", reportJSON(t, map[string]string{"trace_id": `"4BF92F3577B34DA6A3CE929D0E0E4736"`}), "events[0].trace_id"},
		{"trace_id_short", reportJSON(t, map[string]string{"trace_id": `"4bf92f3577b34da6"`}), "events[0].trace_id"},
		{"trace_id_all_zero", reportJSON(t, map[string]string{"trace_id": `"00000000000000000000000000000000"`}), "events[0].trace_id"},
		{"trace_id_with_span", reportJSON(t, map[string]string{"trace_id": `"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"`}), "events[0].trace_id"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			st, body := e.do(n.http, "POST", wire.PathAudit, "", tc.body)
			if st != 400 || !strings.Contains(string(body), tc.want) {
				t.Fatalf("got %d %s, want 400 containing %q", st, body, tc.want)
			}
		})
	}
	if got := decisions(); got != before {
		t.Fatalf("malformed reports wrote %d decision records", got-before)
	}

	// Only node SVIDs report.
	var ent wire.Entry
	e.admin("POST", server.PathAdminEntries, entryReq(n.id, "spiffe://example.org/ns/prod/sa/payments", "unix:uid:9"), &ent)
	wkey := newKey(t)
	st, body = e.do(n.http, "POST", wire.PathSignX509, "", wire.SignX509Request{Requests: []wire.X509SVIDRequest{{EntryID: ent.ID, CSR: csr(t, wkey)}}})
	if st != 200 {
		t.Fatalf("sign: %d %s", st, body)
	}
	var signed wire.SignX509Response
	mustJSON(t, body, &signed)
	workload := &node{key: wkey, svid: signed.SVIDs[0]}
	for _, tc := range []struct {
		name   string
		client *node
		status int
	}{
		{"no_client_cert", &node{http: e.client(nil)}, 401},
		{"workload_svid", &node{http: e.client(workload.cert())}, 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if st, body := e.do(tc.client.http, "POST", wire.PathAudit, "", wire.AuditReport{Events: []wire.AuditEvent{denyEvent("/")}}); st != tc.status {
				t.Fatalf("got %d %s, want %d", st, body, tc.status)
			}
		})
	}
	if got := decisions(); got != before {
		t.Fatalf("refused reporters wrote %d decision records", got-before)
	}
	if _, err := audit.Verify(context.Background(), e.srv.Store(), audit.VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestAuditReportBudget: each node may add audit_report_burst events at
// once and audit_report_rate per second; a report over the budget is
// refused whole with 429 and Retry-After, counted in the metrics, and
// does not touch another node's budget.
func TestAuditReportBudget(t *testing.T) {
	e := start(t, "", func(c *config.Server) { c.AuditReportRate, c.AuditReportBurst = 2, wire.MaxAuditEvents })
	a := e.attest("spiffe://example.org/sidecar/a")
	b := e.attest("spiffe://example.org/sidecar/b")
	report := func(n int) wire.AuditReport {
		r := wire.AuditReport{Events: make([]wire.AuditEvent, n)}
		for i := range r.Events {
			r.Events[i] = denyEvent("/")
		}
		return r
	}
	steps := []struct {
		name    string
		node    *node
		advance time.Duration
		events  int
		status  int
	}{
		{"full_report_fits", a, 0, wire.MaxAuditEvents, 204},
		{"budget_spent", a, 0, 1, 429},
		{"other_node_unaffected", b, 0, 3, 204},
		{"half_a_second_refills_one", a, 500 * time.Millisecond, 1, 204},
		{"refilled_one_is_gone", a, 0, 1, 429},
		{"five_seconds_refill_ten", a, 5 * time.Second, 11, 429},
		{"ten_fit", a, 0, 10, 204},
	}
	recorded, limited := 0, 0
	for _, s := range steps {
		e.clock.Add(s.advance)
		req, _ := http.NewRequest("POST", "https://"+e.addr+wire.PathAudit, bytes.NewReader(mustMarshal(t, report(s.events))))
		resp, err := s.node.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != s.status {
			t.Fatalf("%s: got %d %s, want %d", s.name, resp.StatusCode, body, s.status)
		}
		if s.status == 429 {
			limited += s.events
			if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 {
				t.Fatalf("%s: Retry-After %q", s.name, resp.Header.Get("Retry-After"))
			}
			if !strings.Contains(string(body), s.node.id) {
				t.Fatalf("%s: message does not name the node: %s", s.name, body)
			}
		} else {
			recorded += s.events
		}
	}
	if got := countAudit(t, e, audit.KindDecisionDeny); got != recorded {
		t.Fatalf("%d decision records, want %d", got, recorded)
	}
	for series, want := range map[string]float64{
		`moatless_audit_report_events_total{outcome="recorded"}`:                 float64(recorded),
		`moatless_audit_report_events_total{outcome="rate_limited"}`:             float64(limited),
		`moatless_agent_requests_total{endpoint="audit",outcome="rate_limited"}`: 3,
		`moatless_agent_requests_total{endpoint="audit",outcome="success"}`:      4,
	} {
		if got := metric(t, e, series); got != want {
			t.Fatalf("%s = %v, want %v", series, got, want)
		}
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// nodeIdentity is a test node's SVID and bundle as a proxy.Identity.
type nodeIdentity struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

func (n nodeIdentity) GetX509SVID() (*x509svid.SVID, error) { return n.svid, nil }
func (n nodeIdentity) GetX509BundleForTrustDomain(spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return n.bundle, nil
}

// TestAuditReportFromSidecarClient: the sidecar's own reporter
// (proxy.ServerAudit, as "moatless sidecar" runs it in join-token mode)
// delivers its decisions into the audit log under the node's identity.
func TestAuditReportFromSidecarClient(t *testing.T) {
	e := start(t, "")
	n := e.attest("spiffe://example.org/sidecar/reporter")
	var b wire.Bundle
	e.admin("GET", server.PathAdminBundle, nil, &b)
	xb, _ := bundles(t, &b)
	var certs []*x509.Certificate
	for _, der := range n.svid.CertChain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	// A replica nobody answers on: reports move on to the live one.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	for _, tc := range []struct {
		name  string
		addr  string
		addrs []string
	}{
		{"one_server", e.addr, nil},
		{"first_replica_down", "", []string{deadAddr, e.addr}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := &proxy.ServerAudit{
				ServerAddr:  tc.addr,
				ServerAddrs: tc.addrs,
				Identity:    nodeIdentity{svid: &x509svid.SVID{ID: spiffeid.RequireFromString(n.id), Certificates: certs, PrivateKey: n.key}, bundle: xb},
				ServerRoots: func() *x509.CertPool { return e.pool },
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { rep.Run(ctx); close(done) }()
			defer func() { cancel(); <-done }()
			for i := range 3 {
				rep.Record(ctx, proxy.DecisionEvent{Time: time.Now(), Listener: "inbound", Source: "spiffe://example.org/ns/prod/sa/orders", SourceIP: "127.0.0.1",
					Destination: "prod:8080", Protocol: "http", Method: "GET", Path: fmt.Sprintf("/admin/%s/%d", tc.name, i), Decision: "deny",
					Policy: "prod/deny-admin", Rule: 0, Reason: "denied", ReasonCode: proxy.ReasonDenyRule, PolicyVersion: 1})
			}
			deadline := time.Now().Add(10 * time.Second)
			for rep.Sent() < 3 {
				if time.Now().After(deadline) || rep.Dropped() > 0 {
					t.Fatalf("sent %d, dropped %d", rep.Sent(), rep.Dropped())
				}
				time.Sleep(10 * time.Millisecond)
			}
			recs, _ := audit.List(context.Background(), e.srv.Store(), 0, 3)
			for _, r := range recs {
				if r.Kind != audit.KindDecisionDeny || r.Actor != n.id || !strings.HasPrefix(r.Details["path"], "/admin/"+tc.name+"/") {
					t.Fatalf("record: %+v", r)
				}
			}
		})
	}
}

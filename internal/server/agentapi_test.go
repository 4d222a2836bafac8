package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/audit"
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

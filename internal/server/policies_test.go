package server_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

const allowOrders = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: payments-allow-orders
  namespace: prod
spec:
  selector:
    matchLabels:
      app: payments
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["moatless.local/ns/prod/sa/orders"]
    to:
    - operation:
        methods: ["POST"]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: prod
spec:
  mtls:
    mode: STRICT
`

func apply(e *env, content string, dryRun bool) (int, server.PolicyChangeResult, string) {
	st, body := e.do(e.client(nil), "POST", server.PathAdminPolicies, e.token,
		server.PolicyApplyRequest{Files: []server.PolicyFile{{Name: "p.yaml", Content: content}}, DryRun: dryRun})
	var res server.PolicyChangeResult
	json.Unmarshal(body, &res)
	return st, res, string(body)
}

// TestPolicyStore: apply, get, re-apply, delete, history, rollback; each
// change is a new version pushed on the watch stream, acknowledged, and
// shown by the status endpoint.
func TestPolicyStore(t *testing.T) {
	e := start(t, "")
	n := e.attest("spiffe://example.org/sidecar/payments")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := e.watch(ctx, n)
	first := next(t, ch)
	if first.Policies == nil || first.Policies.Version != 0 || len(first.Policies.Documents) != 0 {
		t.Fatalf("first update policies: %+v", first.Policies)
	}

	// A dry run reports and writes nothing.
	st, res, body := apply(e, allowOrders, true)
	if st != 200 || !res.DryRun || len(res.Changes) != 2 || res.Version != 0 {
		t.Fatalf("dry run: %d %s", st, body)
	}
	st, res, body = apply(e, allowOrders, false)
	if st != 200 || res.Version != 1 || len(res.Changes) != 2 {
		t.Fatalf("apply: %d %s", st, body)
	}
	u := next(t, ch)
	if u.Policies == nil || u.Policies.Version != 1 || len(u.Policies.Documents) != 2 || u.Entries != nil {
		t.Fatalf("policy update: %+v", u)
	}
	// Re-applying the same documents is not a new version.
	if st, res, body = apply(e, allowOrders, false); st != 200 || res.Version != 1 || len(res.Changes) != 0 {
		t.Fatalf("re-apply: %d %s", st, body)
	}
	// Ack the version; status shows convergence.
	if st, body := e.do(n.http, "POST", wire.PathAck, "", wire.Ack{Version: u.Version, Component: "sidecar", PolicyVersion: 1}); st != 204 {
		t.Fatalf("ack: %d %s", st, body)
	}
	var status server.PolicyStatus
	e.admin("GET", server.PathAdminPolicyStatus, nil, &status)
	if status.Version != 1 || !status.Converged || status.Connected != 1 || status.Nodes[0].PolicyVersion != 1 {
		t.Fatalf("status: %+v", status)
	}

	changed := strings.Replace(allowOrders, `methods: ["POST"]`, `methods: ["POST", "GET"]`, 1)
	if st, res, body = apply(e, changed, false); st != 200 || res.Version != 2 || len(res.Changes) != 1 || res.Changes[0].Op != "update" {
		t.Fatalf("update: %d %s", st, body)
	}
	e.admin("GET", server.PathAdminPolicyStatus, nil, &status)
	if status.Converged || status.AtVersion != 0 {
		t.Fatalf("status before the node acked version 2: %+v", status)
	}
	var del server.PolicyChangeResult
	e.admin("POST", server.PathAdminPoliciesDelete, server.PolicyDeleteRequest{Objects: []store.PolicyRef{{Kind: "PeerAuthentication", Namespace: "prod", Name: "default"}}}, &del)
	if del.Version != 3 || del.Changes[0].Op != "delete" {
		t.Fatalf("delete: %+v", del)
	}
	var set server.PolicySetResponse
	e.admin("GET", server.PathAdminPolicies, nil, &set)
	if set.Version != 3 || len(set.Documents) != 1 || !strings.Contains(string(set.Documents[0]), `"GET"`) {
		t.Fatalf("current set: %+v", set)
	}
	e.admin("GET", server.PathAdminPolicies+"?version=1", nil, &set)
	if set.Version != 1 || len(set.Documents) != 2 || strings.Contains(string(set.Documents[0]), `"GET"`) {
		t.Fatalf("set at version 1: %+v", set)
	}
	var rb server.PolicyChangeResult
	e.admin("POST", server.PathAdminPolicyRollback, server.PolicyRollbackRequest{Version: 1}, &rb)
	if rb.Version != 4 || len(rb.Changes) != 2 {
		t.Fatalf("rollback: %+v", rb)
	}
	e.admin("GET", server.PathAdminPolicies, nil, &set)
	var v1 server.PolicySetResponse
	e.admin("GET", server.PathAdminPolicies+"?version=1", nil, &v1)
	if len(set.Documents) != 2 || string(set.Documents[0]) != string(v1.Documents[0]) || string(set.Documents[1]) != string(v1.Documents[1]) {
		t.Fatal("rollback did not restore version 1's set")
	}
	var hist []store.PolicyVersion
	e.admin("GET", server.PathAdminPolicyHistory, nil, &hist)
	if len(hist) != 4 || hist[0].Action != "rollback" || hist[0].SourceVersion != 1 || hist[0].Actor != "admin-token" {
		t.Fatalf("history: %+v", hist)
	}
	// The stream saw every version, in order.
	last := uint64(1)
	for last < 4 {
		u := next(t, ch)
		if u.Policies == nil {
			continue
		}
		if u.Policies.Version <= last {
			t.Fatalf("policy version went %d -> %d", last, u.Policies.Version)
		}
		last = u.Policies.Version
	}
	recs, _ := audit.List(context.Background(), e.srv.Store(), 0, 1000)
	kinds := map[string]int{}
	for _, r := range recs {
		kinds[r.Kind]++
	}
	if kinds[audit.KindPolicyApply] != 2 || kinds[audit.KindPolicyDelete] != 1 || kinds[audit.KindPolicyRollback] != 1 {
		t.Fatalf("audited policy changes: %v", kinds)
	}
}

// TestPolicyApplyRejects: bad policies are refused with the document and
// line, and nothing is written.
func TestPolicyApplyRejects(t *testing.T) {
	e := start(t, "")
	if st, _, body := apply(e, allowOrders, false); st != 200 {
		t.Fatal(body)
	}
	tests := []struct {
		name, content, want string
	}{
		{"unknown_kind", "apiVersion: security.istio.io/v1\nkind: Sidecar\nmetadata: {name: x}\nspec: {}\n", "Sidecar"},
		{"unknown_field_with_line", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: prod}\nspec:\n  rules:\n  - from:\n    - source:\n        principal: [\"a\"]\n", "line"},
		{"unknown_field_named", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: prod}\nspec:\n  actionn: DENY\n", "actionn"},
		{"bad_yaml", "kind: [", "document 1"},
		{"empty", "---\n---\n", "no policy documents"},
		{"duplicate_in_input", allowOrders + "---\n" + strings.SplitN(allowOrders, "---\n", 2)[0], "payments-allow-orders"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, _, body := apply(e, tc.content, false)
			if st != 400 || !strings.Contains(body, tc.want) {
				t.Fatalf("got %d %s, want 400 containing %q", st, body, tc.want)
			}
		})
	}
	for _, tc := range []struct{ name, method, path, body, want string }{
		{"apply_no_files", "POST", server.PathAdminPolicies, `{"files":[]}`, "files"},
		{"apply_unknown_field", "POST", server.PathAdminPolicies, `{"files":[{"content":"x"}],"force":true}`, "force"},
		{"delete_bad_kind", "POST", server.PathAdminPoliciesDelete, `{"objects":[{"kind":"Pod","namespace":"prod","name":"x"}]}`, "kind"},
		{"delete_missing", "POST", server.PathAdminPoliciesDelete, `{"objects":[{"kind":"AuthorizationPolicy","namespace":"prod","name":"nope"}]}`, "not in force"},
		{"rollback_zero", "POST", server.PathAdminPolicyRollback, `{"version":0}`, "version"},
		{"rollback_future", "POST", server.PathAdminPolicyRollback, `{"version":99}`, "latest is 1"},
		{"get_bad_version", "GET", server.PathAdminPolicies + "?version=x", "", "version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, body := e.do(e.client(nil), tc.method, tc.path, e.token, tc.body)
			if st/100 != 4 || !strings.Contains(string(body), tc.want) {
				t.Fatalf("got %d %s, want 4xx containing %q", st, body, tc.want)
			}
		})
	}
	var hist []store.PolicyVersion
	e.admin("GET", server.PathAdminPolicyHistory, nil, &hist)
	if len(hist) != 1 {
		t.Fatalf("bad input created versions: %+v", hist)
	}
}

// TestPolicyStatusCountsEnforcers: only nodes that enforce policy
// (sidecars, gateways, and nodes that have not said what they are yet)
// count toward convergence; an agent, which receives policies but enforces
// none, is listed apart and never holds convergence back.
func TestPolicyStatusCountsEnforcers(t *testing.T) {
	e := start(t, "")
	if st, _, body := apply(e, allowOrders, false); st != 200 {
		t.Fatal(body)
	}
	ack := func(n *node, component string, policyVersion uint64) {
		t.Helper()
		if st, body := e.do(n.http, "POST", wire.PathAck, "", wire.Ack{Version: 1, Component: component, PolicyVersion: policyVersion}); st != 204 {
			t.Fatalf("ack: %d %s", st, body)
		}
	}
	const sidecarID, agentID, gatewayID = "spiffe://example.org/sidecar/payments", "spiffe://example.org/agent/node1", "spiffe://example.org/gateway/edge"
	sidecar, agent := e.attest(sidecarID), e.attest(agentID)
	var gateway *node
	steps := []struct {
		name                 string
		do                   func()
		converged            bool
		connected, atVersion int
		nodes, notEnforcing  []string
	}{
		{"unacknowledged_nodes_count", func() {}, false, 2, 0,
			[]string{sidecarID, agentID}, nil},
		{"agent_on_old_version_is_not_counted", func() { ack(sidecar, "sidecar", 1); ack(agent, "agent", 0) }, true, 1, 1,
			[]string{sidecarID}, []string{agentID}},
		{"new_node_holds_convergence_until_it_acks", func() { gateway = e.attest(gatewayID) }, false, 2, 1,
			[]string{sidecarID, gatewayID}, []string{agentID}},
		{"gateway_on_old_version_counts", func() { ack(gateway, "gateway", 0) }, false, 2, 1,
			[]string{sidecarID, gatewayID}, []string{agentID}},
		{"gateway_current", func() { ack(gateway, "gateway", 1) }, true, 2, 2,
			[]string{sidecarID, gatewayID}, []string{agentID}},
	}
	ids := func(ns []server.PolicyNodeStatus) []string {
		var out []string
		for _, n := range ns {
			out = append(out, n.SPIFFEID)
		}
		slices.Sort(out)
		return out
	}
	for _, s := range steps {
		s.do()
		var st server.PolicyStatus
		e.admin("GET", server.PathAdminPolicyStatus, nil, &st)
		slices.Sort(s.nodes)
		slices.Sort(s.notEnforcing)
		if st.Version != 1 || st.Converged != s.converged || st.Connected != s.connected || st.AtVersion != s.atVersion ||
			!slices.Equal(ids(st.Nodes), s.nodes) || !slices.Equal(ids(st.NotEnforcing), s.notEnforcing) {
			t.Fatalf("%s: status %+v", s.name, st)
		}
	}
}

// raDoc is a RequestAuthentication prod/NAME with the given jwtRules YAML
// (indented as list items under jwtRules).
func raDoc(name, rules string) string {
	return "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: " + name + "\n  namespace: prod\nspec:\n  jwtRules:\n" + rules
}

const goodRule = "  - issuer: https://issuer.example.com\n    jwksUri: https://issuer.example.com/jwks\n"

// TestPolicyApplyValidatesJWTRules: RequestAuthentication rules go through
// the JWT verifier's own validation (authn.ValidateRule) at apply, so a rule
// the sidecar could not enforce is refused naming the document and field,
// and nothing is written.
func TestPolicyApplyValidatesJWTRules(t *testing.T) {
	e := start(t, "")
	tests := []struct {
		name, content string
		want          []string
	}{
		{"jwks_uri_plain_http", raDoc("jwt", "  - issuer: https://issuer.example.com\n    jwksUri: http://issuer.example.com/jwks\n"),
			[]string{"p.yaml: document 1 (RequestAuthentication prod/jwt), line 1: spec.jwtRules[0]:", "jwksUri"}},
		{"issuer_not_discoverable", raDoc("jwt", "  - issuer: orders\n"),
			[]string{"spec.jwtRules[0]:", "discovery"}},
		{"inline_jwks_without_keys", raDoc("jwt", "  - issuer: https://issuer.example.com\n    jwks: '{\"keys\": []}'\n"),
			[]string{"spec.jwtRules[0]:", "jwks"}},
		{"timeout_too_long", raDoc("jwt", goodRule+"    timeout: 600s\n"),
			[]string{"spec.jwtRules[0]:", "timeout"}},
		{"second_rule_of_second_document", raDoc("jwt", goodRule) + "---\n" + raDoc("jwt2", goodRule+"  - issuer: https://other.example.com\n    jwksUri: http://other.example.com/jwks\n"),
			[]string{"document 2 (RequestAuthentication prod/jwt2), line 11: spec.jwtRules[1]:", "jwksUri"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, dryRun := range []bool{true, false} {
				st, _, body := apply(e, tc.content, dryRun)
				if st != 400 {
					t.Fatalf("dry run %v: got %d %s, want 400", dryRun, st, body)
				}
				for _, w := range tc.want {
					if !strings.Contains(body, w) {
						t.Fatalf("dry run %v: %s does not contain %q", dryRun, body, w)
					}
				}
			}
		})
	}
	var set server.PolicySetResponse
	e.admin("GET", server.PathAdminPolicies, nil, &set)
	if set.Version != 0 || len(set.Documents) != 0 {
		t.Fatalf("refused rules wrote policies: %+v", set)
	}
	if st, res, body := apply(e, raDoc("jwt", goodRule), false); st != 200 || res.Version != 1 {
		t.Fatalf("a valid rule: %d %s", st, body)
	}

	// A version stored before this check (written here straight to the
	// store) cannot be rolled back to.
	docs, err := policy.ParseSource("old.yaml", strings.NewReader(raDoc("jwt", "  - issuer: orders\n")))
	if err != nil {
		t.Fatal(err)
	}
	db := e.srv.Store()
	err = db.Tx(context.Background(), func(tx *sql.Tx) error {
		_, err := db.WritePolicies(context.Background(), tx, "test", "apply", 0,
			[]store.PolicyWrite{{PolicyRef: store.PolicyRef{Kind: docs[0].Kind, Namespace: docs[0].Namespace, Name: docs[0].Name}, Raw: docs[0].Raw}}, time.Now())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if st, res, body := apply(e, raDoc("jwt", goodRule), false); st != 200 || res.Version != 3 {
		t.Fatalf("re-apply the valid rule: %d %s", st, body)
	}
	st, body := e.do(e.client(nil), "POST", server.PathAdminPolicyRollback, e.token, server.PolicyRollbackRequest{Version: 2})
	if st != 400 || !strings.Contains(string(body), "version 2 no longer validates") || !strings.Contains(string(body), "spec.jwtRules[0]") {
		t.Fatalf("rollback to a version with an invalid rule: %d %s", st, body)
	}
	e.admin("GET", server.PathAdminPolicies, nil, &set)
	if set.Version != 3 {
		t.Fatalf("a refused rollback wrote version %d", set.Version)
	}
}

// TestConnectedSameInBothViews: the node list and the policy status agree
// on whether a node is connected. A node whose watch stream is on another
// replica is seen here only through last_seen, which a stream writes once
// per 30 s (the touch interval); the policy status used a window of three
// heartbeats and showed such a node as disconnected for most of each
// interval while the node list showed it connected.
func TestConnectedSameInBothViews(t *testing.T) {
	e := start(t, "")
	const id = "spiffe://example.org/sidecar/payments"
	e.attest(id) // last seen now; no watch stream open on this replica
	for _, tc := range []struct {
		name      string
		after     time.Duration
		connected bool
	}{
		{"seen_20s_ago", 20 * time.Second, true},
		{"seen_past_the_touch_window", 11 * time.Second, false}, // 31 s
	} {
		e.clock.Add(tc.after)
		var nodes []server.NodeStatus
		e.admin("GET", server.PathAdminNodes, nil, &nodes)
		var st server.PolicyStatus
		e.admin("GET", server.PathAdminPolicyStatus, nil, &st)
		if len(nodes) != 1 || len(st.Nodes) != 1 || nodes[0].SPIFFEID != id || st.Nodes[0].SPIFFEID != id {
			t.Fatalf("%s: nodes %+v, policy status %+v", tc.name, nodes, st)
		}
		if nodes[0].Connected != tc.connected || st.Nodes[0].Connected != tc.connected {
			t.Fatalf("%s: node list connected=%v, policy status connected=%v, want %v",
				tc.name, nodes[0].Connected, st.Nodes[0].Connected, tc.connected)
		}
	}
}

// TestConcurrentRollbacks: 24 rollbacks at once, on SQLite and on
// PostgreSQL, each answer within the client's 30 s, none waits for
// ever. A rollback read the version it goes back to through the store's
// pool from inside the write's transaction, which holds a connection and
// the policy lock: with as many rollbacks as the pool has connections,
// each held one and waited for another. Fails on the parent on
// PostgreSQL (the rollbacks time out).
func TestConcurrentRollbacks(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start func(t *testing.T) *env
	}{
		{"sqlite", func(t *testing.T) *env { return start(t, "") }},
		{"postgres", func(t *testing.T) *env { return startReplicas(t, 1)[0] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := tc.start(t)
			if st, _, body := apply(e, allowOrders, false); st != 200 {
				t.Fatalf("apply: %d %s", st, body)
			}
			if st, _, body := apply(e, strings.Replace(allowOrders, `"GET"`, `"POST"`, 1), false); st != 200 {
				t.Fatalf("apply: %d %s", st, body)
			}
			c := e.client(nil)
			body, _ := json.Marshal(server.PolicyRollbackRequest{Version: 1})
			errs := make([]error, 24)
			var wg sync.WaitGroup
			for i := range errs {
				wg.Go(func() {
					req, _ := http.NewRequest("POST", "https://"+e.addr+server.PathAdminPolicyRollback, bytes.NewReader(body))
					req.Header.Set("Authorization", "Bearer "+e.token)
					req.Header.Set("Content-Type", "application/json")
					resp, err := c.Do(req)
					if err != nil {
						errs[i] = err
						return
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						errs[i] = fmt.Errorf("%d %s", resp.StatusCode, b)
					}
				})
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("rollback %d of %d: %v", i, len(errs), err)
				}
			}
		})
	}
}

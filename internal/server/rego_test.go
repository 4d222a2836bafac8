package server_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store"
)

const (
	authzModule = `package microservices.authz
import future.keywords.if
import future.keywords.in

default allow = false
allow if {
  input.user.role in ["admin", "user"]
  input.resource.owner == input.user.id
  input.resource.sensitivity_level <= user_clearance_level
}
user_clearance_level := data.clearance[input.user.id]
`
	recordsProvider = `apiVersion: moatless.io/v1
kind: RegoProvider
metadata: {name: records-authz}
spec:
  query: data.microservices.authz.allow
  input: {user.id: auth.claims.sub, user.role: auth.claims.role, resource.owner: attributes.owner, resource.sensitivity_level: attributes.level}
  routes:
  - path: "/records/{owner}/{id}"
    attributes:
      owner: {segment: owner}
      level: {header: x-sensitivity-level, as: number}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: records-abac, namespace: prod}
spec:
  selector: {matchLabels: {app: records}}
  action: CUSTOM
  provider: {name: records-authz}
  rules: [{}]
`
)

func applyFiles(e *env, files ...server.PolicyFile) (int, server.PolicyChangeResult, string) {
	st, body := e.do(e.client(nil), "POST", server.PathAdminPolicies, e.token, server.PolicyApplyRequest{Files: files})
	var res server.PolicyChangeResult
	json.Unmarshal(body, &res)
	return st, res, string(body)
}

// TestRegoPolicyStore: Rego modules and data documents are applied,
// versioned, pushed on the watch stream with the documents, rolled back
// like them; a module that does not compile is refused with OPA's error
// and line and the version in force stays.
func TestRegoPolicyStore(t *testing.T) {
	e := start(t, "")
	n := e.attest("spiffe://example.org/sidecar/records")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := e.watch(ctx, n)
	next(t, ch)

	st, res, body := applyFiles(e,
		server.PolicyFile{Name: "policies/authz.rego", Content: authzModule},
		server.PolicyFile{Name: "policies/data.json", Content: `{"clearance": {"alice": 3, "bob": 1}, "owners": {"r1": "alice"}}`},
		server.PolicyFile{Name: "policies/providers.yaml", Content: recordsProvider})
	if st != 200 || res.Version != 1 || len(res.Changes) != 5 {
		t.Fatalf("apply: %d %s", st, body)
	}
	u := next(t, ch)
	ps := u.Policies
	if ps == nil || ps.Version != 1 || len(ps.Documents) != 2 || len(ps.Modules) != 1 || ps.Modules[0].ID != "authz.rego" ||
		ps.Modules[0].Source != authzModule || len(ps.Data) != 2 || ps.Data[0].Key != "clearance" || string(ps.Data[0].Value) != `{"alice":3,"bob":1}` {
		t.Fatalf("pushed set: %+v", ps)
	}
	// What the sidecar compiles from the stream decides as policy check does.
	set, err := policy.FromWire(ps, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	decide := func(set *policy.Set, sub, path, level string) policy.Outcome {
		r := &policy.Request{Protocol: policy.HTTP, Method: "GET", Path: path,
			Headers:     map[string][]string{"X-Sensitivity-Level": {level}},
			Destination: policy.Destination{Namespace: "prod", Labels: map[string]string{"app": "records"}, Port: 8080},
			Auth:        &policy.Auth{Principal: "iss/" + sub, Claims: map[string]any{"sub": sub, "role": "user"}}}
		return set.Decide(r).Outcome
	}
	if decide(set, "alice", "/records/alice/1", "3") != policy.Allow || decide(set, "bob", "/records/bob/1", "2") != policy.Deny {
		t.Fatal("version 1 decides wrongly")
	}

	// A data update is a new version; bob's clearance reaches the stream.
	st, res, body = applyFiles(e, server.PolicyFile{Name: "data.yaml", Content: "clearance: {alice: 3, bob: 2}\n"})
	if st != 200 || res.Version != 2 || len(res.Changes) != 1 || res.Changes[0].Kind != policy.KindRegoData || res.Changes[0].Name != "clearance" || res.Changes[0].Op != "update" {
		t.Fatalf("data update: %d %s", st, body)
	}
	u = next(t, ch)
	set2, err := policy.FromWire(u.Policies, policy.Options{})
	if err != nil || decide(set2, "bob", "/records/bob/1", "2") != policy.Allow || len(u.Policies.Data) != 2 {
		t.Fatalf("version 2: %v %+v", err, u.Policies)
	}

	// A module that does not compile is refused with OPA's error and
	// line; nothing is written.
	broken := strings.Replace(authzModule, "input.resource.owner == input.user.id", "input.resource.owner == = input.user.id", 1)
	st, _, body = applyFiles(e, server.PolicyFile{Name: "authz.rego", Content: broken})
	if st != 400 || !strings.Contains(body, "authz.rego:8") || !strings.Contains(body, "rego_parse_error") {
		t.Fatalf("broken module: %d %s", st, body)
	}
	// So is one that calls http.send, and data that conflicts with a package.
	st, _, body = applyFiles(e, server.PolicyFile{Name: "net.rego", Content: "package net\nimport rego.v1\nallow if http.send({\"method\": \"GET\", \"url\": \"http://127.0.0.1:1\"})\n"})
	if st != 400 || !strings.Contains(body, "net.rego:3") || !strings.Contains(body, "http.send") {
		t.Fatalf("http.send: %d %s", st, body)
	}
	st, _, body = applyFiles(e, server.PolicyFile{Name: "data.json", Content: `{"microservices": {}}`})
	if st != 400 || !strings.Contains(body, "conflicts with package data.microservices.authz") {
		t.Fatalf("conflicting data: %d %s", st, body)
	}
	var cur server.PolicySetResponse
	e.admin("GET", server.PathAdminPolicies, nil, &cur)
	if cur.Version != 2 || len(cur.Modules) != 1 || cur.Modules[0].Source != authzModule {
		t.Fatalf("after refusals: %+v", cur)
	}

	// Deleting a data document, then rolling back to version 1.
	var del server.PolicyChangeResult
	e.admin("POST", server.PathAdminPoliciesDelete, server.PolicyDeleteRequest{Objects: []store.PolicyRef{{Kind: policy.KindRegoData, Name: "owners"}}}, &del)
	if del.Version != 3 || len(del.Changes) != 1 || del.Changes[0].Op != "delete" {
		t.Fatalf("delete: %+v", del)
	}
	u = next(t, ch)
	if len(u.Policies.Data) != 1 {
		t.Fatalf("after delete: %+v", u.Policies.Data)
	}
	var rb server.PolicyChangeResult
	e.admin("POST", server.PathAdminPolicyRollback, server.PolicyRollbackRequest{Version: 1}, &rb)
	if rb.Version != 4 || len(rb.Changes) != 2 {
		t.Fatalf("rollback: %+v", rb)
	}
	u = next(t, ch)
	set4, err := policy.FromWire(u.Policies, policy.Options{})
	if err != nil || decide(set4, "bob", "/records/bob/1", "2") != policy.Deny || len(u.Policies.Data) != 2 {
		t.Fatalf("after rollback: %v %+v", err, u.Policies)
	}
	var hist []store.PolicyVersion
	e.admin("GET", server.PathAdminPolicyHistory, nil, &hist)
	if len(hist) != 4 || hist[0].Action != "rollback" || hist[0].SourceVersion != 1 {
		t.Fatalf("history: %+v", hist)
	}

	// A namespace on a Rego kind is refused.
	st, raw := e.do(e.client(nil), "POST", server.PathAdminPoliciesDelete, e.token,
		server.PolicyDeleteRequest{Objects: []store.PolicyRef{{Kind: policy.KindRegoModule, Namespace: "prod", Name: "authz.rego"}}})
	if st != 400 || !strings.Contains(string(raw), "has no namespace") {
		t.Fatalf("namespaced module delete: %d %s", st, raw)
	}
}

//go:build !norego

package policy

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/moatless/moatless/internal/policy/regoengine"
	"github.com/moatless/moatless/internal/wire"
)

func TestRegoExamplePolicy(t *testing.T) {
	s := regoBundle(t, nil)
	records := dst("prod", "app", "records")
	user := func(sub, role string) reqOpt {
		return auth(jwt("https://idp.example", sub, map[string]any{"role": role}))
	}
	cases := []struct {
		name   string
		opts   []reqOpt
		want   Outcome
		reason string
	}{
		{"owner_in_hours", []reqOpt{user("alice", "user"), path("/records/alice/7"), header("X-Sensitivity-Level", "2"), atTime(at(10, 30))}, Allow, ""},
		{"owner_at_nine", []reqOpt{user("alice", "user"), path("/records/alice/7"), header("X-Sensitivity-Level", "3"), atTime(at(9, 0))}, Allow, ""},
		{"owner_at_five_past_five", []reqOpt{user("alice", "user"), path("/records/alice/7"), header("X-Sensitivity-Level", "3"), atTime(at(17, 5))}, Allow, ""},
		{"owner_out_of_hours", []reqOpt{user("alice", "user"), path("/records/alice/7"), header("X-Sensitivity-Level", "2"), atTime(at(18, 0))}, Deny, "is false"},
		{"owner_before_hours", []reqOpt{user("alice", "admin"), path("/records/alice/7"), header("X-Sensitivity-Level", "2"), atTime(at(8, 59))}, Deny, "is false"},
		{"above_clearance", []reqOpt{user("bob", "user"), path("/records/bob/1"), header("X-Sensitivity-Level", "2"), atTime(at(12, 0))}, Deny, "is false"},
		{"non_owner", []reqOpt{user("carol", "admin"), path("/records/alice/7"), header("X-Sensitivity-Level", "1"), atTime(at(12, 0))}, Deny, "is false"},
		{"unknown_role", []reqOpt{user("alice", "guest"), path("/records/alice/7"), header("X-Sensitivity-Level", "1"), atTime(at(12, 0))}, Deny, ""},
		{"no_token", []reqOpt{path("/records/alice/7"), header("X-Sensitivity-Level", "1"), atTime(at(12, 0))}, Deny, ""},
		{"no_sensitivity_header", []reqOpt{user("alice", "user"), path("/records/alice/7"), atTime(at(12, 0))}, Deny, ""},
		{"sensitivity_not_a_number", []reqOpt{user("alice", "user"), path("/records/alice/7"), header("X-Sensitivity-Level", "low"), atTime(at(12, 0))}, Deny, ""},
		{"no_time", []reqOpt{user("alice", "user"), path("/records/alice/7"), header("X-Sensitivity-Level", "1")}, Deny, ""},
		{"dot_segments_resolved_before_owner_read", []reqOpt{user("alice", "user"), path("/records/bob/../alice/7"), header("X-Sensitivity-Level", "1"), atTime(at(12, 0))}, Allow, ""},
		{"encoded_owner_decoded", []reqOpt{user("alice", "user"), path("/records/%61lice/7"), header("X-Sensitivity-Level", "1"), atTime(at(12, 0))}, Allow, ""},
		{"path_outside_policy", []reqOpt{user("carol", "user"), path("/health")}, Allow, ReasonNoAllowPolicy},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newReq(append([]reqOpt{records}, c.opts...)...)
			d := s.Decide(r)
			if d.Outcome != c.want || !strings.Contains(d.Reason, c.reason) {
				t.Fatalf("decision %v (%s), want %v containing %q", d.Outcome, d.Reason, c.want, c.reason)
			}
			if c.reason == ReasonNoAllowPolicy {
				return
			}
			if len(d.Custom) != 1 || d.Custom[0].Provider != "records-authz" || d.Custom[0].Query != "data.microservices.authz.allow" || len(d.Custom[0].InputSHA256) != 64 {
				t.Fatalf("custom = %+v", d.Custom)
			}
			if d.Outcome == Deny && (d.Policy != "prod/records-abac" || d.Action != "CUSTOM" || d.Rule != 0) {
				t.Fatalf("denial names %q %q rule %d", d.Policy, d.Action, d.Rule)
			}
		})
	}
}

func TestRegoRoleAndOwnership(t *testing.T) {
	s := regoBundle(t, nil)
	tok := func(sub string, roles ...any) reqOpt {
		return auth(jwt("https://idp.example", sub, map[string]any{"roles": roles}))
	}
	cases := []struct {
		name    string
		opts    []reqOpt
		want    Outcome
		status  int
		headers map[string]string
	}{
		{"viewer_reads_report", []reqOpt{dst("prod", "app", "reports"), tok("dave", "viewer"), path("/reports/q1")}, Allow, 0, nil},
		{"viewer_cannot_write", []reqOpt{dst("prod", "app", "reports"), tok("dave", "viewer"), method("PUT"), path("/reports/q1")}, Deny, 0, nil},
		{"editor_writes", []reqOpt{dst("prod", "app", "reports"), tok("erin", "viewer", "editor"), method("PUT"), path("/reports/q1")}, Allow, 0, nil},
		{"role_outside_prefix", []reqOpt{dst("prod", "app", "reports"), tok("erin", "editor"), path("/admin/reports/q1")}, Deny, 0, nil},
		{"prefix_escape_by_dot_segments", []reqOpt{dst("prod", "app", "reports"), tok("dave", "viewer"), path("/reports/../admin")}, Deny, 0, nil},
		{"no_roles", []reqOpt{dst("prod", "app", "reports"), tok("dave"), path("/reports/q1")}, Deny, 0, nil},
		{"owner_reads_document", []reqOpt{dst("prod", "app", "documents"), tok("alice"), path("/documents/d1")}, Allow, 0, map[string]string{"X-Document-Owner": "alice"}},
		{"non_owner_gets_404", []reqOpt{dst("prod", "app", "documents"), tok("bob"), path("/documents/d1")}, Deny, 404, nil},
		{"admin_reads_any", []reqOpt{dst("prod", "app", "documents"), tok("zed", "admin"), path("/documents/d2")}, Allow, 0, map[string]string{"X-Document-Owner": "bob"}},
		{"unknown_document", []reqOpt{dst("prod", "app", "documents"), tok("alice"), path("/documents/d9")}, Deny, 404, nil},
		{"write_not_a_declared_route", []reqOpt{dst("prod", "app", "documents"), tok("alice"), method("DELETE"), path("/documents/d1")}, Deny, 404, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := s.Decide(newReq(c.opts...))
			if d.Outcome != c.want || d.Status != c.status {
				t.Fatalf("decision %v status %d (%s), want %v status %d", d.Outcome, d.Status, d.Reason, c.want, c.status)
			}
			if diff := cmp.Diff(c.headers, d.Headers); diff != "" {
				t.Fatalf("headers (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRegoInputDocument(t *testing.T) {
	s := regoBundle(t, nil)
	r := newReq(dst("prod", "app", "records"), from("td/ns/shop/sa/web"), srcIP("10.1.2.3"), sni("records.prod"),
		method("GET"), path("/records/alice/7?fields=a&fields=b"), host("records.prod"),
		header("X-Sensitivity-Level", "2"), header("Accept", "a", "b"),
		auth(jwt("https://idp.example", "alice", map[string]any{"role": "user", "aud": "records"})),
		atTime(time.Date(2026, 3, 4, 13, 5, 0, 0, time.UTC)))
	r.Destination.Principal = "td/ns/prod/sa/records"
	got, err := s.RegoInput("records-authz", r)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"source": map[string]any{"principal": "td/ns/shop/sa/web", "spiffe_id": "spiffe://td/ns/shop/sa/web", "trust_domain": "td",
			"namespace": "shop", "service_account": "web", "ip": "10.1.2.3", "remote_ip": "10.1.2.3"},
		"destination": map[string]any{"namespace": "prod", "labels": map[string]any{"app": "records"}, "port": jsonNum("8080"), "principal": "td/ns/prod/sa/records"},
		"request": map[string]any{"protocol": "http", "method": "GET", "path": "/records/alice/7", "host": "records.prod",
			"query":   map[string]any{"fields": []any{"a", "b"}},
			"headers": map[string]any{"x-sensitivity-level": "2", "accept": "a,b"}},
		"connection": map[string]any{"sni": "records.prod"},
		"auth": map[string]any{"principal": "https://idp.example/alice", "audiences": []any{"records"},
			"claims": map[string]any{"iss": "https://idp.example", "sub": "alice", "role": "user", "aud": "records"}},
		"time": map[string]any{"unix": jsonNum("1772629500"), "unix_ns": jsonNum("1772629500000000000"), "rfc3339": "2026-03-04T13:05:00Z",
			"year": jsonNum("2026"), "month": jsonNum("3"), "day": jsonNum("4"), "hour": jsonNum("13"), "minute": jsonNum("5"), "weekday": "Wednesday"},
		"attributes": map[string]any{"owner": "alice", "level": jsonNum("2")},
		"user":       map[string]any{"id": "alice", "role": "user"},
		"context":    map[string]any{"time": jsonNum("13")},
		"resource":   map[string]any{"owner": "alice", "sensitivity_level": jsonNum("2")},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("input (-want +got):\n%s", diff)
	}
	// A plaintext TCP peer: no principal, no HTTP fields, no attributes.
	tr := newReq(dst("prod", "app", "records"), plaintext(), tcp())
	got, err = s.RegoInput("records-authz", tr)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]any{"ip": "10.0.0.1", "remote_ip": "10.0.0.1"}, got["source"]); diff != "" {
		t.Fatalf("tcp source (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]any{"protocol": "tcp"}, got["request"]); diff != "" {
		t.Fatalf("tcp request (-want +got):\n%s", diff)
	}
}

func TestRegoCompileErrors(t *testing.T) {
	cases := []struct {
		name    string
		modules []wire.RegoModule
		data    []wire.DataDocument
		want    []string // in the error, all of them
	}{
		{"parse_error_has_id_and_line", []wire.RegoModule{{ID: "bad.rego", Source: "package x\n\nallow if {\n  input.a ==\n}\n"}}, nil, []string{"bad.rego:", "rego_parse_error"}},
		{"unsafe_builtin", []wire.RegoModule{{ID: "net.rego", Source: "package x\nimport rego.v1\nallow if http.send({\"method\": \"GET\", \"url\": \"http://127.0.0.1\"}).status_code == 200\n"}}, nil, []string{"net.rego:3", "http.send"}},
		{"opa_runtime_refused", []wire.RegoModule{{ID: "env.rego", Source: "package x\nimport rego.v1\nenv := opa.runtime().env\n"}}, nil, []string{"env.rego:3", "opa.runtime"}},
		{"unsafe_var", []wire.RegoModule{{ID: "var.rego", Source: "package x\nimport rego.v1\nallow if { x == 1 }\n"}}, nil, []string{"var.rego:3", "rego_unsafe_var_error"}},
		{"data_conflicts_with_package", []wire.RegoModule{{ID: "a.rego", Source: "package clearance.rules\nimport rego.v1\nallow := true\n"}}, []wire.DataDocument{{Key: "clearance", Value: []byte(`{}`)}}, []string{`"clearance" conflicts with package data.clearance.rules`}},
		{"bad_module_id", []wire.RegoModule{{ID: "../x.rego", Source: "package x\n"}}, nil, []string{"segment"}},
		{"duplicate_module", []wire.RegoModule{{ID: "a.rego", Source: "package a\n"}, {ID: "a.rego", Source: "package b\n"}}, nil, []string{"given twice"}},
		{"bad_data_key", nil, []wire.DataDocument{{Key: "a.b", Value: []byte(`1`)}}, []string{`data key "a.b"`}},
		{"malformed_data", nil, []wire.DataDocument{{Key: "a", Value: []byte(`{"x":1,"x":2}`)}}, []string{`duplicate key "x"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := CompileRego(c.modules, c.data)
			if err == nil {
				t.Fatal("compiled")
			}
			var re *RegoError
			if !errors.As(err, &re) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %T %v is not a *RegoError wrapping ErrInvalid", err, err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestRegoV0AndV1Modules(t *testing.T) {
	for _, src := range []string{
		"package x\nallow { input.a == 1 }\n",                           // v0 only
		"package x\nimport rego.v1\nallow if input.a == 1\n",            // v1 with the compat import
		"package x\nallow if { input.a == 1 }\n",                        // v1
		"package x\nimport future.keywords.if\nallow if input.a == 1\n", // v0 with future keywords
	} {
		r, err := CompileRego([]wire.RegoModule{{ID: "x.rego", Source: src}}, nil)
		if err != nil {
			t.Fatalf("%q: %v", src, err)
		}
		v, ok, err := r.Query(t.Context(), []string{"x", "allow"}, map[string]any{"a": 1}, true)
		if err != nil || !ok || v != true {
			t.Fatalf("%q: data.x.allow = %v %v %v", src, v, ok, err)
		}
	}
}

func TestRegoProviderValidation(t *testing.T) {
	doc := func(spec string) string {
		return "apiVersion: moatless.io/v1\nkind: RegoProvider\nmetadata: {name: p}\nspec:\n" + spec
	}
	cases := []struct {
		name, yaml, want string
	}{
		{"no_query", doc("  timeout: 1ms\n"), "query is required"},
		{"query_not_data", doc("  query: input.x\n"), "not a reference into data"},
		{"query_with_var", doc("  query: data.x[y]\n"), "not a reference into data"},
		{"bad_timeout", doc("  query: data.x\n  timeout: 2s\n"), "between 0 and 1s"},
		{"bad_zone", doc("  query: data.x\n  timeZone: Mars/Olympus\n"), "unknown time zone"},
		{"typo", doc("  query: data.x\n  rotues: []\n"), "unknown field"},
		{"target_replaces_root", doc("  query: data.x\n  input: {source.x: auth.claims.sub}\n"), "would replace input.source"},
		{"target_nested_in_target", doc("  query: data.x\n  input: {user: auth.claims, user.id: auth.claims.sub}\n"), "inside target"},
		{"source_unknown_root", doc("  query: data.x\n  input: {user.id: claims.sub}\n"), "must start with one of"},
		{"segment_not_in_template", doc("  query: data.x\n  routes: [{path: '/a/{id}', attributes: {x: {segment: owner}}}]\n"), "has no {owner}"},
		{"two_sources", doc("  query: data.x\n  routes: [{path: '/a/{id}', attributes: {x: {segment: id, header: x-a}}}]\n"), "exactly one"},
		{"rest_not_last", doc("  query: data.x\n  routes: [{path: '/a/{**}/b', attributes: {x: {header: x-a}}}]\n"), "must be last"},
		{"bad_as", doc("  query: data.x\n  routes: [{path: /a, attributes: {x: {header: x-a, as: int}}}]\n"), "want string, number or boolean"},
		{"wrong_api_version", strings.Replace(doc("  query: data.x\n"), "moatless.io/v1", "moatless.io/v2", 1), "unsupported apiVersion"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(c.yaml))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want it to contain %q", err, c.want)
			}
		})
	}
	// Two providers with one name in different namespaces.
	two := doc("  query: data.x\n") + "---\n" + strings.Replace(doc("  query: data.y\n"), "{name: p}", "{name: p, namespace: other}", 1)
	docs, err := Parse(strings.NewReader(two))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Compile(docs, Options{}); err == nil || !strings.Contains(err.Error(), "mesh-wide") {
		t.Fatalf("Compile: %v", err)
	}
}

// failClosedBundle is a provider over module src for app=x.
func failClosedSet(t *testing.T, src, timeout string) *Set {
	t.Helper()
	spec := "  query: data.m.allow\n"
	if timeout != "" {
		spec += "  timeout: " + timeout + "\n"
	}
	return customSet(t, src, spec)
}

// customSet is module src (file m.rego) and the RegoProvider "m" with the
// given spec lines, deciding every request to namespace foo (CUSTOM).
func customSet(t *testing.T, src, spec string) *Set {
	t.Helper()
	var b Bundle
	if err := b.Add("m.rego", []byte(src)); err != nil {
		t.Fatal(err)
	}
	y := "apiVersion: moatless.io/v1\nkind: RegoProvider\nmetadata: {name: m}\nspec:\n" + spec + `---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: foo}
spec:
  action: CUSTOM
  provider: {name: m}
  rules: [{}]
`
	if err := b.Add("p.yaml", []byte(y)); err != nil {
		t.Fatal(err)
	}
	s, err := b.Compile(Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRegoFailsClosed(t *testing.T) {
	cases := []struct {
		name, src, timeout, result, reason string
	}{
		{"conflicting_outputs", "package m\nimport rego.v1\nallow := true if input.request.method == \"GET\"\nallow := false if input.request.path == \"/\"\n", "", "error", "rego evaluation failed"},
		{"timeout", "package m\nimport rego.v1\nallow if count([x | some x in numbers.range(1, 100000000)]) > 0\n", "1ms", "timeout", "exceeded 1ms"},
		{"undefined", "package m\nimport rego.v1\nallow if input.nothing\n", "", "deny", "is undefined"},
		{"string_result", "package m\nallow := \"yes\"\n", "", "error", "a string, not a boolean"},
		{"object_without_allow", "package m\nallow := {\"ok\": true}\n", "", "error", `boolean "allow"`},
		{"forbidden_header", "package m\nallow := {\"allow\": true, \"headers\": {\"x-forwarded-client-cert\": \"By=spiffe://evil\"}}\n", "", "error", "may not be set"},
		{"underscore_header", "package m\nallow := {\"allow\": true, \"headers\": {\"x_forwarded_client_cert\": \"By=spiffe://evil\"}}\n", "", "error", "names with _ are refused"},
		{"header_injection", "package m\nallow := {\"allow\": true, \"headers\": {\"x-a\": \"1\\r\\nx-b: 2\"}}\n", "", "error", "without CR, LF or NUL"},
		{"status_out_of_range", "package m\nallow := {\"allow\": false, \"status\": 200}\n", "", "error", "from 400 to 599"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := failClosedSet(t, c.src, c.timeout)
			d := s.Decide(newReq())
			if d.Outcome != Deny || d.Headers != nil || d.Status != 0 {
				t.Fatalf("decision %+v, want a plain deny", d)
			}
			if len(d.Custom) != 1 || d.Custom[0].Result != c.result || !strings.Contains(d.Reason, c.reason) {
				t.Fatalf("custom %+v reason %q, want result %q and reason containing %q", d.Custom, d.Reason, c.result, c.reason)
			}
		})
	}
}

func TestRegoResultObject(t *testing.T) {
	s := failClosedSet(t, `package m
import rego.v1
allow := {"allowed": true, "headers": {"x-user-tier": "gold"}} if input.request.method == "GET"
allow := {"allow": false, "http_status": 429, "reason": "quota"} if input.request.method == "POST"
`, "")
	d := s.Decide(newReq())
	if d.Outcome != Allow || d.Headers["X-User-Tier"] != "gold" || d.Custom[0].Result != "allow" {
		t.Fatalf("GET: %+v", d)
	}
	d = s.Decide(newReq(method("POST")))
	if d.Outcome != Deny || d.Status != 429 || !strings.HasSuffix(d.Reason, ": quota") {
		t.Fatalf("POST: %+v", d)
	}
}

// TestRegoHeadersOnlyWhenAllowed: headers a CUSTOM provider returns are
// dropped when a DENY policy decides.
func TestRegoHeadersOnlyWhenAllowed(t *testing.T) {
	s := regoBundle(t, map[string]string{"deny.yaml": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: prod}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/documents/d2"]}}]}]
`})
	d := s.Decide(newReq(dst("prod", "app", "documents"), auth(jwt("i", "bob", nil)), path("/documents/d2")))
	if d.Outcome != Deny || d.Action != "DENY" || d.Headers != nil || len(d.Custom) != 1 {
		t.Fatalf("decision %+v", d)
	}
}

func TestBundleFiles(t *testing.T) {
	cases := []struct {
		name string
		kind FileKind
		ok   bool
	}{
		{"authz.rego", FileRego, true},
		{"dir/data.json", FileData, true},
		{"DATA.YAML", FileData, true},
		{"policies.yaml", FileDocuments, true},
		{"x.json", FileDocuments, true},
		{"README.md", 0, false},
	}
	for _, c := range cases {
		k, ok := PolicyFileKind(c.name)
		if k != c.kind || ok != c.ok {
			t.Errorf("%s: %v %v, want %v %v", c.name, k, ok, c.kind, c.ok)
		}
	}
	var b Bundle
	if err := b.Add("a/x.rego", []byte("package x\n")); err != nil {
		t.Fatal(err)
	}
	if err := b.Add("b/x.rego", []byte("package y\n")); err == nil || !strings.Contains(err.Error(), "a/x.rego") {
		t.Fatalf("duplicate module ID: %v", err)
	}
	if err := b.Add("data.json", []byte(`[1]`)); err == nil || !strings.Contains(err.Error(), "JSON object") {
		t.Fatalf("array data: %v", err)
	}
}

func jsonNum(s string) json.Number { return json.Number(s) }

// TestRegoInputNeeds: the input is built only as far as the modules read
// it; "with input as" (tests) is not a read; reading input whole, or by
// a variable key, builds it all.
func TestRegoInputNeeds(t *testing.T) {
	build := func(src string) map[string]any {
		t.Helper()
		s := failClosedSet(t, src, "")
		r := newReq(from("td/ns/a/sa/b"), header("X-A", "1"), header("X-B", "2"), auth(jwt("i", "alice", map[string]any{"role": "r"})), atTime(at(10, 0)))
		b := regoengine.Current()
		v, err := b.JSON(buildInput(b, s.providers["m"], r, "/", false))
		if err != nil {
			t.Fatal(err)
		}
		return v.(map[string]any)
	}
	got := build("package m\nimport rego.v1\nallow if input.request.headers[\"x-a\"] == \"1\"\nallow if input.auth.claims.sub == \"alice\"\ntest_x if allow with input as {}\n")
	want := map[string]any{
		"request": map[string]any{"protocol": "http", "method": "GET", "path": "/", "host": "svc.example", "headers": map[string]any{"x-a": "1"}},
		"auth":    map[string]any{"claims": map[string]any{"sub": "alice"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("input (-want +got):\n%s", diff)
	}
	for _, src := range []string{
		"package m\nimport rego.v1\nallow if count(input) > 0\n",
		"package m\nimport rego.v1\nallow if { some k; input[k] }\n",
	} {
		if got := build(src); got["source"] == nil || got["time"] == nil {
			t.Fatalf("%q: input not built whole: %v", src, got)
		}
	}
}

// TestRegoInputReadThroughAVariable: a module that takes part of the
// input whole (binds input.auth to a variable, or reads headers or
// claims by a variable key) sees that part as the request has it. Such a
// part was built empty: a leaf of the read tree counted as "nothing
// below", so "deny if { some k; input.request.headers[k] == \"evil\" }"
// never denied and allowed everything, and "a := input.auth" saw no
// claims.
func TestRegoInputReadThroughAVariable(t *testing.T) {
	r := newReq(from("td/ns/a/sa/b"), header("X-A", "evil"), auth(jwt("i", "alice", map[string]any{"role": "r"})))
	tests := []struct{ name, rule string }{
		{"header_by_variable_key", `allow if { some k; input.request.headers[k] == "evil" }`},
		{"request_bound", `allow if { q := input.request; q.headers["x-a"] == "evil" }`},
		{"headers_bound", `allow if { h := input.request.headers; h["x-a"] == "evil" }`},
		{"auth_bound", `allow if { a := input.auth; a.claims.role == "r" }`},
		{"claim_by_variable_key", `allow if { some k; input.auth.claims[k] == "r" }`},
		{"source_bound", `allow if { s := input.source; s.namespace == "a" }`},
		{"named_header", `allow if input.request.headers["x-a"] == "evil"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := failClosedSet(t, "package m\nimport rego.v1\ndefault allow := false\n"+tc.rule+"\n", "")
			if d := s.Decide(r); d.Outcome != Allow {
				t.Fatalf("%v: %s; the module did not see the request", d.Outcome, d.Reason)
			}
			deny := failClosedSet(t, "package m\nimport rego.v1\ndefault deny := false\n"+strings.Replace(tc.rule, "allow", "deny", 1)+"\nallow if not deny\n", "")
			if d := deny.Decide(r); d.Outcome != Deny {
				t.Fatalf("deny-style module: %v: %s", d.Outcome, d.Reason)
			}
		})
	}
}

// TestRegoQueryAttributeIsUnambiguous: a route attribute read from a
// query parameter was its first value, while PHP, Rails and others read
// the last: "?owner=alice&owner=bob" was alice to an ownership policy and
// bob to the app. A parameter given more than once with different values
// (with "&" or ";" between them: older Python and Java parsers split on
// either) makes the provider deny, since no decision can be sure which
// value the app serves; the same value repeated is that value.
func TestRegoQueryAttributeIsUnambiguous(t *testing.T) {
	s := customSet(t, "package m\nimport rego.v1\ndefault allow := false\nallow if input.attributes.owner == input.auth.claims.sub\n",
		"  query: data.m.allow\n  routes:\n  - path: /records\n    attributes: {owner: {query: owner}}\n")
	tests := []struct {
		name, target string
		want         Outcome
	}{
		{"own", "/records?owner=alice", Allow},
		{"other", "/records?owner=bob", Deny},
		{"same_value_twice", "/records?owner=alice&owner=alice", Allow},
		{"first_own_last_other", "/records?owner=alice&owner=bob", Deny},
		{"first_other_last_own", "/records?owner=bob&owner=alice", Deny},
		{"encoded_name", "/records?owner=alice&%6Fwner=bob", Deny},
		{"semicolon_separated", "/records?owner=alice;owner=bob", Deny},
		{"other_parameters_repeat", "/records?owner=alice&x=1&x=2", Allow},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newReq(path(tc.target), auth(jwt("i", "alice", nil)))
			if d := s.Decide(r); d.Outcome != tc.want {
				t.Fatalf("%s: %v (%s), want %v", tc.target, d.Outcome, d.Reason, tc.want)
			}
		})
	}
}

// TestRegoSeesTokenHeaders: a provider sees the headers
// RequestAuthentication writes (as Istio's ext_authz runs after the JWT
// filter), over what the caller sent, in input.request.headers read by
// name or whole and in a route's header attribute.
func TestRegoSeesTokenHeaders(t *testing.T) {
	a := jwt("i", "alice", nil)
	a.SetHeaders = map[string]string{"X-User": "alice"}
	r := newReq(header("X-User", "bob"), path("/records"), auth(a))
	for _, tc := range []struct{ name, rule, spec string }{
		{"by_name", `allow if input.request.headers["x-user"] == "alice"`, ""},
		{"whole", `allow if { some k, v; input.request.headers[k] = v; k == "x-user"; v == "alice" }`, ""},
		{"route_attribute", `allow if input.attributes.user == "alice"`, "  routes:\n  - path: /records\n    attributes: {user: {header: x-user}}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := customSet(t, "package m\nimport rego.v1\ndefault allow := false\n"+tc.rule+"\n", "  query: data.m.allow\n"+tc.spec)
			if d := s.Decide(r); d.Outcome != Allow {
				t.Fatalf("%v: %s", d.Outcome, d.Reason)
			}
		})
	}
}

// TestRegoReadsPathParametersBothWays: a provider decides a path with
// path parameters under both readings, and any deny denies:
// "/records/bob;x/7" was owner "bob;x" to a module denying bob's records,
// while a Java app serves bob's.
func TestRegoReadsPathParametersBothWays(t *testing.T) {
	s := customSet(t, "package m\nimport rego.v1\ndefault deny := false\ndeny if input.attributes.owner == \"bob\"\nallow if not deny\n",
		"  query: data.m.allow\n  routes:\n  - path: /records/{owner}/{id}\n    attributes: {owner: {segment: owner}}\n")
	for _, tc := range []struct {
		target string
		want   Outcome
	}{
		{"/records/bob/7", Deny},
		{"/records/bob;x/7", Deny},
		{"/records/alice;jsessionid=1/7", Allow},
		{"/records/alice/7", Allow},
		// As apps that decode %2F, and that route ignoring case, read it.
		{"/records/bob%2F7", Deny},
		{"/records/x/..%2Fbob/7", Deny}, // refused: a dot segment by an encoded slash
		// A route matches ignoring case too; what it captures is the
		// request's own text (names and IDs may be case-sensitive data).
		{"/RECORDS/bob/7", Deny},
		{"/Records/bob;x%2F7", Deny},
		{"/records/Bob/7", Allow},
		{"/RECORDS/Bob/7", Allow},
		{"/records/Alice%2F7", Allow},
	} {
		if d := s.Decide(newReq(path(tc.target))); d.Outcome != tc.want {
			t.Errorf("%s: %v (%s), want %v", tc.target, d.Outcome, d.Reason, tc.want)
		}
	}
}

// An allow-list module is never asked about a path the caller did not
// send: the readings that ignore case fold the routes, not the path, so
// mixed-case paths and the IDs routes capture from them stay as sent.
func TestRegoMixedCasePathsStayAsSent(t *testing.T) {
	s := customSet(t, "package m\nimport rego.v1\ndefault allow := false\n"+
		"allow if input.request.path == \"/Reports/Q1\"\n"+
		"allow if input.attributes.key == \"AbC9\"\n",
		"  query: data.m.allow\n  routes:\n  - path: /keys/{key}\n    attributes: {key: {segment: key}}\n")
	for _, tc := range []struct {
		target string
		want   Outcome
	}{
		{"/Reports/Q1", Allow},
		{"/reports/q1", Deny},
		{"/keys/AbC9", Allow},
		{"/KEYS/AbC9", Deny}, // read exactly, no route names it: every reading must allow
		{"/keys/abc9", Deny},
	} {
		if d := s.Decide(newReq(path(tc.target))); d.Outcome != tc.want {
			t.Errorf("%s: %v (%s), want %v", tc.target, d.Outcome, d.Reason, tc.want)
		}
	}
}

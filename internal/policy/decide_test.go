package policy

import (
	"fmt"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
)

// check is one request against a policy set and the decision Istio's
// documentation says it gets.
type check struct {
	name    string
	req     *Request
	outcome Outcome
	policy  string // "" to require no deciding policy, "-" to not check
	rule    int    // checked when policy != "-"
	audit   string // AuditPolicy when an AUDIT policy must match
	dryRun  string // "" not checked; else the dry-run outcome ("allow"/"deny")
}

type scenario struct {
	name   string
	yaml   string
	opts   Options
	checks []check
}

func runScenarios(t *testing.T, scenarios []scenario) {
	t.Helper()
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			s := mustSet(t, sc.yaml, sc.opts)
			for _, c := range sc.checks {
				t.Run(c.name, func(t *testing.T) {
					d := s.Decide(c.req)
					if d.Outcome != c.outcome {
						t.Fatalf("outcome = %v, want %v (decision %+v)", d.Outcome, c.outcome, d)
					}
					wantRule := c.rule
					if c.policy == "" {
						wantRule = -1 // no deciding policy, no rule
					}
					if c.policy != "-" && (d.Policy != c.policy || d.Rule != wantRule) {
						t.Errorf("decided by %q rule %d, want %q rule %d (reason %q)", d.Policy, d.Rule, c.policy, wantRule, d.Reason)
					}
					if (c.audit != "") != d.Audit || d.AuditPolicy != c.audit {
						t.Errorf("audit = %v %q, want %q", d.Audit, d.AuditPolicy, c.audit)
					}
					if c.dryRun != "" && (!d.DryRun.Applies || d.DryRun.Outcome.String() != c.dryRun) {
						t.Errorf("dry run = %+v, want outcome %s", d.DryRun, c.dryRun)
					}
					if d.Reason == "" {
						t.Errorf("decision has no reason: %+v", d)
					}
				})
			}
		})
	}
}

// The examples of Istio's AuthorizationPolicy reference page, each with
// the requests it talks about.
func TestIstioReferenceExamples(t *testing.T) {
	runScenarios(t, []scenario{
		{
			name: "allow_example_httpbin",
			yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    - source:
        namespaces: ["test"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
    - operation:
        methods: ["POST"]
        paths: ["/data"]
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]
`,
			checks: []check{
				{name: "sleep_get_info_with_google_token", req: newReq(path("/info/x"), auth(jwt("https://accounts.google.com", "u1", nil))), outcome: Allow, policy: "foo/httpbin", rule: 0},
				{name: "sleep_get_info_prefix_itself", req: newReq(path("/info"), auth(jwt("https://accounts.google.com", "u1", nil))), outcome: Allow, policy: "foo/httpbin", rule: 0},
				{name: "sleep_without_token", req: newReq(path("/info")), outcome: Deny, policy: ""},
				{name: "token_from_other_issuer", req: newReq(path("/info"), auth(jwt("https://evil.example", "u1", nil))), outcome: Deny, policy: ""},
				{name: "namespace_test_post_data", req: newReq(from("cluster.local/ns/test/sa/any"), method("POST"), path("/data"), auth(jwt("https://accounts.google.com", "u1", nil))), outcome: Allow, policy: "foo/httpbin", rule: 0},
				{name: "namespace_test_put_data", req: newReq(from("cluster.local/ns/test/sa/any"), method("PUT"), path("/data"), auth(jwt("https://accounts.google.com", "u1", nil))), outcome: Deny, policy: ""},
				{name: "post_info_wrong_pair", req: newReq(method("POST"), path("/info"), auth(jwt("https://accounts.google.com", "u1", nil))), outcome: Deny, policy: ""},
				{name: "other_namespace_source", req: newReq(from("cluster.local/ns/prod/sa/x"), path("/info"), auth(jwt("https://accounts.google.com", "u1", nil))), outcome: Deny, policy: ""},
				{name: "plaintext_source", req: newReq(plaintext(), path("/info"), auth(jwt("https://accounts.google.com", "u1", nil))), outcome: Deny, policy: ""},
				{name: "other_namespace_destination_unaffected", req: newReq(dst("bar", "app", "httpbin")), outcome: Allow, policy: ""},
			},
		},
		{
			name: "deny_dev_post",
			yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["dev"]
    to:
    - operation:
        methods: ["POST"]
`,
			checks: []check{
				{name: "dev_post_denied", req: newReq(from("cluster.local/ns/dev/sa/a"), method("POST")), outcome: Deny, policy: "foo/httpbin", rule: 0},
				{name: "dev_get_allowed", req: newReq(from("cluster.local/ns/dev/sa/a")), outcome: Allow, policy: ""},
				{name: "prod_post_allowed", req: newReq(from("cluster.local/ns/prod/sa/a"), method("POST")), outcome: Allow, policy: ""},
			},
		},
		{
			name: "deny_post_8080_and_tcp",
			yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["POST"]
        ports: ["8080"]
`,
			checks: []check{
				{name: "http_post_8080_denied", req: newReq(method("POST")), outcome: Deny, policy: "foo/httpbin", rule: 0},
				{name: "http_get_8080_allowed", req: newReq(), outcome: Allow, policy: ""},
				{name: "http_post_9090_allowed", req: newReq(method("POST"), port(9090)), outcome: Allow, policy: ""},
				// "For a DENY rule, missing attributes are treated as matches":
				// all TCP traffic on 8080 is denied.
				{name: "tcp_8080_denied", req: newReq(tcp()), outcome: Deny, policy: "foo/httpbin", rule: 0},
				{name: "tcp_9090_allowed", req: newReq(tcp(), port(9090)), outcome: Allow, policy: ""},
			},
		},
		{
			name: "audit_user_profile",
			yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  namespace: ns1
  name: anyname
spec:
  selector:
    matchLabels:
      app: myapi
  action: AUDIT
  rules:
  - to:
    - operation:
        methods: ["GET"]
        paths: ["/user/profile/*"]
`,
			checks: []check{
				{name: "get_profile_audited_and_allowed", req: newReq(dst("ns1", "app", "myapi"), path("/user/profile/42")), outcome: Allow, policy: "", audit: "ns1/anyname"},
				{name: "post_profile_not_audited", req: newReq(dst("ns1", "app", "myapi"), method("POST"), path("/user/profile/42")), outcome: Allow, policy: ""},
				{name: "other_workload_not_audited", req: newReq(dst("ns1", "app", "other"), path("/user/profile/42")), outcome: Allow, policy: ""},
			},
		},
		{
			name: "allow_nothing_namespace",
			yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: foo
spec:
  {}
`,
			checks: []check{
				{name: "everything_in_foo_denied", req: newReq(), outcome: Deny, policy: ""},
				{name: "tcp_in_foo_denied", req: newReq(tcp()), outcome: Deny, policy: ""},
				{name: "bar_unaffected", req: newReq(dst("bar")), outcome: Allow, policy: ""},
			},
		},
		{
			name: "allow_all_namespace",
			yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-all
  namespace: foo
spec:
  rules:
  - {}
`,
			checks: []check{
				{name: "anything_allowed", req: newReq(method("DELETE"), path("/x")), outcome: Allow, policy: "foo/allow-all", rule: 0},
				{name: "plaintext_allowed", req: newReq(plaintext()), outcome: Allow, policy: "foo/allow-all", rule: 0},
				{name: "tcp_allowed", req: newReq(tcp()), outcome: Allow, policy: "foo/allow-all", rule: 0},
			},
		},
		{
			name: "allow_nothing_selected_workload",
			yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: bar
spec:
  selector:
    matchLabels:
      app: httpbin
`,
			checks: []check{
				{name: "httpbin_in_bar_denied", req: newReq(dst("bar", "app", "httpbin", "version", "v1")), outcome: Deny, policy: ""},
				{name: "other_app_in_bar_allowed", req: newReq(dst("bar", "app", "other")), outcome: Allow, policy: ""},
				{name: "httpbin_in_foo_allowed", req: newReq(dst("foo", "app", "httpbin")), outcome: Allow, policy: ""},
			},
		},
		{
			name: "root_namespace_selector_mesh_wide",
			yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: istio-system
spec:
  selector:
    matchLabels:
      version: v1
`,
			checks: []check{
				{name: "v1_in_foo_denied", req: newReq(dst("foo", "app", "a", "version", "v1")), outcome: Deny, policy: ""},
				{name: "v1_in_bar_denied", req: newReq(dst("bar", "version", "v1")), outcome: Deny, policy: ""},
				{name: "v1_in_root_denied", req: newReq(dst("istio-system", "version", "v1")), outcome: Deny, policy: ""},
				{name: "v2_allowed", req: newReq(dst("foo", "version", "v2")), outcome: Allow, policy: ""},
			},
		},
		{
			name: "root_namespace_is_configurable",
			opts: Options{RootNamespace: "mesh-root"},
			yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-delete, namespace: mesh-root}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-delete, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [PUT]}}]}]
`,
			checks: []check{
				{name: "delete_anywhere_denied", req: newReq(dst("shop"), method("DELETE")), outcome: Deny, policy: "mesh-root/deny-delete", rule: 0},
				{name: "istio_system_is_an_ordinary_namespace", req: newReq(dst("shop"), method("PUT")), outcome: Allow, policy: ""},
				{name: "put_in_istio_system_denied", req: newReq(dst("istio-system"), method("PUT")), outcome: Deny, policy: "istio-system/deny-delete", rule: 0},
			},
		},
		{
			name: "dry_run_deny_headers",
			yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry-run-example
  namespace: foo
  annotations:
    "istio.io/dry-run": "true"
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/headers"]
`,
			checks: []check{
				{name: "headers_allowed_but_dry_run_denies", req: newReq(path("/headers")), outcome: Allow, policy: "", dryRun: "deny"},
				{name: "other_path_dry_run_allows", req: newReq(path("/get")), outcome: Allow, policy: "", dryRun: "allow"},
			},
		},
		{
			name: "dry_run_allow_flips_default",
			yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: only-get
  namespace: foo
  annotations: {istio.io/dry-run: "true"}
spec:
  rules: [{to: [{operation: {methods: [GET]}}]}]
`,
			checks: []check{
				{name: "post_allowed_would_be_denied", req: newReq(method("POST")), outcome: Allow, policy: "", dryRun: "deny"},
				{name: "get_allowed_would_be_allowed", req: newReq(), outcome: Allow, policy: "", dryRun: "allow"},
			},
		},
	})
}

// Evaluation order and combination: CUSTOM, then DENY, then ALLOW.
func TestEvaluationOrder(t *testing.T) {
	policies := `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: foo}
spec:
  rules: [{to: [{operation: {methods: [GET, DELETE]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-delete, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: foo}
spec:
  action: CUSTOM
  provider: {name: my-custom-authz}
  rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
`
	var calls atomic.Int32
	custom := func(provider string, r *Request) (bool, string) {
		calls.Add(1)
		if provider != "my-custom-authz" {
			return false, "unknown provider " + provider
		}
		if r.Headers.Get("X-Admin") == "yes" {
			return true, ""
		}
		return false, "not an admin"
	}
	runScenarios(t, []scenario{{
		name: "custom_deny_allow",
		yaml: policies,
		opts: Options{Custom: custom},
		checks: []check{
			{name: "get_allowed", req: newReq(path("/x")), outcome: Allow, policy: "foo/allow-get", rule: 0},
			{name: "delete_denied_by_deny_before_allow", req: newReq(method("DELETE")), outcome: Deny, policy: "foo/deny-delete", rule: 0},
			{name: "post_matches_no_allow", req: newReq(method("POST")), outcome: Deny, policy: ""},
			{name: "admin_without_header_denied_by_custom", req: newReq(path("/admin/users")), outcome: Deny, policy: "foo/ext-authz", rule: 0},
			{name: "admin_with_header_goes_on_to_allow", req: newReq(path("/admin/users"), header("X-Admin", "yes")), outcome: Allow, policy: "foo/allow-get", rule: 0},
			{name: "custom_allow_cannot_bypass_deny", req: newReq(method("DELETE"), path("/admin/x"), header("X-Admin", "yes")), outcome: Deny, policy: "foo/deny-delete", rule: 0},
		},
	}, {
		name: "custom_without_provider_fails_closed",
		yaml: policies,
		checks: []check{
			{name: "admin_denied", req: newReq(path("/admin/x"), header("X-Admin", "yes")), outcome: Deny, policy: "foo/ext-authz", rule: 0},
			{name: "non_admin_path_unaffected", req: newReq(path("/x")), outcome: Allow, policy: "foo/allow-get", rule: 0},
		},
	}})
	// The provider is asked only for requests the CUSTOM rules match.
	s := mustSet(t, policies, Options{Custom: custom})
	calls.Store(0)
	s.Decide(newReq(path("/public")))
	if n := calls.Load(); n != 0 {
		t.Errorf("provider called %d times for a request its rules do not match", n)
	}
	s.Decide(newReq(path("/admin/a")))
	if n := calls.Load(); n != 1 {
		t.Errorf("provider called %d times, want 1", n)
	}
}

// Istio's rules for HTTP-only attributes on TCP traffic.
func TestHTTPFieldsOnTCP(t *testing.T) {
	runScenarios(t, []scenario{{
		name: "allow_rule_with_http_fields_never_matches_tcp",
		yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tcp-allow, namespace: foo}
spec:
  rules:
  - to: [{operation: {methods: [GET], ports: ["8080"]}}]
  - from: [{source: {requestPrincipals: ["*"]}}]
  - to: [{operation: {ports: ["9000"]}}]
`,
		checks: []check{
			{name: "http_get_allowed_by_rule_0", req: newReq(), outcome: Allow, policy: "foo/tcp-allow", rule: 0},
			{name: "tcp_8080_rule_0_skipped", req: newReq(tcp()), outcome: Deny, policy: ""},
			{name: "tcp_9000_allowed_by_rule_2", req: newReq(tcp(), port(9000)), outcome: Allow, policy: "foo/tcp-allow", rule: 2},
		},
	}, {
		name: "deny_rule_drops_http_fields_on_tcp",
		yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-http-only, namespace: foo}
spec:
  action: DENY
  rules:
  - from: [{source: {notRequestPrincipals: ["*"]}}]
    when:
    - key: request.headers[X-Debug]
      values: ["1"]
`,
		checks: []check{
			{name: "tcp_denied_because_everything_was_dropped", req: newReq(tcp()), outcome: Deny, policy: "foo/deny-http-only", rule: 0},
			{name: "http_without_header_allowed", req: newReq(), outcome: Allow, policy: ""},
			{name: "http_with_header_no_token_denied", req: newReq(header("X-Debug", "1")), outcome: Deny, policy: "foo/deny-http-only", rule: 0},
			{name: "http_with_header_and_token_allowed", req: newReq(header("X-Debug", "1"), auth(jwt("iss", "sub", nil))), outcome: Allow, policy: ""},
		},
	}, {
		name: "audit_rule_drops_http_fields_on_tcp",
		yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-get, namespace: foo}
spec:
  action: AUDIT
  rules: [{to: [{operation: {methods: [GET], ports: ["5432"]}}]}]
`,
		checks: []check{
			{name: "tcp_5432_audited", req: newReq(tcp(), port(5432)), outcome: Allow, policy: "", audit: "foo/audit-get"},
			{name: "tcp_5433_not_audited", req: newReq(tcp(), port(5433)), outcome: Allow, policy: ""},
		},
	}})
}

// Source attributes derived from the SPIFFE ID, and plaintext peers.
func TestSourceIdentity(t *testing.T) {
	runScenarios(t, []scenario{{
		name: "principals_namespaces_and_their_not_forms",
		yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-plaintext, namespace: foo}
spec:
  action: DENY
  rules: [{from: [{source: {notPrincipals: ["*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: foo}
spec:
  rules:
  - from: [{source: {principals: ["td/ns/prod/sa/orders", "*/sa/batch"], notNamespaces: ["quarantine"]}}]
  - from: [{source: {namespaces: ["team-*"]}}]
  - from: [{source: {trustDomains: ["partner.example"]}}]
`,
		checks: []check{
			{name: "plaintext_denied_by_not_principals", req: newReq(plaintext()), outcome: Deny, policy: "foo/deny-plaintext", rule: 0},
			{name: "exact_principal_allowed", req: newReq(from("td/ns/prod/sa/orders")), outcome: Allow, policy: "foo/allow", rule: 0},
			{name: "suffix_principal_allowed", req: newReq(from("td/ns/prod/sa/batch")), outcome: Allow, policy: "foo/allow", rule: 0},
			{name: "suffix_principal_in_quarantine_refused", req: newReq(from("td/ns/quarantine/sa/batch")), outcome: Deny, policy: ""},
			{name: "namespace_prefix_allowed", req: newReq(from("td/ns/team-a/sa/x")), outcome: Allow, policy: "foo/allow", rule: 1},
			{name: "namespace_is_a_path_segment_not_a_substring", req: newReq(from("td/ns/x/sa/team-a")), outcome: Deny, policy: ""},
			{name: "trust_domain_allowed", req: newReq(from("partner.example/ns/x/sa/y")), outcome: Allow, policy: "foo/allow", rule: 2},
			{name: "other_principal_denied", req: newReq(from("td/ns/prod/sa/web")), outcome: Deny, policy: ""},
		},
	}, {
		name: "service_accounts",
		yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sa, namespace: foo}
spec:
  rules:
  - from: [{source: {serviceAccounts: ["prod/orders", "local-sa"]}}]
  - from: [{source: {notServiceAccounts: ["prod/orders"]}}]
    to: [{operation: {methods: [HEAD]}}]
`,
		checks: []check{
			{name: "namespaced_account", req: newReq(from("td/ns/prod/sa/orders")), outcome: Allow, policy: "foo/sa", rule: 0},
			{name: "account_without_namespace_means_policy_namespace", req: newReq(from("td/ns/foo/sa/local-sa")), outcome: Allow, policy: "foo/sa", rule: 0},
			{name: "same_name_other_namespace", req: newReq(from("td/ns/bar/sa/local-sa")), outcome: Deny, policy: ""},
			{name: "not_service_accounts_matches_plaintext", req: newReq(plaintext(), method("HEAD")), outcome: Allow, policy: "foo/sa", rule: 1},
			{name: "not_service_accounts_excludes", req: newReq(from("td/ns/prod/sa/orders"), method("HEAD")), outcome: Allow, policy: "foo/sa", rule: 0},
		},
	}, {
		name: "ip_blocks",
		yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ips, namespace: foo}
spec:
  rules:
  - from: [{source: {ipBlocks: ["10.0.0.0/8", "2001:db8::/32"], notIpBlocks: ["10.9.9.9"]}}]
  - from: [{source: {remoteIpBlocks: ["203.0.113.0/24"]}}]
`,
		checks: []check{
			{name: "inside_cidr", req: newReq(srcIP("10.1.2.3")), outcome: Allow, policy: "foo/ips", rule: 0},
			{name: "ipv4_mapped_ipv6", req: newReq(srcIP("::ffff:10.1.2.3")), outcome: Allow, policy: "foo/ips", rule: 0},
			{name: "ipv6", req: newReq(srcIP("2001:db8::1")), outcome: Allow, policy: "foo/ips", rule: 0},
			{name: "excluded_address", req: newReq(srcIP("10.9.9.9")), outcome: Deny, policy: ""},
			{name: "remote_ip_from_gateway", req: newReq(srcIP("192.168.1.1"), remoteIP("203.0.113.7")), outcome: Allow, policy: "foo/ips", rule: 1},
			{name: "remote_ip_defaults_to_source_ip", req: newReq(srcIP("203.0.113.9")), outcome: Allow, policy: "foo/ips", rule: 1},
			{name: "outside", req: newReq(srcIP("192.168.1.1")), outcome: Deny, policy: ""},
		},
	}})
}

func TestOperations(t *testing.T) {
	runScenarios(t, []scenario{{
		name: "hosts_ports_methods_paths",
		yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ops, namespace: foo}
spec:
  rules:
  - to: [{operation: {hosts: ["*.example.com"], methods: [GET, HEAD], notPaths: ["/admin*"]}}]
  - to: [{operation: {hosts: ["API.internal"], ports: ["9090"]}}]
  - to: [{operation: {notPorts: ["8080", "9090"], paths: ["*.css", "/static/{**}"]}}]
  - to: [{operation: {paths: ["/users/{*}/profile", "/v1/*"], notMethods: [DELETE]}}]
`,
		checks: []check{
			{name: "host_suffix", req: newReq(host("shop.example.com"), path("/items")), outcome: Allow, policy: "foo/ops", rule: 0},
			{name: "host_suffix_case_insensitive", req: newReq(host("Shop.EXAMPLE.com")), outcome: Allow, policy: "foo/ops", rule: 0},
			{name: "not_paths_prefix_excludes_admin", req: newReq(host("shop.example.com"), path("/admin/x")), outcome: Deny, policy: ""},
			{name: "not_paths_sees_normalized_path", req: newReq(host("shop.example.com"), path("/public/../admin")), outcome: Deny, policy: ""},
			{name: "exact_host_case_insensitive_with_port", req: newReq(host("api.INTERNAL"), port(9090), method("PATCH")), outcome: Allow, policy: "foo/ops", rule: 1},
			{name: "exact_host_wrong_port", req: newReq(host("api.internal"), method("PATCH")), outcome: Deny, policy: ""},
			{name: "path_suffix_on_other_port", req: newReq(port(7000), method("PUT"), path("/a/b.css")), outcome: Allow, policy: "foo/ops", rule: 2},
			{name: "template_any_on_other_port", req: newReq(port(7000), method("PUT"), path("/static/js/app.js")), outcome: Allow, policy: "foo/ops", rule: 2},
			{name: "not_ports_excludes", req: newReq(method("PUT"), path("/a/b.css")), outcome: Deny, policy: ""},
			{name: "template_one_segment", req: newReq(method("PUT"), path("/users/42/profile")), outcome: Allow, policy: "foo/ops", rule: 3},
			{name: "template_one_is_one_segment", req: newReq(method("PUT"), path("/users/4/2/profile")), outcome: Deny, policy: ""},
			{name: "path_prefix_with_query", req: newReq(method("PUT"), path("/v1/orders?limit=5")), outcome: Allow, policy: "foo/ops", rule: 3},
			{name: "not_methods_excludes", req: newReq(method("DELETE"), path("/v1/orders")), outcome: Deny, policy: ""},
			{name: "template_one_takes_equals_sign", req: newReq(method("PUT"), path("/users/id=42/profile")), outcome: Allow, policy: "foo/ops", rule: 3},
		},
	}, {
		// Envoy's "{*}" and "{**}" match "=" (the uri_template matcher's
		// pchar set includes it): a DENY rule on a template must deny a
		// segment with "=" in it, as Istio does, or it is bypassed.
		name: "deny_template_with_equals_sign",
		yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin/{*}", "/internal/{**}"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: foo}
spec:
  rules:
  - {}
`,
		checks: []check{
			{name: "plain_segment_denied", req: newReq(path("/admin/users")), outcome: Deny, policy: "foo/deny-admin", rule: 0},
			{name: "segment_with_equals_denied", req: newReq(path("/admin/k=v")), outcome: Deny, policy: "foo/deny-admin", rule: 0},
			{name: "any_with_equals_denied", req: newReq(path("/internal/a/k=v")), outcome: Deny, policy: "foo/deny-admin", rule: 0},
			{name: "other_path_allowed", req: newReq(path("/public/k=v")), outcome: Allow, policy: "foo/allow-all", rule: 0},
		},
	}})
}

func TestConditions(t *testing.T) {
	runScenarios(t, []scenario{{
		name: "every_documented_key",
		yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: when, namespace: foo}
spec:
  rules:
  - when: [{key: "request.headers[User-Agent]", values: ["Mozilla/*"]}]
  - when: [{key: source.ip, values: ["10.1.2.3", "10.2.0.0/16"]}]
  - when: [{key: remote.ip, values: ["198.51.100.0/24"]}]
  - when: [{key: source.namespace, values: ["default"]}, {key: source.principal, notValues: ["*/sa/sleep"]}]
  - when: [{key: source.principal, values: ["cluster.local/ns/ops/sa/*"]}]
  - when: [{key: request.auth.principal, values: ["issuer.example.com/subject-admin"]}]
  - when: [{key: request.auth.audiences, values: ["example.com"]}]
  - when: [{key: request.auth.presenter, values: ["123456789012.example.com"]}]
  - when: [{key: "request.auth.claims[groups]", values: ["admins"]}]
  - when: [{key: "request.auth.claims[realm][role]", values: ["owner"]}]
  - when: [{key: destination.ip, values: ["10.99.0.0/16"]}]
  - when: [{key: destination.port, values: ["9443"]}]
  - when: [{key: connection.sni, values: ["www.example.com"]}]
  - when: [{key: "request.auth.claims[scope]", values: ["orders:write"]}]
  - when: [{key: source.serviceAccount, values: ["ops/deployer"]}]
`,
		checks: []check{
			{name: "nothing_matches", req: newReq(), outcome: Deny, policy: ""},
			{name: "user_agent_prefix", req: newReq(header("user-agent", "Mozilla/5.0")), outcome: Allow, policy: "foo/when", rule: 0},
			{name: "source_ip_exact", req: newReq(srcIP("10.1.2.3")), outcome: Allow, policy: "foo/when", rule: 1},
			{name: "source_ip_cidr", req: newReq(srcIP("10.2.200.1")), outcome: Allow, policy: "foo/when", rule: 1},
			{name: "remote_ip", req: newReq(remoteIP("198.51.100.20")), outcome: Allow, policy: "foo/when", rule: 2},
			{name: "namespace_and_not_principal", req: newReq(from("cluster.local/ns/default/sa/web")), outcome: Allow, policy: "foo/when", rule: 3},
			{name: "principal_prefix", req: newReq(from("cluster.local/ns/ops/sa/anything")), outcome: Allow, policy: "foo/when", rule: 4},
			{name: "request_principal", req: newReq(auth(jwt("issuer.example.com", "subject-admin", nil))), outcome: Allow, policy: "foo/when", rule: 5},
			{name: "audience_in_list", req: newReq(auth(jwt("i", "s", map[string]any{"aud": []any{"other", "example.com"}}))), outcome: Allow, policy: "foo/when", rule: 6},
			{name: "presenter", req: newReq(auth(jwt("i", "s", map[string]any{"azp": "123456789012.example.com"}))), outcome: Allow, policy: "foo/when", rule: 7},
			{name: "list_claim", req: newReq(auth(jwt("i", "s", map[string]any{"groups": []any{"dev", "admins"}}))), outcome: Allow, policy: "foo/when", rule: 8},
			{name: "nested_claim", req: newReq(auth(jwt("i", "s", map[string]any{"realm": map[string]any{"role": "owner"}}))), outcome: Allow, policy: "foo/when", rule: 9},
			{name: "numeric_claim_never_matches", req: newReq(auth(jwt("i", "s", map[string]any{"groups": 7.0}))), outcome: Deny, policy: ""},
			{name: "destination_ip", req: newReq(dstIP("10.99.3.4")), outcome: Allow, policy: "foo/when", rule: 10},
			{name: "destination_port", req: newReq(port(9443)), outcome: Allow, policy: "foo/when", rule: 11},
			{name: "sni", req: newReq(sni("www.example.com")), outcome: Allow, policy: "foo/when", rule: 12},
			{name: "space_delimited_scope", req: newReq(auth(jwt("i", "s", map[string]any{"scope": "orders:read orders:write"}))), outcome: Allow, policy: "foo/when", rule: 13},
			{name: "source_service_account", req: newReq(from("td/ns/ops/sa/deployer")), outcome: Allow, policy: "foo/when", rule: 14},
		},
	}, {
		name: "headers_values_and_not_values",
		yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: hdr, namespace: foo}
spec:
  action: DENY
  rules:
  - when: [{key: "request.headers[X-Env]", values: ["*"], notValues: ["prod"]}]
  - when: [{key: "request.headers[:authority]", values: ["*.evil.example"]}]
`,
		checks: []check{
			{name: "absent_header_not_denied", req: newReq(), outcome: Allow, policy: ""},
			{name: "present_non_prod_denied", req: newReq(header("X-Env", "staging")), outcome: Deny, policy: "foo/hdr", rule: 0},
			{name: "present_empty_denied", req: newReq(header("X-Env", "")), outcome: Deny, policy: "foo/hdr", rule: 0},
			{name: "prod_allowed", req: newReq(header("X-Env", "prod")), outcome: Allow, policy: ""},
			{name: "duplicate_headers_joined_with_comma", req: newReq(header("X-Env", "prod", "prod")), outcome: Deny, policy: "foo/hdr", rule: 0},
			{name: "authority_pseudo_header", req: newReq(host("a.evil.example")), outcome: Deny, policy: "foo/hdr", rule: 1},
		},
	}, {
		name: "request_principals_patterns",
		yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: rp, namespace: foo}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["https://issuer.example/*"]}}]
  - from: [{source: {requestPrincipals: ["*/admin"]}}]
    to: [{operation: {methods: [POST]}}]
`,
		checks: []check{
			{name: "issuer_exact_any_subject", req: newReq(auth(jwt("https://issuer.example", "u1", nil))), outcome: Allow, policy: "foo/rp", rule: 0},
			{name: "issuer_is_not_a_prefix", req: newReq(auth(jwt("https://issuer.example/evil", "u1", nil))), outcome: Deny, policy: ""},
			{name: "any_issuer_subject_admin", req: newReq(method("POST"), auth(jwt("https://other", "admin", nil))), outcome: Allow, policy: "foo/rp", rule: 1},
			{name: "no_token", req: newReq(), outcome: Deny, policy: ""},
		},
	}, {
		name: "request_principal_without_slash_is_an_issuer",
		yaml: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: rp, namespace: foo}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["machine-issuer"]}}]
`,
		checks: []check{
			{name: "empty_subject_matches", req: newReq(auth(&Auth{Claims: map[string]any{"iss": "machine-issuer", "sub": ""}})), outcome: Allow, policy: "foo/rp", rule: 0},
			{name: "missing_subject_does_not", req: newReq(auth(&Auth{Claims: map[string]any{"iss": "machine-issuer"}})), outcome: Deny, policy: ""},
			{name: "other_subject_does_not", req: newReq(auth(jwt("machine-issuer", "x", nil))), outcome: Deny, policy: ""},
		},
	}})
}

func TestPeerAuthentication(t *testing.T) {
	pas := `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: finance, namespace: foo}
spec:
  selector: {matchLabels: {app: finance}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: DISABLE}
    9090: {mode: UNSET}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: inherit, namespace: bar}
spec:
  selector: {matchLabels: {app: legacy}}
  mtls: {mode: UNSET}
  portLevelMtls:
    8080: {mode: PERMISSIVE}
`
	s := mustSet(t, pas, Options{})
	tests := []struct {
		name string
		dst  Destination
		mode MTLSMode
		ref  string
	}{
		{"mesh_strict_applies_to_unlisted_namespace", Destination{Namespace: "other", Port: 80}, ModeStrict, "istio-system/default"},
		{"namespace_permissive_overrides_mesh", Destination{Namespace: "foo", Port: 80}, ModePermissive, "foo/default"},
		{"workload_strict_overrides_namespace", Destination{Namespace: "foo", Labels: map[string]string{"app": "finance"}, Port: 80}, ModeStrict, "foo/finance"},
		{"port_level_disable", Destination{Namespace: "foo", Labels: map[string]string{"app": "finance"}, Port: 8080}, ModeDisable, "foo/finance"},
		{"port_level_unset_inherits_workload", Destination{Namespace: "foo", Labels: map[string]string{"app": "finance"}, Port: 9090}, ModeStrict, "foo/finance"},
		{"workload_unset_inherits_mesh", Destination{Namespace: "bar", Labels: map[string]string{"app": "legacy"}, Port: 80}, ModeStrict, "istio-system/default"},
		{"port_level_under_unset_workload", Destination{Namespace: "bar", Labels: map[string]string{"app": "legacy"}, Port: 8080}, ModePermissive, "bar/inherit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mode, ref := s.MTLSPolicy(tc.dst)
			if mode != tc.mode || ref != tc.ref {
				t.Errorf("MTLSPolicy = %v %q, want %v %q", mode, ref, tc.mode, tc.ref)
			}
		})
	}
	t.Run("no_policy_means_permissive", func(t *testing.T) {
		if m := mustSet(t, "", Options{}).MTLSMode(Destination{Namespace: "x"}); m != ModePermissive {
			t.Errorf("mode = %v, want PERMISSIVE", m)
		}
	})
	t.Run("plaintext_to_strict_denied", func(t *testing.T) {
		d := s.Decide(newReq(plaintext(), dst("other")))
		if d.Outcome != Deny || d.Reason != ReasonMTLSRequired || d.Policy != "istio-system/default" {
			t.Errorf("decision = %+v", d)
		}
	})
	t.Run("external_request_at_the_gateway_not_subject_to_peer_authentication", func(t *testing.T) {
		req := newReq(plaintext(), dst("other"))
		req.External = true
		if d := s.Decide(req); d.Reason == ReasonMTLSRequired {
			t.Errorf("decision = %+v", d)
		}
		if d := s.Evaluate(req, nil); d.Reason == ReasonMTLSRequired {
			t.Errorf("Evaluate: decision = %+v", d)
		}
	})
	t.Run("plaintext_to_disabled_port_allowed", func(t *testing.T) {
		d := s.Decide(newReq(plaintext(), dst("foo", "app", "finance"), port(8080)))
		if d.Outcome != Allow {
			t.Errorf("decision = %+v", d)
		}
	})
	t.Run("mtls_to_strict_allowed", func(t *testing.T) {
		if d := s.Decide(newReq(dst("other"))); d.Outcome != Allow {
			t.Errorf("decision = %+v", d)
		}
	})
}

func TestJWTRulesAndEvaluate(t *testing.T) {
	s := mustSet(t, `
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: mesh, namespace: istio-system}
spec:
  jwtRules: [{issuer: "https://mesh.example"}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: api, namespace: foo}
spec:
  selector: {matchLabels: {app: api}}
  jwtRules: [{issuer: "https://api.example", jwksUri: "https://api.example/jwks.json"}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: foo}
spec:
  rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]
`, Options{})
	if got := s.JWTRules(Destination{Namespace: "bar"}); len(got) != 1 || got[0].GetIssuer() != "https://mesh.example" {
		t.Errorf("JWTRules(bar) = %v", got)
	}
	got := s.JWTRules(Destination{Namespace: "foo", Labels: map[string]string{"app": "api"}})
	if len(got) != 2 || got[0].GetIssuer() != "https://mesh.example" || got[1].GetIssuer() != "https://api.example" {
		t.Errorf("JWTRules(foo/api) = %v", got)
	}

	verifier := verifierFunc(func(rules []*securityv1beta1JWTRule, r *Request) (*Auth, error) {
		switch r.Headers.Get("Authorization") {
		case "":
			return nil, nil
		case "Bearer good":
			return jwt("https://mesh.example", "alice", nil), nil
		}
		return nil, fmt.Errorf("signature invalid")
	})
	tests := []struct {
		name    string
		req     *Request
		outcome Outcome
		reason  string
	}{
		{"valid_token_allowed", newReq(header("Authorization", "Bearer good")), Allow, "matched ALLOW rule 0 of foo/require-jwt"},
		{"no_token_is_not_an_error_policy_denies", newReq(), Deny, ReasonNoAllowMatch},
		{"invalid_token_unauthenticated", newReq(header("Authorization", "Bearer forged")), Unauthenticated, "invalid token: signature invalid"},
		{"tcp_skips_jwt", newReq(tcp()), Deny, ReasonNoAllowMatch},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := s.Evaluate(tc.req, verifier)
			if d.Outcome != tc.outcome || d.Reason != tc.reason {
				t.Errorf("Evaluate = %v %q, want %v %q", d.Outcome, d.Reason, tc.outcome, tc.reason)
			}
		})
	}
	t.Run("nil_verifier_with_rules_denies", func(t *testing.T) {
		if d := s.Evaluate(newReq(), nil); d.Outcome != Deny || !strings.Contains(d.Reason, "verifier") {
			t.Errorf("Evaluate = %+v", d)
		}
	})
}

func TestNilSetDeniesEverything(t *testing.T) {
	var s *Set
	if d := s.Decide(newReq()); d.Outcome != Deny || d.Reason != ReasonNoSet {
		t.Errorf("Decide on nil set = %+v", d)
	}
	if d := s.Evaluate(newReq(), nil); d.Outcome != Deny {
		t.Errorf("Evaluate on nil set = %+v", d)
	}
	if m := s.MTLSMode(Destination{}); m != ModeStrict {
		t.Errorf("MTLSMode on nil set = %v", m)
	}
}

func TestExplain(t *testing.T) {
	s := mustSet(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-orders, namespace: prod}
spec:
  selector: {matchLabels: {app: payments}}
  rules:
  - from: [{source: {principals: ["td/ns/prod/sa/orders"]}}]
    to: [{operation: {methods: [POST], paths: ["/api/v1/payments/*"]}}]
  - from: [{source: {namespaces: ["ops"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-app, namespace: prod}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{}]
`, Options{})
	r := newReq(dst("prod", "app", "payments"), from("td/ns/prod/sa/orders"), method("GET"), path("/api/v1/payments/42"))
	e := s.Explain(r, nil)
	if !reflect.DeepEqual(e.Decision, s.Decide(r)) {
		t.Fatalf("Explain decision %+v differs from Decide %+v", e.Decision, s.Decide(r))
	}
	if len(e.Policies) != 1 || e.Policies[0].Policy != "prod/allow-orders" || e.Policies[0].Matched != -1 {
		t.Fatalf("policies = %+v", e.Policies)
	}
	rules := e.Policies[0].Rules
	if want := `to: spec.rules[0].to[0].operation.methods: method "GET" matches none of the values`; !strings.HasSuffix(rules[0].Why, want) {
		t.Errorf("rule 0: %q, want suffix %q", rules[0].Why, want)
	}
	if want := `from: spec.rules[1].from[0].source.namespaces: source namespace "prod" matches none of the values`; !strings.HasSuffix(rules[1].Why, want) {
		t.Errorf("rule 1: %q, want suffix %q", rules[1].Why, want)
	}
	if len(e.Skipped) != 1 || !strings.Contains(e.Skipped[0], "prod/other-app (selector app=web") {
		t.Errorf("skipped = %v", e.Skipped)
	}
	if e.Token != "none" || e.MTLSMode != ModePermissive {
		t.Errorf("token %q mode %v", e.Token, e.MTLSMode)
	}
}

// Long lists of exact values are looked up in a map; the map must agree
// with the linear patterns, case-insensitively for hosts.
func TestLargeValueLists(t *testing.T) {
	var principals, hosts []string
	for i := 0; i < 50; i++ {
		principals = append(principals, fmt.Sprintf("%q", fmt.Sprintf("td/ns/prod/sa/svc-%d", i)))
		hosts = append(hosts, fmt.Sprintf("%q", fmt.Sprintf("Host-%d.Example.com", i)))
	}
	s := mustSet(t, fmt.Sprintf(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: many, namespace: foo}
spec:
  rules:
  - from: [{source: {principals: [%s, "td/ns/ops/*"]}}]
    to: [{operation: {hosts: [%s, "*.internal"]}}]
`, strings.Join(principals, ", "), strings.Join(hosts, ", ")), Options{})
	long := strings.Repeat("x", 300) + ".example.com"
	tests := []struct {
		name    string
		req     *Request
		outcome Outcome
	}{
		{"exact_principal_and_host_from_maps", newReq(from("td/ns/prod/sa/svc-37"), host("host-12.example.com")), Allow},
		{"host_case_folded", newReq(from("td/ns/prod/sa/svc-0"), host("HOST-49.EXAMPLE.COM")), Allow},
		{"prefix_pattern_beside_map", newReq(from("td/ns/ops/sa/x"), host("api.internal")), Allow},
		{"principal_not_listed", newReq(from("td/ns/prod/sa/svc-50"), host("host-1.example.com")), Deny},
		{"host_not_listed", newReq(from("td/ns/prod/sa/svc-1"), host("host-50.example.com")), Deny},
		{"very_long_host", newReq(from("td/ns/prod/sa/svc-1"), host(long)), Deny},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if d := s.Decide(tc.req); d.Outcome != tc.outcome {
				t.Errorf("decision = %+v, want %v", d, tc.outcome)
			}
		})
	}
}

// A Set is shared by every request goroutine of a sidecar.
func TestConcurrentDecisions(t *testing.T) {
	s := mustSet(t, meshPolicies(200), Options{})
	want := s.Decide(benchRequest(200))
	done := make(chan struct{})
	for g := 0; g < 8; g++ {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := 0; i < 200; i++ {
				r := benchRequest(200)
				if i%2 == 0 {
					r.Path = "/api/v1/./payments/%34%32"
				}
				if d := s.Decide(r); !reflect.DeepEqual(d, want) {
					t.Errorf("decision %+v, want %+v", d, want)
					return
				}
				s.Explain(r, nil)
			}
		}()
	}
	for g := 0; g < 8; g++ {
		<-done
	}
}

// namedRefusal is a verifier's refusal of a token whose signature
// verified, as authn's errors name it (VerifiedToken; RevokedToken only
// when revoked is set, as authn's).
type namedRefusal struct {
	iss, sub string
	revoked  bool
}

func (e namedRefusal) Error() string                   { return "invalid token: audience not allowed" }
func (e namedRefusal) VerifiedToken() (string, string) { return e.iss, e.sub }
func (e namedRefusal) RevokedToken() (string, string) {
	if !e.revoked {
		return "", ""
	}
	return e.iss, e.sub
}

// revokedOnlyRefusal names only a revoked token (RevokedToken, no
// VerifiedToken), as a verifier may.
type revokedOnlyRefusal struct{ iss, sub string }

func (e revokedOnlyRefusal) Error() string                  { return "invalid token: revoked" }
func (e revokedOnlyRefusal) RevokedToken() (string, string) { return e.iss, e.sub }

// TestEvaluateNamesTheVerifiedToken: a decision on a request whose token
// verified names that token's issuer and subject, whether the policy
// allowed or denied it, and so does a refusal of a token whose signature
// verified (revoked, another audience); a token whose signature did not
// verify, and no token, name no one. Never the token itself. Fails on
// the parent (an allow, a deny and an audience refusal named no token).
func TestEvaluateNamesTheVerifiedToken(t *testing.T) {
	s := mustSet(t, `
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: mesh, namespace: foo}
spec:
  jwtRules: [{issuer: "https://mesh.example", jwksUri: "https://mesh.example/jwks.json"}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: alice-only, namespace: foo}
spec:
  rules: [{from: [{source: {requestPrincipals: ["https://mesh.example/alice"]}}]}]
`, Options{})
	const iss = "https://mesh.example"
	verifier := verifierFunc(func(rules []*securityv1beta1JWTRule, r *Request) (*Auth, error) {
		switch r.Headers.Get("Authorization") {
		case "":
			return nil, nil
		case "Bearer alice":
			return jwt(iss, "alice", nil), nil
		case "Bearer bob":
			return jwt(iss, "bob", nil), nil
		case "Bearer other-audience":
			return nil, namedRefusal{iss: iss, sub: "carol"}
		case "Bearer revoked":
			return nil, namedRefusal{iss: iss, sub: "dave", revoked: true}
		case "Bearer revoked-old-verifier":
			return nil, fmt.Errorf("wrapped: %w", revokedOnlyRefusal{iss: iss, sub: "erin"})
		}
		return nil, fmt.Errorf("signature invalid")
	})
	tests := []struct {
		name     string
		token    string
		outcome  Outcome
		iss, sub string
	}{
		{"allowed_names_its_token", "alice", Allow, iss, "alice"},
		{"denied_names_its_token", "bob", Deny, iss, "bob"},
		{"verified_refusal_names_its_token", "other-audience", Unauthenticated, iss, "carol"},
		{"revoked_names_its_token", "revoked", Unauthenticated, iss, "dave"},
		{"revoked_only_verifier_names_its_token", "revoked-old-verifier", Unauthenticated, iss, "erin"},
		{"forged_names_no_one", "forged", Unauthenticated, "", ""},
		{"no_token_names_no_one", "", Deny, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newReq()
			if tc.token != "" {
				r.Headers.Set("Authorization", "Bearer "+tc.token)
			}
			d := s.Evaluate(r, verifier)
			if d.Outcome != tc.outcome || d.TokenIssuer != tc.iss || d.TokenSubject != tc.sub {
				t.Errorf("Evaluate = %v token %q %q, want %v %q %q (%s)", d.Outcome, d.TokenIssuer, d.TokenSubject, tc.outcome, tc.iss, tc.sub, d.Reason)
			}
		})
	}
	t.Run("naming_allocates_nothing", func(t *testing.T) {
		alice := jwt(iss, "alice", nil)
		v := verifierFunc(func([]*securityv1beta1JWTRule, *Request) (*Auth, error) { return alice, nil })
		r := newReq(header("Authorization", "Bearer alice"))
		if n := testing.AllocsPerRun(200, func() { r.Auth = nil; s.Evaluate(r, v) }); n != 0 {
			t.Errorf("Evaluate with a verified token allocates %.1f times per call", n)
		}
	})
	t.Run("decide_takes_auth_as_given_and_names_no_token", func(t *testing.T) {
		if d := s.Decide(newReq(auth(jwt(iss, "alice", nil)))); d.Outcome != Allow || d.TokenSubject != "" {
			t.Errorf("Decide = %+v", d)
		}
	})
}

package policy

import "testing"

// TestWildcardValuesAsIstio: "*" (presence), "x*" (prefix) and "*x"
// (suffix) in values and notValues, read as Istio's StringMatcherWithPrefix
// and Envoy's matchers read them, including the DENY rules whose
// HTTP-only fields Istio drops on TCP. (Probed in review; found sound.)
func TestWildcardValuesAsIstio(t *testing.T) {
	tests := []struct {
		name, rule string
		action     string
		req        *Request
		want       Outcome
	}{
		{"not_methods_star_never_matches_http", `{to: [{operation: {notMethods: ["*"]}}]}`, "DENY", newReq(dst("foo")), Allow},
		{"not_methods_star_on_tcp_denies_all", `{to: [{operation: {notMethods: ["*"]}}]}`, "DENY", newReq(dst("foo"), tcp()), Deny},
		{"not_paths_star_never_matches_http", `{to: [{operation: {notPaths: ["*"]}}]}`, "DENY", newReq(dst("foo"), path("/x")), Allow},
		{"paths_star_matches_every_path", `{to: [{operation: {paths: ["*"]}}]}`, "DENY", newReq(dst("foo"), path("/")), Deny},
		{"prefix_matches_itself", `{to: [{operation: {paths: ["/admin*"]}}]}`, "DENY", newReq(dst("foo"), path("/admin")), Deny},
		{"prefix_matches_longer_name", `{to: [{operation: {paths: ["/admin*"]}}]}`, "DENY", newReq(dst("foo"), path("/administrator")), Deny},
		// Istio's prefix is case-sensitive; a DENY here also applies to
		// the path as an app that routes ignoring case reads it.
		{"prefix_deny_ignores_case", `{to: [{operation: {paths: ["/admin*"]}}]}`, "DENY", newReq(dst("foo"), path("/Admin")), Deny},
		{"prefix_allow_is_case_sensitive", `{to: [{operation: {paths: ["/admin*"]}}]}`, "ALLOW", newReq(dst("foo"), path("/Admin")), Deny},
		{"suffix", `{to: [{operation: {paths: ["*/secret"]}}]}`, "DENY", newReq(dst("foo"), path("/a/b/secret?x=1")), Deny},
		{"star_inside_is_literal", `{to: [{operation: {paths: ["/a*b/c"]}}]}`, "DENY", newReq(dst("foo"), path("/axb/c")), Allow},
		{"principals_star_any_mtls", `{from: [{source: {principals: ["*"]}}]}`, "ALLOW", newReq(dst("foo")), Allow},
		{"principals_star_not_plaintext", `{from: [{source: {principals: ["*"]}}]}`, "ALLOW", newReq(dst("foo"), plaintext()), Deny},
		{"not_principals_star_denies_plaintext", `{from: [{source: {notPrincipals: ["*"]}}]}`, "DENY", newReq(dst("foo"), plaintext()), Deny},
		{"not_principals_star_allows_mtls", `{from: [{source: {notPrincipals: ["*"]}}]}`, "DENY", newReq(dst("foo")), Allow},
		{"principal_suffix", `{from: [{source: {principals: ["*/sa/sleep"]}}]}`, "ALLOW", newReq(dst("foo")), Allow},
		{"principal_prefix_other_ns", `{from: [{source: {principals: ["cluster.local/ns/prod/*"]}}]}`, "ALLOW", newReq(dst("foo")), Deny},
		{"header_star_matches_empty_value", `{when: [{key: "request.headers[x-a]", values: ["*"]}]}`, "DENY", newReq(dst("foo"), header("X-A", "")), Deny},
		{"header_star_needs_the_header", `{when: [{key: "request.headers[x-a]", values: ["*"]}]}`, "DENY", newReq(dst("foo")), Allow},
		{"header_not_values_star_absent", `{when: [{key: "request.headers[x-a]", notValues: ["*"]}]}`, "DENY", newReq(dst("foo")), Deny},
		{"claim_star_any_list_element", `{when: [{key: "request.auth.claims[groups]", values: ["*"]}]}`, "DENY", newReq(dst("foo"), auth(jwt("i", "s", map[string]any{"groups": []any{1, "dev"}}))), Deny},
		{"claim_star_not_a_number", `{when: [{key: "request.auth.claims[n]", values: ["*"]}]}`, "DENY", newReq(dst("foo"), auth(jwt("i", "s", map[string]any{"n": 1.0}))), Allow},
		{"request_principals_star_needs_a_token", `{from: [{source: {requestPrincipals: ["*"]}}]}`, "ALLOW", newReq(dst("foo")), Deny},
		{"hosts_star_any_host", `{to: [{operation: {hosts: ["*"]}}]}`, "DENY", newReq(dst("foo"), host("a.example:8080")), Deny},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := mustSet(t, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec:\n  action: "+tc.action+"\n  rules: ["+tc.rule+"]\n", Options{})
			if d := s.Decide(tc.req); d.Outcome != tc.want {
				t.Fatalf("%v (%s), want %v", d.Outcome, d.Reason, tc.want)
			}
		})
	}
}

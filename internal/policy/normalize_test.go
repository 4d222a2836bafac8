package policy

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestNormalizePath(t *testing.T) {
	tests := []struct {
		name string
		in   string
		mode PathNormalization
		want string
		err  bool
	}{
		// The examples of Istio's "Authorization Policy Normalization" page.
		{name: "doc_percent_encoded", in: "/some%2fdata/%61%62%63", mode: NormalizeDecodeAndMergeSlashes, want: "/some/data/abc"},
		{name: "doc_backslash", in: `/some\data`, want: "/some/data"},
		{name: "doc_multiple_slashes", in: "/some//data///abc", mode: NormalizeMergeSlashes, want: "/some/data/abc"},
		{name: "doc_dot_segments", in: "/public/./data/abc/../xyz", want: "/public/data/xyz"},
		{name: "doc_query_removed", in: "/foo?v=1", want: "/foo"},
		{name: "doc_nul_rejected", in: "/a%00b", err: true},

		{name: "unchanged", in: "/api/v1/payments/42", want: "/api/v1/payments/42"},
		{name: "empty_is_root", in: "", want: "/"},
		{name: "query_only", in: "?x=1", want: "/"},
		// A request target has no fragment (RFC 9112 §3.2): cutting the
		// path at "#" would match "/a" while the app is sent "/a%23/..".
		{name: "fragment_refused", in: "/a#frag", err: true},
		{name: "fragment_after_dot_segments_refused", in: "/api/x#/../internal/keys", err: true},
		{name: "fragment_in_query_refused", in: "/a?x=1#/../admin", err: true},
		{name: "fragment_alone_refused", in: "#", err: true},
		{name: "encoded_hash_kept", in: "/a%23b", want: "/a%23b"},
		{name: "base_keeps_encoded_slash", in: "/a%2fb", want: "/a%2Fb"},
		{name: "base_keeps_encoded_backslash", in: "/a%5cb", want: "/a%5Cb"},
		{name: "base_does_not_merge_slashes", in: "/a//b", want: "/a//b"},
		{name: "unreserved_decoded", in: "/%7Euser/%2D%5F%2E", want: "/~user/-_."},
		{name: "reserved_kept_upper_cased", in: "/a%3fb%3Db", want: "/a%3Fb%3Db"},
		{name: "encoded_dots_resolved", in: "/a/%2e%2E/admin", want: "/admin"},
		{name: "mixed_encoded_dot", in: "/a/.%2e/admin", want: "/admin"},
		{name: "backslash_dot_dot", in: `/a\..\admin`, want: "/admin"},
		{name: "dot_dot_above_root", in: "/../../admin", want: "/admin"},
		{name: "trailing_dot_dot", in: "/a/b/..", want: "/a/"},
		{name: "trailing_dot", in: "/a/.", want: "/a/"},
		{name: "dot_dot_after_empty_segment", in: "/a//..", want: "/a/"},
		{name: "dot_file_kept", in: "/.well-known/x", want: "/.well-known/x"},
		{name: "triple_dot_kept", in: "/a/.../b", want: "/a/.../b"},
		// Go's HTTP server refuses these with 400 before any policy runs;
		// the engine refuses them too, so "policy check" agrees.
		{name: "invalid_escape_refused", in: "/a%zz", err: true},
		{name: "truncated_escape_refused", in: "/a%4", err: true},
		{name: "lone_percent_refused", in: "/a%", err: true},
		{name: "escaped_percent_then_digits_kept", in: "/a%2532", want: "/a%2532"},
		// Bytes that may not appear raw in a path are percent-encoded in
		// every mode: the forwarded target is a valid one, byte for byte
		// the path policy matched.
		{name: "unsafe_ascii_encoded", in: "/a\"<>^`{|}", want: "/a%22%3C%3E%5E%60%7B%7C%7D"},
		{name: "brackets_encoded", in: "/a[0]", want: "/a%5B0%5D"},
		{name: "sub_delims_kept", in: "/a!$&'()*+,;=:@b", want: "/a!$&'()*+,;=:@b"},
		{name: "none_encodes_unsafe_bytes", in: "/a b\xc3\xa9\"", mode: NormalizeNone, want: "/a%20b%C3%A9%22"},
		{name: "none_encodes_backslash", in: `/a\..\b`, mode: NormalizeNone, want: "/a%5C..%5Cb"},
		{name: "none_keeps_escape_case", in: "/a%2fb%41", mode: NormalizeNone, want: "/a%2fb%41"},
		{name: "space_encoded", in: "/a b", want: "/a%20b"},
		{name: "non_ascii_encoded", in: "/caf\xc3\xa9", want: "/caf%C3%A9"},
		{name: "merge_after_dots", in: "//a//../b", mode: NormalizeMergeSlashes, want: "/a/b"},
		{name: "decode_slash_then_dots", in: "/a/..%2fadmin", mode: NormalizeDecodeAndMergeSlashes, want: "/admin"},
		{name: "decode_backslash", in: "/a%5C%5Cadmin", mode: NormalizeDecodeAndMergeSlashes, want: "/a/admin"},
		{name: "none_only_strips_query", in: "/a/../b?x", mode: NormalizeNone, want: "/a/../b"},
		{name: "none_still_rejects_nul", in: "/a%00", mode: NormalizeNone, err: true},
		{name: "lower_case_nul_rejected", in: "/a%00", err: true},
		{name: "raw_nul_rejected", in: "/a\x00b", err: true},
		{name: "control_char_rejected", in: "/a\nb", err: true},
		{name: "delete_char_rejected", in: "/a\x7fb", err: true},
		{name: "relative_rejected", in: "a/b", err: true},
		{name: "asterisk_form_rejected", in: "*", err: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := NormalizePath(tc.in, tc.mode)
			if tc.err {
				if !errors.Is(err, ErrInvalidPath) {
					t.Fatalf("NormalizePath(%q) = %q, %v; want ErrInvalidPath", tc.in, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("NormalizePath(%q, %v) = %q, %v; want %q", tc.in, tc.mode, got, err, tc.want)
			}
			// Normalizing twice changes nothing more (for modes that decode once).
			if again, err := NormalizePath(got, tc.mode); err != nil || again != got && tc.mode != NormalizeNone {
				t.Errorf("not idempotent: %q -> %q (%v)", got, again, err)
			}
		})
	}
}

func TestParsePathNormalization(t *testing.T) {
	for _, n := range []PathNormalization{NormalizeBase, NormalizeNone, NormalizeMergeSlashes, NormalizeDecodeAndMergeSlashes} {
		got, err := ParsePathNormalization(n.String())
		if err != nil || got != n {
			t.Errorf("round trip of %v: %v %v", n, got, err)
		}
	}
	if _, err := ParsePathNormalization("FULL"); err == nil {
		t.Error("unknown name accepted")
	}
}

func TestPathTemplates(t *testing.T) {
	tests := []struct {
		template string
		path     string
		want     bool
	}{
		// The examples of Istio's Operation.paths reference.
		{"/foo/{*}", "/foo/bar", true},
		{"/foo/{*}", "/foo/bar/baz", false},
		{"/foo/{**}/", "/foo/bar/", true},
		{"/foo/{**}/", "/foo//", true},
		{"/foo/{**}/", "/foo/bar", false},
		// Istio's page says this matches; Envoy, which enforces the
		// template, requires the trailing "/". We follow Envoy.
		{"/foo/{**}/", "/foo/bar/baz.txt", false},
		{"/foo/{*}/bar/{**}", "/foo/buzz/bar/", true},
		{"/foo/{*}/bar/{**}", "/foo/buzz/bar/baz", true},
		{"/foo/{*}/bar/{**}", "/foo/buzz/bar", false},

		{"/{**}", "/", true},
		{"/{**}", "/anything/at/all", true},
		{"/foo/{**}", "/foo", false},
		{"/foo/{**}", "/foo/", true},
		{"/foo/{**}/bar.tmp", "/foo/a/b/bar.tmp", true},
		{"/foo/{**}/bar.tmp", "/foo//bar.tmp", true},
		{"/foo/{**}/bar.tmp", "/foo/bar.tmp", false},
		{"/{*}/foo/", "/x/foo/", true},
		{"/{*}/foo/", "/x/foo", false},
		{"/{*}/foo", "//foo", false},
		{"/users/{*}", "/users/a=b", true}, // Envoy's operators match "=" (kLiteral)
		{"/users/{*}", "/users/a*b", false},
		{"/users/id=1/{*}", "/users/id=1/x", true},
		{"/a/{*}", "/a/%2F", true},
	}
	for _, tc := range tests {
		t.Run(tc.template+"_"+tc.path, func(t *testing.T) {
			tm, err := parsePathTemplate(tc.template)
			if err != nil {
				t.Fatal(err)
			}
			if got := tm.match(tc.path, false); got != tc.want {
				t.Errorf("%q matches %q = %v, want %v", tc.template, tc.path, got, tc.want)
			}
		})
	}
	// Istio's CheckValidPathTemplate cases.
	for _, bad := range []string{
		"/foo/{**}buzz/bar", "/{*}/foo/{}/bar", "/foo/{*}/bar/*", "/foo/{*}/bar/**/buzz",
		"/foo/{buzz}/bar", "/{buzz}", "/foo/{buzz}/bar/{**}", "/foo/{buzz=*}/bar/{**}",
		"/{*}/foo/{buzz=**}/bar", "/{*}/foo/{**}bar", "/{*}/foo/{*}.txt", "/{*}/foo/{temp",
		"/{*}/foo/temp}/bar", "/{*}/foo/temp}/*", "/{**}/foo/temp/{*}/bar", "/{**}/{**}",
		"/{**}/foo/temp/{**}/bar", "/{*}/foo/?abc", "{*}/foo", "/a//{*}",
	} {
		if _, err := parsePathTemplate(bad); err == nil {
			t.Errorf("parsePathTemplate(%q) accepted", bad)
		}
	}
	for _, good := range []string{"/{*}/foo", "/{*}/foo/", "/foo/{**}/bar", "/foo/bar/{**}"} {
		if _, err := parsePathTemplate(good); err != nil {
			t.Errorf("parsePathTemplate(%q): %v", good, err)
		}
	}
}

func TestParseConditionKey(t *testing.T) {
	tests := []struct {
		key    string
		kind   attrKind
		header string
		claim  []string
		err    bool
	}{
		{key: "request.headers[User-Agent]", kind: attrHeader, header: "User-Agent"},
		{key: "request.headers[x-custom-token]", kind: attrHeader, header: "X-Custom-Token"},
		{key: "request.headers[:authority]", kind: attrHeader, header: ":authority"},
		{key: "request.headers[Host]", kind: attrHeader, header: ":authority"},
		{key: "request.headers[:scheme]", err: true},
		{key: "request.headers[]", err: true},
		{key: "request.headers", err: true},
		{key: "request.headers[a][b]", err: true},
		{key: "request.headers[a b]", err: true},
		{key: "request.headers[a", err: true},
		{key: "request.auth.claims[iss]", kind: attrClaim, claim: []string{"iss"}},
		{key: "request.auth.claims[realm][role]", kind: attrClaim, claim: []string{"realm", "role"}},
		{key: "request.auth.claims[a.b]", kind: attrClaim, claim: []string{"a.b"}},
		{key: "request.auth.claims[]", err: true},
		{key: "request.auth.claims[a]x", err: true},
		{key: "request.auth.claims[a[b]]", err: true},
		{key: "source.ip", kind: attrSourceIP},
		{key: "remote.ip", kind: attrRemoteIP},
		{key: "source.namespace", kind: attrNamespace},
		{key: "source.principal", kind: attrPrincipal},
		{key: "source.serviceAccount", kind: attrServiceAccount},
		{key: "request.auth.principal", kind: attrRequestPrincipal},
		{key: "request.auth.audiences", kind: attrAudiences},
		{key: "request.auth.presenter", kind: attrPresenter},
		{key: "destination.ip", kind: attrDestIP},
		{key: "destination.port", kind: attrPort},
		{key: "connection.sni", kind: attrSNI},
		{key: "experimental.envoy.filters.a.b[c]", err: true},
		{key: "destination.labels[app]", err: true},
		{key: "destination.namespace", err: true},
		{key: "destination.name", err: true},
		{key: "source.user", err: true},
		{key: "", err: true},
		{key: "Source.IP", err: true},
	}
	for _, tc := range tests {
		t.Run(tc.key, func(t *testing.T) {
			k, err := parseConditionKey(tc.key)
			if tc.err {
				if err == nil {
					t.Fatalf("accepted: %+v", k)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if k.kind != tc.kind || k.header != tc.header || len(k.claim) != len(tc.claim) {
				t.Fatalf("got %+v", k)
			}
			for i := range tc.claim {
				if k.claim[i] != tc.claim[i] {
					t.Fatalf("claim = %v, want %v", k.claim, tc.claim)
				}
			}
		})
	}
	if _, err := parseConditionKey("request.auth.claims" + repeatBrackets(maxClaimDepth+1)); err == nil {
		t.Error("claim path deeper than the limit accepted")
	}
}

func repeatBrackets(n int) string {
	s := ""
	for i := 0; i < n; i++ {
		s += "[a]"
	}
	return s
}

func TestTrustDomain(t *testing.T) {
	tests := []struct{ in, td string }{
		{"cluster.local/ns/default/sa/sleep", "cluster.local"},
		{"spiffe://td/ns/prod/sa/orders", "td"},
		{"td/workload/a", "td"},
		{"td", "td"},
		{"", ""},
	}
	for _, tc := range tests {
		if td := trustDomain(tc.in); td != tc.td {
			t.Errorf("trustDomain(%q) = %q, want %q", tc.in, td, tc.td)
		}
	}
}

// TestEncodedSlashBesideDotSegment: BASE and MERGE_SLASHES keep %2F and
// %5C encoded, so a dot segment against one is refused rather than left
// for an app that decodes before it resolves dot segments.
func TestEncodedSlashBesideDotSegment(t *testing.T) {
	cases := []struct {
		name, target string
		refused      bool
	}{
		{"dot_dot_between_encoded_slashes", "/api/x%2F..%2Finternal", true},
		{"lower_case_escapes", "/api/x%2f..%2finternal", true},
		{"encoded_backslashes", "/api/x%5C..%5Cadmin", true},
		{"dot_dot_after_real_slash", "/api/x/..%2Fadmin", true},
		{"single_dot", "/api/x%2F.%2Fy", true},
		{"trailing_dot_dot", "/api/x%2F..", true},
		{"encoded_dots_too", "/api/x%2F%2E%2E%2Fadmin", true},
		{"encoded_slash_in_an_id", "/files/a%2Fb", false},
		{"three_dots_are_a_name", "/a%2F...%2Fb", false},
		{"dots_inside_a_name", "/a%2F..b%2Fc", false},
		{"plain_dot_segments_resolved", "/a/../b%2Fc", false},
		{"no_escapes", "/api/x/y", false},
	}
	for _, tc := range cases {
		for _, mode := range []PathNormalization{NormalizeBase, NormalizeMergeSlashes, NormalizeDecodeAndMergeSlashes, NormalizeNone} {
			t.Run(tc.name+"/"+mode.String(), func(t *testing.T) {
				_, err := NormalizeRequestPath(tc.target, mode)
				// DECODE_AND_MERGE_SLASHES decodes and resolves them;
				// NONE resolves nothing and says so.
				want := tc.refused && (mode == NormalizeBase || mode == NormalizeMergeSlashes)
				if got := err != nil; got != want {
					t.Fatalf("NormalizeRequestPath(%q, %s) err = %v; refused want %v", tc.target, mode, err, want)
				}
				if err != nil && !errors.Is(err, ErrInvalidPath) {
					t.Fatalf("err %v does not wrap ErrInvalidPath", err)
				}
			})
		}
	}
}

// TestDotSegmentWithParameters: Tomcat, Jetty and Spring strip path
// parameters (";x=1") from each segment before they resolve dot
// segments, so "/public/..;/admin" is /admin to such an app, while RFC
// 3986 (and the policy) reads "..;" as a name: a DENY on /admin let it
// through (the proxy-in-front-of-Tomcat bypass). A "." or ".." segment
// that carries parameters is refused in every mode that resolves dot
// segments; NONE resolves none and lets /a/../admin itself past.
func TestDotSegmentWithParameters(t *testing.T) {
	cases := []struct {
		name, target string
		refused      bool
	}{
		{"dot_dot_semicolon", "/public/..;/admin", true},
		{"dot_dot_with_a_parameter", "/public/..;x=1/admin", true},
		{"dot_semicolon", "/public/.;/admin", true},
		{"encoded_dots", "/public/%2e%2e;/admin", true},
		{"at_the_end", "/public/..;", true},
		{"behind_an_encoded_slash", "/public%2F..;%2Fadmin", true},
		{"parameter_on_a_name", "/admin;jsessionid=1", false},
		{"dots_inside_a_name", "/a/..b;c/d", false},
		{"three_dots", "/a/...;/b", false},
		{"encoded_semicolon_is_a_name", "/a/..%3B/b", false},
		{"semicolon_in_the_query", "/a/b?x=..;", false},
	}
	for _, tc := range cases {
		for _, mode := range []PathNormalization{NormalizeBase, NormalizeMergeSlashes, NormalizeDecodeAndMergeSlashes, NormalizeNone} {
			t.Run(tc.name+"/"+mode.String(), func(t *testing.T) {
				_, err := NormalizeRequestPath(tc.target, mode)
				want := tc.refused && mode != NormalizeNone
				if got := err != nil; got != want {
					t.Fatalf("NormalizeRequestPath(%q, %s) err = %v; refused want %v", tc.target, mode, err, want)
				}
				if err != nil && !errors.Is(err, ErrInvalidPath) {
					t.Fatalf("err %v does not wrap ErrInvalidPath", err)
				}
			})
		}
	}
}

// TestPathPseudoHeaderIsNormalized: request.headers[:path] reads the
// target the app is served, the normalized path and the query, as in
// Istio, where Envoy normalizes :path before any filter sees it. It read
// the target as received, so "moatless policy check" (and an embedding
// proxy that passes the raw target) let /%61dmin and /x/../admin past a
// DENY on :path /admin*, which the sidecar serves as /admin.
func TestPathPseudoHeaderIsNormalized(t *testing.T) {
	s := mustSet(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: d, namespace: foo}
spec:
  action: DENY
  rules:
  - when: [{key: "request.headers[:path]", values: ["/admin*", "*?debug=1"]}]
`, Options{})
	tests := []struct {
		name, target string
		want         Outcome
	}{
		{"plain", "/admin", Deny},
		{"encoded", "/%61dmin", Deny},
		{"dot_segments", "/x/../admin", Deny},
		{"with_query", "/admin?x=1", Deny},
		{"query_kept", "/x/../public?debug=1", Deny},
		{"other_path", "/public", Allow},
		{"admin_in_query_only", "/x?/admin", Allow},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if d := s.Decide(newReq(dst("foo"), path(tc.target))); d.Outcome != tc.want {
				t.Fatalf("%q: %v (%s), want %v", tc.target, d.Outcome, d.Reason, tc.want)
			}
		})
	}
}

// TestPathParametersAreReadBothWays: Tomcat, Jetty and Spring drop a
// segment's path parameters (";jsessionid=1") and merge the slashes
// left behind before they route, so "/admin;x" is /admin to them, and
// Istio's DENY on /admin let it through. A path with parameters is now
// matched both as received and as those servers read it: a DENY (AUDIT,
// CUSTOM) rule applies when either reading matches, an ALLOW rule only
// when both do.
func TestPathParametersAreReadBothWays(t *testing.T) {
	deny := mustSet(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin", "/ops/*"]}}]}]
`, Options{})
	allow := mustSet(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-api, namespace: foo}
spec:
  rules:
  - to: [{operation: {paths: ["/api/*", "/login"]}}]
  - to: [{operation: {paths: ["/files/*"], notPaths: ["/files/secret"]}}]
`, Options{})
	tests := []struct {
		name   string
		set    *Set
		target string
		want   Outcome
	}{
		{"deny_exact_with_parameter", deny, "/admin;x=1", Deny},
		{"deny_exact_with_empty_parameter", deny, "/admin;", Deny},
		{"deny_behind_an_emptied_segment", deny, "/;x/admin", Deny},
		{"deny_prefix_with_parameter", deny, "/ops;v=2/keys", Deny},
		{"deny_other_path_with_parameter", deny, "/public;x", Allow},
		{"deny_no_parameter", deny, "/public", Allow},
		{"allow_with_session_parameter", allow, "/api/x;jsessionid=1", Allow},
		{"allow_exact_with_parameter_still_refused", allow, "/login;jsessionid=1", Deny},
		{"allow_not_paths_with_parameter", allow, "/files/secret;x", Deny},
		{"allow_other_file_with_parameter", allow, "/files/public;x", Allow},
		{"allow_parameter_in_the_query_only", allow, "/api/x?a=1;b=2", Allow},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if d := tc.set.Decide(newReq(dst("foo"), path(tc.target))); d.Outcome != tc.want {
				t.Fatalf("%q: %v (%s), want %v", tc.target, d.Outcome, d.Reason, tc.want)
			}
		})
	}
}

// TestPathsAreReadAsAppsRouteThem: besides path parameters, a path is
// matched as apps that decode %2F and %5C before routing read it (WSGI,
// PHP: "/admin%2Fusers" is /admin/users, which Istio's BASE keeps as one
// segment) and ignoring ASCII case (Express, ASP.NET Core, IIS:
// "/ADMIN/users" is /admin/users), and every combination: a DENY rule
// applies when any reading matches, an ALLOW rule only when all do.
func TestPathsAreReadAsAppsRouteThem(t *testing.T) {
	const deny = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin", "/admin/*", "*.PHP", "/api/{*}/Secret"]}}]}]
`
	const allow = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-files, namespace: foo}
spec:
  rules:
  - to: [{operation: {paths: ["/files/*", "/Public/x"], notPaths: ["/files/secret", "/files/private/*"]}}]
  - to: [{operation: {paths: ["/api/*"]}}]
`
	sets := map[PathNormalization][2]*Set{}
	for _, m := range []PathNormalization{NormalizeBase, NormalizeMergeSlashes, NormalizeDecodeAndMergeSlashes, NormalizeNone} {
		sets[m] = [2]*Set{mustSet(t, deny, Options{PathNormalization: m}), mustSet(t, allow, Options{PathNormalization: m})}
	}
	const D, A = 0, 1
	tests := []struct {
		name   string
		set    int
		mode   PathNormalization
		target string
		want   Outcome
	}{
		{"deny_encoded_slash", D, NormalizeBase, "/admin%2Fusers", Deny},
		{"deny_encoded_slash_lower_hex", D, NormalizeBase, "/admin%2fusers", Deny},
		{"deny_encoded_backslash", D, NormalizeBase, "/admin%5Cusers", Deny},
		{"deny_encoded_slash_merged", D, NormalizeMergeSlashes, "/admin%2F%2Fusers", Deny},
		{"deny_encoded_slash_base_runs", D, NormalizeBase, "/x/..//admin%2F", Deny},
		{"deny_encoded_slash_before", D, NormalizeBase, "%2Fadmin", Deny}, // not origin-form: refused
		{"deny_encoded_slash_leading", D, NormalizeBase, "/%2Fadmin", Deny},
		{"deny_decoded_already", D, NormalizeDecodeAndMergeSlashes, "/admin%2Fusers", Deny},
		{"deny_none_keeps_encoded", D, NormalizeNone, "/admin%2Fusers", Allow},
		{"deny_upper_case", D, NormalizeBase, "/ADMIN/users", Deny},
		{"deny_mixed_case_exact", D, NormalizeBase, "/Admin", Deny},
		{"deny_upper_case_none", D, NormalizeNone, "/ADMIN", Deny},
		{"deny_suffix_lower_case", D, NormalizeBase, "/index.php", Deny},
		{"deny_template_case", D, NormalizeBase, "/API/v1/secret", Deny},
		{"deny_template_other_segment", D, NormalizeBase, "/api/v1/public", Allow},
		{"deny_case_and_slash", D, NormalizeBase, "/Admin%2FUsers", Deny},
		{"deny_case_and_parameter", D, NormalizeBase, "/ADMIN;x", Deny},
		{"deny_slash_in_parameter", D, NormalizeBase, "/admin;x%2Fusers", Deny},
		{"deny_parameter_then_slash", D, NormalizeBase, "/x;a%2F/admin", Allow}, // /x/admin or /x: no reading is /admin
		{"deny_slash_parameter_case", D, NormalizeBase, "/;x%2FADMIN", Deny},    // decoded, then parameters dropped: /ADMIN
		{"deny_other", D, NormalizeBase, "/administrator%2Fx", Allow},
		{"deny_other_upper", D, NormalizeBase, "/Public/Admin", Allow},
		{"allow_files", A, NormalizeBase, "/files/report", Allow},
		{"allow_files_upper", A, NormalizeBase, "/files/Report", Allow},
		{"allow_secret_upper", A, NormalizeBase, "/files/SECRET", Deny},
		{"allow_private_encoded", A, NormalizeBase, "/files/private%2Fkey", Deny},
		{"allow_private_case_encoded_parameter", A, NormalizeBase, "/files/PRIVATE;v=1%2Fkey", Deny},
		{"allow_encoded_in_data", A, NormalizeBase, "/files/a%2Fb", Allow},
		{"allow_named_case_exact", A, NormalizeBase, "/Public/x", Allow},
		{"allow_named_case_other", A, NormalizeBase, "/public/x", Deny},
		{"allow_api_encoded_out", A, NormalizeBase, "/api%2F..%2Ffiles", Deny}, // refused: dots by an encoded slash
		{"allow_api_decoded_elsewhere", A, NormalizeBase, "/api;x%2F/../admin", Deny},
		{"allow_prefix_left_when_decoded", A, NormalizeMergeSlashes, "/files%2Fsecret", Deny}, // "/files%2Fsecret" is not under /files/ as received
		// Runs of "/" are merged by most routers (Express, Gin, Spring,
		// nginx): BASE and NONE keep them, so "//admin" is read merged too.
		{"deny_double_slash", D, NormalizeBase, "//admin", Deny},
		{"deny_slashes_inside", D, NormalizeBase, "///admin//users", Deny},
		{"deny_double_slash_none", D, NormalizeNone, "//admin", Deny},
		{"deny_double_slash_upper", D, NormalizeBase, "//ADMIN", Deny},
		{"deny_double_slash_merged_already", D, NormalizeMergeSlashes, "//admin", Deny},
		{"deny_double_slash_other", D, NormalizeBase, "//administrator", Allow},
		{"allow_double_slash_secret", A, NormalizeBase, "/files//secret", Deny},
		{"allow_double_slash_private_none", A, NormalizeNone, "/files//private//key", Deny},
		{"allow_double_slash_data", A, NormalizeBase, "/files//report", Allow},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := sets[tc.mode][tc.set]
			if d := s.Decide(newReq(dst("foo"), path(tc.target))); d.Outcome != tc.want {
				t.Fatalf("%s %q: %v (%s), want %v", tc.mode, tc.target, d.Outcome, d.Reason, tc.want)
			}
		})
	}
}

// A request.headers[:path] condition reads the path as paths and
// notPaths do: under every reading, ignoring case too (an app that
// routes ignoring case serves "/ADMIN" as /admin) and with slashes
// merged ("//admin"). Before, a DENY on :path "/admin*" let "/ADMIN"
// and "//admin" through, and an ALLOW with notValues "/internal*" let
// "/INTERNAL/x" through.
func TestPathConditionReadAsPaths(t *testing.T) {
	s := mustSet(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules: [{when: [{key: "request.headers[:path]", values: ["/admin*", "*.PHP"]}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-public, namespace: foo}
spec:
  rules: [{when: [{key: "request.headers[:path]", notValues: ["/internal*", "/Secret"]}]}]
`, Options{})
	for _, tc := range []struct {
		target string
		want   Outcome
	}{
		{"/admin/users", Deny},
		{"/ADMIN/users", Deny},
		{"/Admin?x=1", Deny},
		{"//admin", Deny},
		{"//Admin/x", Deny},
		{"/admin;x", Deny},
		{"/index.php", Deny},
		{"/public/x", Allow},
		{"/internal/x", Deny},
		{"/INTERNAL/x", Deny},
		{"//internal", Deny},
		{"/secret", Deny},
		{"/Secret", Deny},
		{"/secrets", Allow},
	} {
		if d := s.Decide(newReq(dst("foo"), path(tc.target))); d.Outcome != tc.want {
			t.Errorf("%q: %v (%s), want %v", tc.target, d.Outcome, d.Reason, tc.want)
		}
	}
}

// TestPathReadings: the readings of a normalized path other than itself.
func TestPathReadings(t *testing.T) {
	tests := []struct {
		path string
		mode PathNormalization
		want []string
	}{
		{"/api/v1/x", NormalizeBase, nil},
		{"/a%20b", NormalizeBase, nil},
		{"/a;x", NormalizeBase, []string{"/a"}},
		{"/a%2Fb", NormalizeBase, []string{"/a/b"}},
		{"/a%2Fb", NormalizeNone, nil},
		{"/a%5C%2F%2Fb", NormalizeMergeSlashes, []string{"/a/b"}},
		{"//a%2F/b", NormalizeBase, []string{"/a/b", "/a%2F/b"}},
		{"//a", NormalizeBase, []string{"/a"}},
		{"//a", NormalizeNone, []string{"/a"}},
		{"/a//b;x", NormalizeBase, []string{"/a/b", "/a/b;x"}},
		{"/a;x%2Fb", NormalizeBase, []string{"/a", "/a;x/b", "/a/b"}},
		{"/a%2Fb;x/c", NormalizeBase, []string{"/a%2Fb/c", "/a/b;x/c", "/a/b/c"}},
		{"/a;x%2Fb%2Fc;y/d", NormalizeBase, []string{"/a/d", "/a;x/b/c;y/d", "/a/b/c/d"}},
	}
	for _, tc := range tests {
		var alts [maxReadings]string
		var kinds [maxReadings]uint8
		n, err := pathReadings(tc.path, tc.mode, &alts, &kinds)
		if err != nil {
			t.Errorf("%s %q: %v", tc.mode, tc.path, err)
			continue
		}
		if got := alts[:n]; !slices.Equal(got, tc.want) && !(n == 0 && tc.want == nil) {
			t.Errorf("%s %q: %q, want %q", tc.mode, tc.path, got, tc.want)
		}
	}
}

// TestExplainReadsPathsAsAppsRouteThem: --explain traces the rules as
// Decide applies them under every reading of the path (path parameters
// dropped, %2F decoded, ignoring case), and names the reading that made
// an ALLOW rule fail.
func TestExplainReadsPathsAsAppsRouteThem(t *testing.T) {
	s := mustSet(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin", "/admin/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-files, namespace: foo}
spec:
  rules: [{to: [{operation: {paths: ["/files/*"], notPaths: ["/files/secret", "/files/secret/*"]}}]}]
`, Options{})
	for _, tc := range []struct{ target, policy, why string }{
		{"/admin;x", "foo/deny-admin", ""},
		{"/files/secret;x", "foo/allow-files", `as Java servers read the path ("/files/secret", path parameters dropped)`},
		{"/admin%2Fusers", "foo/deny-admin", ""},
		{"/ADMIN/users", "foo/deny-admin", ""},
		{"/files/secret%2Fk", "foo/allow-files", `as apps that decode %2F read the path ("/files/secret/k", %2F and %5C decoded)`},
		{"/files/Secret/k", "foo/allow-files", `as apps that route ignoring case read the path ("/files/Secret/k", ignoring case)`},
		{"/files/Secret;x%2Fk", "foo/allow-files", `as Java servers read the path ("/files/Secret", path parameters dropped, ignoring case)`},
		{"/files/SECRET%2Fk;x", "foo/allow-files", `as apps that decode %2F read the path ("/files/SECRET/k;x", %2F and %5C decoded, ignoring case)`},
		{"/files//secret", "foo/allow-files", `as apps that merge slashes read the path ("/files/secret", slashes merged)`},
		{"//ADMIN", "foo/deny-admin", ""},
	} {
		d := s.Decide(newReq(dst("foo"), path(tc.target)))
		e := s.Explain(newReq(dst("foo"), path(tc.target)), nil)
		if d.Outcome != Deny {
			t.Errorf("%s: %v, want deny", tc.target, d.Outcome)
		}
		found := false
		for _, p := range e.Policies {
			if p.Policy != tc.policy {
				continue
			}
			found = true
			if why := p.Rules[0].Why; tc.why == "" && why != "" || !strings.HasPrefix(why, tc.why) {
				t.Errorf("%s: %s rule 0: %q, want %q…", tc.target, tc.policy, why, tc.why)
			}
		}
		if !found {
			t.Errorf("%s: no trace of %s", tc.target, tc.policy)
		}
	}
	if got, want := readingNote("/a/b", readParams|readSlashes, true), `as apps that decode %2F and drop path parameters read the path ("/a/b", %2F and %5C decoded, path parameters dropped, ignoring case)`; got != want {
		t.Errorf("readingNote: %q, want %q", got, want)
	}
}

// TestLowerCaseMethodsAreBadRequests: "delete" is DELETE to Django and
// Rack; policy matches methods exactly, so a method with a lower-case
// letter is refused as a bad request rather than decided on.
func TestLowerCaseMethodsAreBadRequests(t *testing.T) {
	s := mustSet(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: ["DELETE"]}}]}]
`, Options{})
	for _, tc := range []struct {
		method string
		want   Outcome
		bad    bool
	}{
		{"GET", Allow, false},
		{"DELETE", Deny, false},
		{"delete", Deny, true},
		{"Delete", Deny, true},
		{"get", Deny, true},
		{"M-SEARCH", Allow, false},
	} {
		d := s.Decide(newReq(dst("foo"), method(tc.method)))
		if d.Outcome != tc.want || tc.bad != strings.HasPrefix(d.Reason, "bad request: ") {
			t.Errorf("%s: %v (%s), want %v (bad request: %v)", tc.method, d.Outcome, d.Reason, tc.want, tc.bad)
		}
		if err := CheckMethod(tc.method); (err != nil) != tc.bad || err != nil && !errors.Is(err, ErrInvalidMethod) {
			t.Errorf("CheckMethod(%q) = %v", tc.method, err)
		}
	}
}

package policy

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	securityv1beta1 "istio.io/api/security/v1beta1"

	"github.com/moatless/moatless/internal/wire"
)

func TestParseAcceptsIstioDocuments(t *testing.T) {
	input := `# policies for the shop
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-orders
  namespace: prod
  labels: {team: payments}
  annotations: {istio.io/dry-run: "false", note: "x"}
  uid: 0b7f            # kubectl output fields are ignored
  resourceVersion: "12"
spec:
  selector:
    matchLabels: {app: payments}
  rules:
  - from:
    - source: {principals: ["td/ns/prod/sa/orders"]}
---
# a document of comments only is skipped
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: v1
kind: List
items:
- apiVersion: security.istio.io/v1
  kind: RequestAuthentication
  metadata: {name: jwt, namespace: prod}
  spec:
    jwtRules:
    - issuer: https://issuer.example
      jwks_uri: https://issuer.example/keys
      timeout: 3s
  status: {}
`
	docs, err := ParseSource("p.yaml", strings.NewReader(input))
	if err != nil {
		t.Fatal(err)
	}
	type summary struct {
		Index                       int
		Line                        int
		Kind, APIVersion, Namespace string
		Name                        string
		DryRun                      bool
	}
	var got []summary
	for _, d := range docs {
		got = append(got, summary{d.Index, d.Line, d.Kind, d.APIVersion, d.Namespace, d.Name, d.DryRun})
		if d.Source != "p.yaml" {
			t.Errorf("Source = %q", d.Source)
		}
	}
	want := []summary{
		{1, 2, KindAuthorizationPolicy, "security.istio.io/v1", "prod", "allow-orders", false},
		{2, 20, KindPeerAuthentication, "security.istio.io/v1beta1", DefaultNamespace, "default", false},
		{3, 28, KindRequestAuthentication, "security.istio.io/v1", "prod", "jwt", false},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("documents (-want +got):\n%s", diff)
	}
	ap := docs[0].Spec.(*securityv1beta1.AuthorizationPolicy)
	if ap.GetRules()[0].GetFrom()[0].GetSource().GetPrincipals()[0] != "td/ns/prod/sa/orders" {
		t.Errorf("spec not decoded: %v", ap)
	}
	if docs[2].Spec.(*securityv1beta1.RequestAuthentication).GetJwtRules()[0].GetJwksUri() != "https://issuer.example/keys" {
		t.Errorf("jwks_uri (Istio's alternative name) not decoded")
	}
}

// Raw is canonical: it round-trips through ParseJSON to the same bytes,
// and equal documents written differently give equal Raw.
func TestRawIsCanonical(t *testing.T) {
	a := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: x, namespace: prod, uid: abc}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
`
	b := `{"kind":"AuthorizationPolicy","apiVersion":"security.istio.io/v1",
 "spec":{"rules":[{"to":[{"operation":{"methods":["DELETE"]}}]}],"action":"DENY"},
 "metadata":{"namespace":"prod","name":"x"}}`
	da, err := Parse(strings.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	db, err := Parse(strings.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if string(da[0].Raw) != string(db[0].Raw) {
		t.Errorf("Raw differs:\n%s\n%s", da[0].Raw, db[0].Raw)
	}
	rt, err := ParseJSON(da[0].Raw)
	if err != nil {
		t.Fatal(err)
	}
	if string(rt.Raw) != string(da[0].Raw) {
		t.Errorf("ParseJSON(Raw).Raw = %s, want %s", rt.Raw, da[0].Raw)
	}
	if !json.Valid(rt.Raw) {
		t.Errorf("Raw is not JSON")
	}
}

func TestParseRejects(t *testing.T) {
	const head = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: prod}\n"
	tests := []struct {
		name  string
		input string
		want  []string // substrings of the error, in order
	}{
		{"unknown_field_with_line_and_hint", head + "spec:\n  rules:\n  - from:\n    - source:\n        principal: [\"x\"]\n",
			[]string{"document 1 (AuthorizationPolicy prod/p), line 8: spec.rules[0].from[0].source.principal: unknown field \"principal\"; did you mean \"principals\"?"}},
		{"snake_case_field", head + "spec:\n  rules:\n  - from:\n    - source:\n        not_principals: [\"x\"]\n",
			[]string{"line 8", "unknown field \"not_principals\"; did you mean \"notPrincipals\"?"}},
		{"unknown_kind", "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\n",
			[]string{"document 1, line 2: kind: unsupported kind \"VirtualService\""}},
		{"wrong_api_version", "apiVersion: security.istio.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: v}\n",
			[]string{"line 1: apiVersion: unsupported apiVersion \"security.istio.io/v1alpha1\""}},
		{"second_document_line", head + "spec: {}\n---\n" + head + "spec:\n  action: ALOW\n",
			[]string{"document 2 (AuthorizationPolicy prod/p), line 10: spec.action: \"ALOW\" is not one of ALLOW, DENY, AUDIT, CUSTOM"}},
		{"unquoted_port", head + "spec:\n  rules:\n  - to:\n    - operation:\n        ports: [8080]\n",
			[]string{"line 8: spec.rules[0].to[0].operation.ports[0]: must be a string, not the number 8080 (quote it"}},
		{"yaml_boolean", head + "spec:\n  rules:\n  - when:\n    - key: request.headers[X-A]\n      values: [yes]\n",
			[]string{"values[0]: must be a string, not the boolean true", "yes, no, on, off"}},
		{"scalar_for_list", head + "spec:\n  rules:\n  - to:\n    - operation:\n        methods: GET\n",
			[]string{"methods: must be a list, not \"GET\" (write [\"GET\"]"}},
		{"bad_cidr", head + "spec:\n  rules:\n  - from:\n    - source:\n        ipBlocks: [\"10.0.0.0/33\"]\n",
			[]string{"line 8: spec.rules[0].from[0].source.ipBlocks[0]: bad CIDR range \"10.0.0.0/33\""}},
		{"bad_port", head + "spec:\n  rules:\n  - to:\n    - operation:\n        ports: [\"http\"]\n",
			[]string{"ports[0]: bad port \"http\""}},
		{"bad_when_key", head + "spec:\n  rules:\n  - when:\n    - key: request.header[x]\n      values: [a]\n",
			[]string{"line 7: spec.rules[0].when[0].key: unknown attribute \"request.header[x]\""}},
		{"envoy_filter_key", head + "spec:\n  rules:\n  - when:\n    - key: experimental.envoy.filters.a.b[c]\n      values: [a]\n",
			[]string{"Envoy filter metadata"}},
		{"retired_key", head + "spec:\n  rules:\n  - when:\n    - key: destination.labels[app]\n      values: [a]\n",
			[]string{"replaced by the workload selector"}},
		{"when_without_values", head + "spec:\n  rules:\n  - when:\n    - key: source.ip\n",
			[]string{"at least one of `values` or `notValues` must be set for key source.ip"}},
		{"empty_value", head + "spec:\n  rules:\n  - to:\n    - operation:\n        paths: [\"\"]\n",
			[]string{"paths[0]: empty value not allowed"}},
		{"empty_source", head + "spec:\n  rules:\n  - from:\n    - source: {}\n",
			[]string{"spec.rules[0].from[0].source: `from.source` must not be empty"}},
		{"empty_operation", head + "spec:\n  rules:\n  - to:\n    - operation: {}\n",
			[]string{"`to.operation` must not be empty"}},
		{"deny_without_rules", head + "spec:\n  action: DENY\n",
			[]string{"spec.rules: DENY action without `rules` is meaningless"}},
		{"custom_without_provider", head + "spec:\n  action: CUSTOM\n  rules: [{}]\n",
			[]string{"spec.provider.name: `provider.name` must not be empty"}},
		{"provider_on_allow", head + "spec:\n  provider: {name: x}\n  rules: [{}]\n",
			[]string{"`provider` must not be with non CUSTOM action"}},
		{"custom_with_principals", head + "spec:\n  action: CUSTOM\n  provider: {name: x}\n  rules:\n  - from:\n    - source: {principals: [a]}\n",
			[]string{"principals is currently not supported with CUSTOM action"}},
		{"service_accounts_with_principals", head + "spec:\n  rules:\n  - from:\n    - source: {serviceAccounts: [a], principals: [b]}\n",
			[]string{"cannot set serviceAccounts with namespaces or principals"}},
		{"service_account_wildcard", head + "spec:\n  rules:\n  - from:\n    - source: {serviceAccounts: [\"ns/*\"]}\n",
			[]string{"wildcards are not allowed in serviceAccounts"}},
		{"selector_wildcard", head + "spec:\n  selector: {matchLabels: {app: \"web*\"}}\n",
			[]string{"spec.selector.matchLabels.app: wildcard is not supported in selector"}},
		{"selector_and_target_refs", head + "spec:\n  selector: {matchLabels: {app: a}}\n  targetRefs: [{kind: Gateway, name: g}]\n",
			[]string{"only one of selector, targetRef or targetRefs can be set"}},
		{"target_ref_cross_namespace", head + "spec:\n  targetRefs: [{kind: Gateway, name: g, namespace: other}]\n",
			[]string{"spec.targetRefs[0].namespace: cross namespace referencing is not currently supported"}},
		{"bad_path_template", head + "spec:\n  rules:\n  - to:\n    - operation:\n        paths: [\"/{**}/foo/{*}\"]\n",
			[]string{"{**} must be the last operator"}},
		{"template_with_extension", head + "spec:\n  rules:\n  - to:\n    - operation:\n        paths: [\"/{*}/foo/{*}.txt\"]\n",
			[]string{"invalid path template"}},
		{"named_variable", head + "spec:\n  rules:\n  - to:\n    - operation:\n        paths: [\"/foo/{buzz}\"]\n",
			[]string{"invalid path template"}},
		{"missing_name", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {namespace: prod}\n",
			[]string{"metadata.name: metadata.name is required"}},
		{"bad_name", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: Bad_Name}\n",
			[]string{"metadata.name: \"Bad_Name\" is not a valid name"}},
		{"metadata_typo", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespce: prod}\n",
			[]string{"metadata.namespce: unknown field \"namespce\"; did you mean \"namespace\"?"}},
		{"top_level_typo", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\nspecs: {}\n",
			[]string{"line 4: specs: unknown field \"specs\"; did you mean \"spec\"?"}},
		{"bad_dry_run", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, annotations: {istio.io/dry-run: maybe}}\n",
			[]string{"metadata.annotations[\"istio.io/dry-run\"]: \"maybe\" is not a boolean"}},
		{"duplicate_yaml_key", head + "spec:\n  action: DENY\n  action: ALLOW\n",
			[]string{"malformed YAML", "line 6"}},
		{"malformed_yaml_line_is_absolute", head + "spec: {}\n---\n" + head + "spec:\n  rules: [\n",
			[]string{"document 2, line 6: malformed YAML", "line 10"}},
		{"duplicate_object", head + "spec: {}\n---\n" + head + "spec: {rules: [{}]}\n",
			[]string{"document 2 (AuthorizationPolicy prod/p), line 6: duplicate: AuthorizationPolicy prod/p is also defined in document 1"}},
		{"not_a_mapping", "- a\n- b\n", []string{"document 1, line 1: a policy document must be a mapping"}},
		{"peer_port_without_selector", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\nspec:\n  portLevelMtls:\n    8080: {mode: DISABLE}\n",
			[]string{"spec.portLevelMtls: mesh/namespace peer authentication cannot have port level mTLS"}},
		{"peer_bad_port", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\nspec:\n  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    \"0\": {mode: DISABLE}\n",
			[]string{"line 7: spec.portLevelMtls[\"0\"]: \"0\" is not a port number"}},
		{"jwt_without_issuer_nor_keys", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a}\nspec:\n  jwtRules:\n  - fromParams: [t]\n",
			[]string{"spec.jwtRules[0].issuer: issuer is required unless jwksUri or jwks is set"}},
		{"jwt_jwks_and_uri", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a}\nspec:\n  jwtRules:\n  - {issuer: i, jwksUri: \"https://x/k\", jwks: '{\"keys\":[]}'}\n",
			[]string{"only one of jwks or jwksUri can be set"}},
		{"jwt_bad_uri", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a}\nspec:\n  jwtRules:\n  - {issuer: i, jwksUri: \"ftp://x/k\"}\n",
			[]string{"url must have scheme http:// or https://"}},
		{"jwt_bad_jwks", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a}\nspec:\n  jwtRules:\n  - {issuer: i, jwks: 'not json'}\n",
			[]string{"jwks parse error"}},
		{"jwt_duplicate_claim_header", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a}\nspec:\n  jwtRules:\n  - issuer: i\n    outputClaimToHeaders: [{header: x-a, claim: a}, {header: X-A, claim: b}]\n",
			[]string{"outputClaimToHeaders[1].header: header \"X-A\" is set twice"}},
		{"jwt_header_name", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a}\nspec:\n  jwtRules:\n  - issuer: i\n    fromHeaders: [{name: \"bad header\"}]\n",
			[]string{"fromHeaders[0].name: \"bad header\" is not a valid header name"}},
		{"jwt_empty_param", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a}\nspec:\n  jwtRules:\n  - issuer: i\n    fromParams: [\"\"]\n",
			[]string{"fromParams[0]: location query must be non-empty string"}},
		{"jwt_negative_timeout", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a}\nspec:\n  jwtRules:\n  - issuer: i\n    timeout: -1s\n",
			[]string{"timeout: must be a positive duration"}},
		{"jwt_timeout_not_string", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a}\nspec:\n  jwtRules:\n  - issuer: i\n    timeout: 5\n",
			[]string{"timeout: must be a duration string such as \"5s\""}},
		{"jwt_payload_header", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a}\nspec:\n  jwtRules:\n  - issuer: i\n    outputPayloadToHeader: \"x y\"\n",
			[]string{"outputPayloadToHeader: \"x y\" is not a valid header name"}},
		{"jwt_space_delimited_empty", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: a}\nspec:\n  jwtRules:\n  - issuer: i\n    spaceDelimitedClaims: [\"\"]\n",
			[]string{"spaceDelimitedClaims[0]: claim name must be non-empty string"}},
		{"target_ref_without_kind", head + "spec:\n  targetRef: {name: g}\n",
			[]string{"spec.targetRef.kind: kind is required"}},
		{"too_many_target_refs", head + "spec:\n  targetRefs: [" + strings.Repeat("{kind: Gateway, name: g},", 17) + "]\n",
			[]string{"spec.targetRefs: at most 16 targetRefs"}},
		{"selector_empty_key", head + "spec:\n  selector: {matchLabels: {\"\": a}}\n",
			[]string{"empty key is not supported in selector"}},
		{"custom_when_request_auth", head + "spec:\n  action: CUSTOM\n  provider: {name: x}\n  rules:\n  - when: [{key: \"request.auth.claims[a]\", values: [b]}]\n",
			[]string{"request.auth.claims[a] is currently not supported with CUSTOM action"}},
		{"list_in_list", "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n  items: []\n",
			[]string{"items[0].kind: a List cannot contain a List"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			docs, err := ParseSource("in.yaml", strings.NewReader(tc.input))
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", docs)
			}
			if docs != nil {
				t.Errorf("Parse returned documents with an error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "in.yaml: ") {
				t.Errorf("error does not name the file: %q", msg)
			}
			for _, w := range tc.want {
				i := strings.Index(msg, w)
				if i < 0 {
					t.Fatalf("error %q\ndoes not contain %q", msg, w)
				}
				msg = msg[i+len(w):]
			}
		})
	}
}

func TestParseReportsEveryBadDocument(t *testing.T) {
	bad := "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p%d}\nspec: {action: NOPE}\n---\n"
	var b strings.Builder
	for i := 0; i < 3; i++ {
		b.WriteString(strings.Replace(bad, "%d", string(rune('a'+i)), 1))
	}
	_, err := Parse(strings.NewReader(b.String()))
	if err == nil {
		t.Fatal("accepted")
	}
	if n := strings.Count(err.Error(), "is not one of"); n != 3 {
		t.Errorf("%d errors reported, want 3:\n%v", n, err)
	}
}

func TestParseLimits(t *testing.T) {
	t.Run("input_too_large", func(t *testing.T) {
		_, err := Parse(strings.NewReader(strings.Repeat("#", MaxInputSize+1)))
		if err == nil || !strings.Contains(err.Error(), "larger than") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("document_too_large", func(t *testing.T) {
		_, err := Parse(strings.NewReader("a: " + strings.Repeat("x", MaxDocumentSize)))
		if err == nil || !strings.Contains(err.Error(), "document is larger than") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("alias_bomb", func(t *testing.T) {
		bomb := "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
		if _, err := Parse(strings.NewReader(bomb)); err == nil {
			t.Errorf("alias bomb accepted")
		}
	})
	t.Run("deep_json", func(t *testing.T) {
		deep := strings.Repeat("[", 200) + strings.Repeat("]", 200)
		if _, err := ParseJSON([]byte(deep)); err == nil || !strings.Contains(err.Error(), "nested deeper") {
			t.Errorf("err = %v", err)
		}
	})
}

func TestParseJSON(t *testing.T) {
	tests := []struct {
		name, input, want string
	}{
		{"duplicate_key", `{"apiVersion":"security.istio.io/v1","kind":"PeerAuthentication","kind":"X","metadata":{"name":"a"}}`, `duplicate key "kind"`},
		{"trailing_data", `{"apiVersion":"security.istio.io/v1","kind":"PeerAuthentication","metadata":{"name":"a"}} {}`, "unexpected data after the document"},
		{"list", `{"apiVersion":"v1","kind":"List","items":[]}`, "a List is not accepted here"},
		{"array", `[]`, "must be a JSON object"},
		{"enum_number", `{"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy","metadata":{"name":"a"},"spec":{"action":1}}`, "spec.action: must be one of ALLOW, DENY, AUDIT, CUSTOM, not the number 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseJSON([]byte(tc.input))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestFromWire(t *testing.T) {
	docs, err := Parse(strings.NewReader(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: prod}
spec: {}
`))
	if err != nil {
		t.Fatal(err)
	}
	s, err := FromWire(&wire.PolicySet{Version: 7, Documents: []json.RawMessage{docs[0].Raw}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Version() != 7 {
		t.Errorf("Version = %d", s.Version())
	}
	if d := s.Decide(newReq(dst("prod"))); d.Outcome != Deny {
		t.Errorf("decision = %+v", d)
	}
	_, err = FromWire(&wire.PolicySet{Version: 8, Documents: []json.RawMessage{docs[0].Raw, docs[0].Raw}}, Options{})
	if err == nil || !strings.Contains(err.Error(), "version 8") || !strings.Contains(err.Error(), "duplicate") {
		t.Errorf("duplicate documents: err = %v", err)
	}
}

func TestWarnings(t *testing.T) {
	s := mustSet(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-http-only, namespace: prod}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [post]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: authority-header, namespace: prod}
spec:
  action: DENY
  rules: [{when: [{key: "request.headers[Host]", values: [admin.example.com]}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-scheme, namespace: prod}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: ["td/ns/a/sa/ok", "spiffe://td/ns/a/sa/b"]}}]
  - when: [{key: source.principal, values: ["spiffe://td/ns/a/sa/c"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-get, namespace: prod}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [GET], paths: [/admin]}}, {operation: {methods: [GET, HEAD], paths: [/ops]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-subtree, namespace: prod}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/internal/*", "/ops/{**}", "/ops", "/keys/*", "/keys*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gw, namespace: prod}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: prod}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: b, namespace: prod}
spec: {mtls: {mode: DISABLE}}
`, Options{})
	all := strings.Join(s.Warnings(), "\n")
	for _, w := range []string{
		"AuthorizationPolicy prod/deny-http-only: rule 0: configured AuthorizationPolicy will deny all traffic to TCP ports",
		`method "post" is not upper case`,
		"AuthorizationPolicy prod/gw: targetRefs bind a policy",
		"AuthorizationPolicy prod/authority-header: spec.rules[0].when[0].key: request.headers[Host] matches the Host header as sent",
		"PeerAuthentication prod/b: PeerAuthentication prod/b is ignored: prod/a is already the namespace-wide policy",
		"AuthorizationPolicy prod/deny-get: spec.rules[0].to[0].operation.methods: a DENY on GET does not cover HEAD",
		`AuthorizationPolicy prod/deny-scheme: spec.rules[0].from[0].source.principals[1]: "spiffe://td/ns/a/sa/b" never matches: principals are SPIFFE IDs without "spiffe://" (write "td/ns/a/sa/b")`,
		`AuthorizationPolicy prod/deny-scheme: spec.rules[1].when[0].values[0]: "spiffe://td/ns/a/sa/c" never matches`,
		`AuthorizationPolicy prod/deny-subtree: spec.rules[0].to[0].operation.paths[0]: "/internal/*" does not cover "/internal" itself`,
	} {
		if !strings.Contains(all, w) {
			t.Errorf("warnings lack %q:\n%s", w, all)
		}
	}
	if strings.Count(all, "itself, which most apps serve") != 1 {
		t.Errorf("want one subtree warning (for /internal/*):\n%s", all)
	}
	if strings.Contains(all, "to[1].operation.methods: a DENY on GET") {
		t.Errorf("warned about a DENY that lists HEAD:\n%s", all)
	}
	// The targetRefs policy allows everything but applies to no sidecar.
	if d := s.Decide(newReq(dst("prod"), method("GET"))); d.Outcome != Allow || d.Policy != "" {
		t.Errorf("targetRefs policy applied to a sidecar: %+v", d)
	}
	if m, ref := s.MTLSPolicy(Destination{Namespace: "prod"}); m != ModeStrict || ref != "prod/a" {
		t.Errorf("first namespace-wide PeerAuthentication should win: %v %s", m, ref)
	}
}

package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/policy/policytest"
)

// checkCLI runs "moatless policy check" in-process.
func checkCLI(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &Env{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }}
	code := e.main(context.Background(), append([]string{"policy", "check"}, args...))
	return code, out.String(), errb.String()
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const shopPolicies = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: payments-from-orders, namespace: prod}
spec:
  selector: {matchLabels: {app: payments}}
  rules:
  - from: [{source: {principals: ["td/ns/prod/sa/orders"]}}]
    to: [{operation: {methods: ["POST"], paths: ["/api/v1/payments/*"]}}]
`

func shopRequest(principal, method string) string {
	return `{"source": {"principal": "` + principal + `", "ip": "10.1.2.3"},
  "destination": {"namespace": "prod", "labels": {"app": "payments"}, "port": 8080},
  "request": {"protocol": "http", "method": "` + method + `", "path": "/api/v1/payments/42?x=1", "host": "payments.prod"}}`
}

func TestPolicyCheckDecisions(t *testing.T) {
	dir := t.TempDir()
	pol := writeFile(t, dir, "policies/shop.yaml", shopPolicies)
	tests := []struct {
		name     string
		req      string
		decision string
		policy   string
		rule     any
		reason   string
	}{
		{"allowed", shopRequest("spiffe://td/ns/prod/sa/orders", "POST"), "allow", "prod/payments-from-orders", 0.0, "matched ALLOW rule 0 of prod/payments-from-orders"},
		{"wrong_method", shopRequest("spiffe://td/ns/prod/sa/orders", "GET"), "deny", "", nil, "no ALLOW rule matched"},
		{"wrong_caller", shopRequest("spiffe://td/ns/prod/sa/web", "POST"), "deny", "", nil, "no ALLOW rule matched"},
		{"plaintext_to_strict", shopRequest("", "POST"), "deny", "istio-system/default", nil, "mTLS required (STRICT)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := writeFile(t, dir, tc.name+".json", tc.req)
			code, stdout, stderr := checkCLI(t, "", "-f", filepath.Dir(pol), "--request", req, "-o", "json")
			if code != ExitOK {
				t.Fatalf("exit %d, stderr %s", code, stderr)
			}
			var got map[string]any
			if err := json.Unmarshal([]byte(stdout), &got); err != nil {
				t.Fatalf("output is not JSON: %v\n%s", err, stdout)
			}
			if got["decision"] != tc.decision || got["policy"] != tc.policy || got["rule"] != tc.rule || got["reason"] != tc.reason {
				t.Errorf("got %v", got)
			}
			// The text form says the same thing.
			code, stdout, _ = checkCLI(t, "", "-f", pol, "--request", req)
			if code != ExitOK || !strings.HasPrefix(stdout, strings.ToUpper(tc.decision)+" (") || !strings.Contains(stdout, tc.reason) {
				t.Errorf("text output:\n%s", stdout)
			}
		})
	}
}

func TestPolicyCheckExplainAndStdin(t *testing.T) {
	code, stdout, stderr := checkCLI(t, shopPolicies, "-f", "-", "--request", writeFile(t, t.TempDir(), "r.json", shopRequest("spiffe://td/ns/prod/sa/orders", "GET")), "--explain")
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{
		"DENY (no policy decided)",
		"prod/payments-from-orders [ALLOW]: no rule matched",
		`rule 0: to: spec.rules[0].to[0].operation.methods: method "GET" matches none of the values`,
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
}

func TestPolicyCheckBadInput(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "good.yaml", shopPolicies)
	bad := writeFile(t, dir, "bad.yaml", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  rules:\n  - from:\n    - source: {principal: [a]}\n")
	req := writeFile(t, dir, "req.json", shopRequest("spiffe://td/ns/prod/sa/orders", "POST"))
	badReq := writeFile(t, dir, "bad-req.json", `{"source": {"principal": "orders"}, "destination": {"namespace": "prod", "port": 8080}, "request": {"method": "GET", "path": "/"}}`)
	empty := filepath.Join(dir, "empty")
	os.Mkdir(empty, 0o755)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no_policies", []string{"--request", req}, "give policies with -f"},
		{"no_request", []string{"-f", good}, "give the request with --request"},
		{"invalid_policy_names_file_and_line", []string{"-f", good, "-f", bad, "--request", req}, `bad.yaml: document 1 (AuthorizationPolicy default/x), line 7: spec.rules[0].from[0].source.principal: unknown field "principal"; did you mean "principals"?`},
		{"missing_policy_file", []string{"-f", filepath.Join(dir, "nope.yaml"), "--request", req}, "no such file"},
		{"empty_directory", []string{"-f", empty, "--request", req}, "holds no .yaml, .yml, .json or .rego file"},
		{"invalid_request_names_file", []string{"-f", good, "--request", badReq}, `bad-req.json: invalid request: source.principal: "orders" is not a SPIFFE ID`},
		{"missing_request", []string{"-f", good, "--request", filepath.Join(dir, "none.json")}, "none.json"},
		{"duplicate_across_files", []string{"-f", good, "-f", good, "--request", req}, "duplicate"},
		{"bad_output", []string{"-f", good, "--request", req, "-o", "yaml"}, "-o must be text or json"},
		{"bad_root_namespace", []string{"-f", good, "--request", req, "--root-namespace", "Not_Valid"}, "root namespace"},
		{"bad_normalization", []string{"-f", good, "--request", req, "--path-normalization", "FULL"}, "unknown path normalization"},
		{"bad_time", []string{"-f", good, "--request", req, "--at", "yesterday"}, "RFC 3339"},
		{"two_stdin", []string{"-f", "-", "--request", "-"}, "only one of -f and --request"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := checkCLI(t, "", tc.args...)
			if code != ExitUsage {
				t.Fatalf("exit %d, want %d (stdout %q, stderr %q)", code, ExitUsage, stdout, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q lacks %q", stderr, tc.want)
			}
		})
	}
}

// testIssuer is an ES256 token issuer: its JWKS (JSON) and a signer of
// claims.
func testIssuer(t *testing.T) (string, func(map[string]any) string) { return policytest.Issuer(t) }

// A token in the request is verified by the real authn verifier against
// the RequestAuthentication's inline JWKS, as in a sidecar.
func TestPolicyCheckVerifiesTokens(t *testing.T) {
	jwks, sign := testIssuer(t)
	issued := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	valid := sign(map[string]any{"iss": "https://issuer.example", "sub": "alice", "groups": []string{"admins"}, "exp": issued.Add(time.Hour).Unix(), "iat": issued.Unix()})

	dir := t.TempDir()
	pol := writeFile(t, dir, "jwt.yaml", `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: api}
spec:
  jwtRules:
  - issuer: https://issuer.example
    jwks: '`+jwks+`'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: admins, namespace: api}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["https://issuer.example/*"]}}]
    when: [{key: "request.auth.claims[groups]", values: ["admins"]}]
`)
	request := func(token string) string {
		h := ""
		if token != "" {
			h = `, "headers": {"authorization": "Bearer ` + token + `"}`
		}
		return writeFile(t, dir, "req.json", `{"source": {"principal": "spiffe://td/ns/edge/sa/gw"},
 "destination": {"namespace": "api", "port": 8080},
 "request": {"protocol": "http", "method": "GET", "path": "/"`+h+`}}`)
	}
	at := issued.Add(time.Minute).Format(time.RFC3339)
	tests := []struct {
		name, token, at, decision, reason string
	}{
		{"valid_token", valid, at, "allow", "matched ALLOW rule 0 of api/admins"},
		{"no_token", "", at, "deny", "no ALLOW rule matched"},
		{"expired_at_check_time", valid, issued.Add(3 * time.Hour).Format(time.RFC3339), "unauthenticated", "invalid token"},
		{"tampered", valid[:len(valid)-4] + "AAAA", at, "unauthenticated", "invalid token"},
		{"garbage", "not-a-jwt", at, "unauthenticated", "invalid token"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := checkCLI(t, "", "-f", pol, "--request", request(tc.token), "--at", tc.at, "-o", "json")
			if code != ExitOK {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var got struct{ Decision, Reason, Token string }
			if err := json.Unmarshal([]byte(stdout), &got); err != nil {
				t.Fatal(err)
			}
			if got.Decision != tc.decision || !strings.Contains(got.Reason, tc.reason) {
				t.Errorf("got %+v, want %s (%s)", got, tc.decision, tc.reason)
			}
			if strings.Contains(stdout, valid[20:60]) || strings.Contains(stderr, valid[20:60]) {
				t.Errorf("the token appears in the output")
			}
		})
	}
}

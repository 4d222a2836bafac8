package cli

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestPolicyLint: every problem of every document of every file at once:
// errors exit 2, warnings alone exit 0, in text and in JSON.
func TestPolicyLint(t *testing.T) {
	dir := t.TempDir()
	broken := writeFile(t, dir, "broken/a.yaml", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: prod}
spec:
  rules:
  - from:
    - source: {principal: ["td/ns/x/sa/y"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: b, namespace: prod}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [post]}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: c, namespace: prod}
spec: {mtls: {mode: SOMETIMES}}
`)
	warnOnly := writeFile(t, dir, "ok/b.yaml", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gw, namespace: prod}
spec:
  targetRefs: [{kind: Deployment, name: web}]
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: prod}
spec:
  jwtRules: [{jwksUri: "https://keys.example/jwks", timeout: 10ms}]
`)
	dup := writeFile(t, dir, "dup/c.yaml", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gw, namespace: prod}
spec: {rules: [{}]}
`)
	clean := writeFile(t, dir, "clean/d.yaml", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: prod}\nspec: {mtls: {mode: STRICT}}\n")
	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     []string
		wantNot  []string
	}{
		{"every_problem_of_every_file", []string{"-f", broken, "-f", warnOnly}, ExitUsage, []string{
			`error: ` + broken + `: document 1 (AuthorizationPolicy prod/a), line 7: spec.rules[0].from[0].source.principal: unknown field "principal"; did you mean "principals"?`,
			`error: ` + broken + `: document 3 (PeerAuthentication prod/c), line 19: spec.mtls.mode: "SOMETIMES" is not one of`,
			`warning: ` + broken + `: document 2 (AuthorizationPolicy prod/b), line 9: spec.rules[0].to[0].operation.methods: method "post" is not upper case`,
			`warning: ` + warnOnly + `: document 1 (AuthorizationPolicy prod/gw), line 1: spec.targetRefs[0].kind: Istio refuses kind "Deployment"`,
			"2 error(s), 4 warning(s) in 2 file(s), 3 document(s)",
		}, nil},
		{"warnings_alone_pass", []string{"-f", warnOnly}, ExitOK, []string{"0 error(s), 2 warning(s)"}, []string{"error: "}},
		{"duplicate_across_files", []string{"-f", warnOnly, "-f", dup}, ExitUsage, []string{"duplicate: AuthorizationPolicy prod/gw"}, nil},
		{"clean", []string{"-f", clean}, ExitOK, []string{"0 error(s), 0 warning(s) in 1 file(s), 1 document(s)"}, []string{"warning: "}},
		{"no_files", nil, ExitUsage, []string{"give policies with -f"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := runCLI(t, nil, append([]string{"policy", "lint"}, tc.args...)...)
			all := out + stderr
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d:\n%s", code, tc.wantCode, all)
			}
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("output lacks %q:\n%s", w, all)
				}
			}
			for _, w := range tc.wantNot {
				if strings.Contains(all, w) {
					t.Errorf("output has %q:\n%s", w, all)
				}
			}
		})
	}
	t.Run("json", func(t *testing.T) {
		code, out, _ := runCLI(t, nil, "policy", "lint", "-f", broken, "-o", "json")
		var got struct{ Items []lintProblem }
		if err := json.Unmarshal([]byte(out), &got); err != nil || code != ExitUsage {
			t.Fatalf("exit %d, %v:\n%s", code, err, out)
		}
		var first lintProblem
		for _, p := range got.Items {
			if p.Severity == "error" {
				first = p
				break
			}
		}
		want := lintProblem{Severity: "error", File: broken, Document: 1, Line: 7, Object: "AuthorizationPolicy prod/a", Path: "spec.rules[0].from[0].source.principal", Message: `unknown field "principal"; did you mean "principals"?`}
		if first != want {
			t.Fatalf("first error %+v, want %+v", first, want)
		}
	})
}

// TestPolicyCheckExpect: --expect turns a decision into a CI assertion:
// exit 1 when the request gets another outcome, 0 when it gets the one
// expected, 2 for an outcome that does not exist.
func TestPolicyCheckExpect(t *testing.T) {
	dir := t.TempDir()
	pol := writeFile(t, dir, "p.yaml", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-web, namespace: prod}
spec:
  rules: [{from: [{source: {principals: ["td/ns/prod/sa/web"]}}]}]
`)
	req := func(principal string) string {
		return writeFile(t, t.TempDir(), "req.json", `{"source": {"principal": "`+principal+`"}, "destination": {"namespace": "prod", "port": 8080},
  "request": {"protocol": "http", "method": "GET", "path": "/", "host": "x"}}`)
	}
	web, other := req("spiffe://td/ns/prod/sa/web"), req("spiffe://td/ns/prod/sa/other")
	tests := []struct {
		name     string
		req      string
		expect   string
		extra    []string
		wantCode int
		want     string
	}{
		{"allow_as_expected", web, "allow", nil, ExitOK, "ALLOW"},
		{"deny_as_expected", other, "deny", nil, ExitOK, "DENY"},
		{"allow_expected_got_deny", other, "allow", nil, ExitFailure, "policy check: expected allow, got deny"},
		{"unauthenticated_expected_got_allow", web, "unauthenticated", nil, ExitFailure, "expected unauthenticated, got allow"},
		{"json_mismatch", other, "allow", []string{"-o", "json"}, ExitFailure, "expected allow, got deny"},
		{"bad_expect", web, "permit", nil, ExitUsage, "--expect must be allow, deny or unauthenticated"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := checkCLI(t, "", append([]string{"-f", pol, "--request", tc.req, "--expect", tc.expect}, tc.extra...)...)
			if code != tc.wantCode || !strings.Contains(out+stderr, tc.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d with %q", code, out, stderr, tc.wantCode, tc.want)
			}
		})
	}
}

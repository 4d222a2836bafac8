package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/policy/policytest"
)

// regoPolicyDir copies internal/policy/testdata/rego (the example
// policy, a role-based and an ownership-based one, their data and
// providers) into a temporary directory with a RequestAuthentication for
// the issuer whose JWKS is given, and extra files.
func regoPolicyDir(t *testing.T, jwks string, extra map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	policytest.CopyRego(t, dir)
	writeFile(t, dir, "jwt.yaml", `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: prod}
spec:
  jwtRules:
  - issuer: https://idp.example
    jwks: '`+jwks+`'
`)
	for name, content := range extra {
		writeFile(t, dir, name, content)
	}
	return dir
}

func TestPolicyCheckRego(t *testing.T) {
	jwks, sign := testIssuer(t)
	day := time.Date(2030, 1, 2, 0, 0, 0, 0, time.UTC)
	token := func(sub, role string) string {
		return sign(map[string]any{"iss": "https://idp.example", "sub": sub, "role": role, "iat": day.Unix(), "exp": day.Add(24 * time.Hour).Unix()})
	}
	dir := regoPolicyDir(t, jwks, nil)
	request := func(tok, path, level string) string {
		return writeFile(t, t.TempDir(), "req.json", `{"source": {"principal": "spiffe://td/ns/shop/sa/web"},
 "destination": {"namespace": "prod", "labels": {"app": "records"}, "port": 8080},
 "request": {"protocol": "http", "method": "GET", "path": "`+path+`",
   "headers": {"authorization": "Bearer `+tok+`", "x-sensitivity-level": "`+level+`"}}}`)
	}
	hour := func(h int) string { return day.Add(time.Duration(h) * time.Hour).Format(time.RFC3339) }
	cases := []struct {
		name, tok, path, level, at, decision, result, failed string
	}{
		{"owner_in_hours", token("alice", "user"), "/records/alice/7", "2", hour(10), "allow", "allow", ""},
		{"owner_out_of_hours", token("alice", "user"), "/records/alice/7", "2", hour(20), "deny", "deny", "authz.rego:10: input.context.time <= 17"},
		{"user_above_clearance", token("bob", "user"), "/records/bob/7", "2", hour(10), "deny", "deny", "authz.rego:11: input.resource.sensitivity_level <= user_clearance_level"},
		{"non_owner", token("carol", "admin"), "/records/alice/7", "1", hour(10), "deny", "deny", "authz.rego:8: input.resource.owner == input.user.id"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, stdout, stderr := checkCLI(t, "", "-f", dir, "--request", request(c.tok, c.path, c.level), "--at", c.at, "-o", "json", "--explain")
			if code != ExitOK {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var got struct {
				Decision string
				Custom   []struct {
					Provider, Result string
					InputSHA256      string `json:"input_sha256"`
				}
				Explain struct {
					Rego []struct {
						Input  map[string]any
						Failed []string
					}
				}
			}
			if err := json.Unmarshal([]byte(stdout), &got); err != nil {
				t.Fatal(err)
			}
			if got.Decision != c.decision || len(got.Custom) != 1 || got.Custom[0].Result != c.result || len(got.Custom[0].InputSHA256) != 64 {
				t.Fatalf("got %s", stdout)
			}
			if len(got.Explain.Rego) != 1 {
				t.Fatalf("no input in --explain: %s", stdout)
			}
			if f := got.Explain.Rego[0].Failed; c.failed != "" && (len(f) == 0 || f[0] != c.failed) {
				t.Fatalf("false expressions %q, want %q first", f, c.failed)
			}
			h := got.Explain.Rego[0].Input["request"].(map[string]any)["headers"].(map[string]any)
			if h["authorization"] != "[redacted]" || strings.Contains(stdout, c.tok[30:60]) {
				t.Fatalf("the token is not redacted: %v", h)
			}
		})
	}

	// A module that does not compile is refused with OPA's error and line.
	bad := regoPolicyDir(t, jwks, map[string]string{"broken.rego": "package broken\n\nimport rego.v1\n\nallow if {\n\tinput.x ==\n}\n"})
	code, _, stderr := checkCLI(t, "", "-f", bad, "--request", request(token("alice", "user"), "/records/alice/7", "1"), "--at", hour(10))
	if code != ExitUsage || !strings.Contains(stderr, "broken.rego:7") || !strings.Contains(stderr, "rego_parse_error") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
}

func TestPolicyTest(t *testing.T) {
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		e := &Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }}
		code := e.main(context.Background(), append([]string{"policy", "test"}, args...))
		return code, out.String(), errb.String()
	}
	dir := regoPolicyDir(t, "{}", nil)
	if code, out, errs := run(dir); code != ExitOK || !strings.Contains(out, "PASS: 5/5") {
		t.Fatalf("exit %d: %s %s", code, out, errs)
	}
	if code, out, _ := run(dir, "-v", "--run", "in_hours"); code != ExitOK || !strings.Contains(out, "test_owner_in_hours: PASS") || strings.Contains(out, "test_non_owner") {
		t.Fatalf("-v --run: exit %d: %s", code, out)
	}
	failing := regoPolicyDir(t, "{}", map[string]string{"sub/more_test.rego": `package microservices.authz_test
import rego.v1
import data.microservices.authz
test_nobody_at_noon if authz.allow with input as {"context": {"time": 12}}
test_prints if {
	print("clearance of carol:", data.clearance.carol)
	data.clearance.carol == 5
}
`})
	code, out, _ := run(failing, "-v")
	if code != ExitFailure || !strings.Contains(out, "test_nobody_at_noon: FAIL") || !strings.Contains(out, "FAIL: 1/7") || !strings.Contains(out, "print: clearance of carol: 5") {
		t.Fatalf("failing: exit %d: %s", code, out)
	}
	code, out, _ = run(failing, "-o", "json")
	var results struct {
		Items []struct{ Name, Outcome string }
	}
	if err := json.Unmarshal([]byte(out), &results); err != nil || code != ExitFailure || len(results.Items) != 7 {
		t.Fatalf("json: exit %d, %v: %s", code, err, out)
	}
	empty := t.TempDir()
	writeFile(t, empty, "x.rego", "package x\nallow := true\n")
	if code, out, _ := run(empty); code != ExitFailure || !strings.Contains(out, "no tests found") {
		t.Fatalf("no tests: exit %d: %s", code, out)
	}
	writeFile(t, empty, "bad.rego", "package x\nallow if {\n")
	if code, _, errs := run(empty); code != ExitUsage || !strings.Contains(errs, "bad.rego") {
		t.Fatalf("bad module: exit %d: %s", code, errs)
	}
	if code, _, errs := run(); code != ExitUsage || !strings.Contains(errs, "give the files") {
		t.Fatalf("no path: exit %d: %s", code, errs)
	}
}

package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	securityv1beta1 "istio.io/api/security/v1beta1"
)

// The conformance suite is data: testdata/conformance/<scenario>/ holds
// policies (*.yaml) and requests/<name>.<outcome>.json, where outcome is
// allow, deny or unauthenticated. A request file is exactly what
// "moatless policy check --request" reads. expectations.jsonc may add, per
// case name:
//
//	"expect":      {"policy": "ns/name" or "", "rule": N, "reason": substring,
//	                "audit": "ns/name", "dry_run": {"decision", "policy", "rule"}}
//	"jwt":         claims of a token the test verifier accepts
//	"jwt_invalid": the error the test verifier returns for the token
//
// Adding a case is adding a file; the file name states the result.
func TestConformance(t *testing.T) {
	scenarios, err := filepath.Glob(filepath.Join("testdata", "conformance", "*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(scenarios) == 0 {
		t.Fatal("no conformance scenarios found")
	}
	total := 0
	for _, dir := range scenarios {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			s := loadScenario(t, dir)
			extras := map[string]json.RawMessage{}
			if b, err := os.ReadFile(filepath.Join(dir, "expectations.jsonc")); err == nil {
				if err := json.Unmarshal(b, &extras); err != nil {
					t.Fatalf("expectations.jsonc: %v", err)
				}
			}
			reqs, _ := filepath.Glob(filepath.Join(dir, "requests", "*.json"))
			sort.Strings(reqs)
			if len(reqs) == 0 {
				t.Fatal("scenario has no requests")
			}
			for _, f := range reqs {
				total++
				name := strings.TrimSuffix(filepath.Base(f), ".json")
				base, outcome, ok := cutLast(name, ".")
				if !ok {
					t.Fatalf("%s: name must be <case>.<allow|deny|unauthenticated>.json", f)
				}
				extra := extras[base]
				delete(extras, base)
				t.Run(base, func(t *testing.T) { runConformanceCase(t, s, f, outcome, extra) })
			}
			for name := range extras {
				t.Errorf("expectations.jsonc names %q, which has no request file", name)
			}
		})
	}
	if total < 40 {
		t.Errorf("only %d conformance cases ran", total)
	}
}

func cutLast(s, sep string) (string, string, bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

func loadScenario(t *testing.T, dir string) *Set {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	var docs []Document
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		d, err := ParseSource(f, fh)
		fh.Close()
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, d...)
	}
	s, err := Compile(docs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type conformanceExpect struct {
	Policy *string `json:"policy"`
	Rule   *int    `json:"rule"`
	Reason string  `json:"reason"`
	Audit  string  `json:"audit"`
	DryRun *struct {
		Decision string  `json:"decision"`
		Policy   *string `json:"policy"`
		Rule     *int    `json:"rule"`
	} `json:"dry_run"`
}

func runConformanceCase(t *testing.T, s *Set, file, outcome string, extra json.RawMessage) {
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var x struct {
		Expect     conformanceExpect `json:"expect"`
		JWT        map[string]any    `json:"jwt"`
		JWTInvalid string            `json:"jwt_invalid"`
	}
	if extra != nil {
		dec := json.NewDecoder(bytes.NewReader(extra))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&x); err != nil {
			t.Fatalf("expectations.jsonc: %v", err)
		}
	}
	expect, claims, invalid := x.Expect, x.JWT, x.JWTInvalid
	req, err := ParseCheckRequest(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	// The verifier a sidecar would have, reduced to what the case says
	// about its token. It is only asked when RequestAuthentication applies.
	verifier := verifierFunc(func(rules []*securityv1beta1.JWTRule, r *Request) (*Auth, error) {
		if len(rules) == 0 {
			t.Error("verifier called without rules")
		}
		switch {
		case invalid != "":
			return nil, errors.New(invalid)
		case claims != nil:
			iss, _ := claims["iss"].(string)
			sub, _ := claims["sub"].(string)
			a := jwt(iss, sub, claims)
			return a, nil
		}
		return nil, nil
	})
	d := s.Evaluate(req, verifier)
	if d.Outcome.String() != outcome {
		t.Fatalf("decision = %s (%s, rule %d: %s), file says %s", d.Outcome, d.Policy, d.Rule, d.Reason, outcome)
	}
	if expect.Policy != nil && d.Policy != *expect.Policy {
		t.Errorf("policy = %q, want %q (reason %q)", d.Policy, *expect.Policy, d.Reason)
	}
	if expect.Policy != nil && *expect.Policy == "" && d.Rule != -1 {
		t.Errorf("rule = %d without a deciding policy", d.Rule)
	}
	if expect.Rule != nil && d.Rule != *expect.Rule {
		t.Errorf("rule = %d, want %d", d.Rule, *expect.Rule)
	}
	if !strings.Contains(d.Reason, expect.Reason) {
		t.Errorf("reason = %q, want it to contain %q", d.Reason, expect.Reason)
	}
	if d.AuditPolicy != expect.Audit || d.Audit != (expect.Audit != "") {
		t.Errorf("audit = %v %q, want %q", d.Audit, d.AuditPolicy, expect.Audit)
	}
	if dr := expect.DryRun; dr != nil {
		if !d.DryRun.Applies || d.DryRun.Outcome.String() != dr.Decision {
			t.Errorf("dry run = %+v, want %s", d.DryRun, dr.Decision)
		}
		if dr.Policy != nil && d.DryRun.Policy != *dr.Policy {
			t.Errorf("dry run policy = %q, want %q", d.DryRun.Policy, *dr.Policy)
		}
		if dr.Rule != nil && d.DryRun.Rule != *dr.Rule {
			t.Errorf("dry run rule = %d, want %d", d.DryRun.Rule, *dr.Rule)
		}
	} else if d.DryRun.Applies {
		t.Errorf("unexpected dry-run result %+v", d.DryRun)
	}
	// Explain must agree with Evaluate.
	req2, _ := ParseCheckRequest(bytes.NewReader(raw))
	if e := s.Explain(req2, verifier); !reflect.DeepEqual(e.Decision, d) {
		t.Errorf("Explain decided %+v, Evaluate %+v", e.Decision, d)
	}
}

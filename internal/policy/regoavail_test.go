package policy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// regoBundle loads testdata/rego (the example policy, a
// role-based and an ownership-based one, their data and providers) plus
// extra files given as name → content.
func regoBundle(t testing.TB, extra map[string]string) *Set {
	t.Helper()
	var b Bundle
	entries, err := os.ReadDir("testdata/rego")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue // requests/: examples for the documentation
		}
		content, err := os.ReadFile(filepath.Join("testdata/rego", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Add(e.Name(), content); err != nil {
			t.Fatalf("%s: %v", e.Name(), err)
		}
	}
	for name, content := range extra {
		if err := b.Add(name, []byte(content)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	s, err := b.Compile(Options{})
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return s
}

// at is a time of day on a fixed date, UTC.
func at(hour, minute int) time.Time { return time.Date(2026, 3, 4, hour, minute, 0, 0, time.UTC) }

func atTime(t time.Time) reqOpt { return func(r *Request) { r.Time = t } }

// TestRegoAvailability: the same policy version decides the same way
// with and without OPA linked, except for CUSTOM policies decided by a
// RegoProvider, which evaluate with OPA and deny without it
// (moatless-sidecar, which does not import regoopa), saying why. Run it both ways:
// go test ./internal/policy/ and go test -tags norego ./internal/policy/.
func TestRegoAvailability(t *testing.T) {
	s := regoBundle(t, map[string]string{"other.yaml": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web, namespace: prod}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - to: [{operation: {paths: ["/public/*"]}}]
`})
	if got := s.RegoProviders(); len(got) != 3 {
		t.Fatalf("RegoProviders = %v, want the three of testdata/rego", got)
	}
	if got := len(s.Rego().Modules()); got != 4 {
		t.Fatalf("%d Rego modules kept, want 4", got)
	}
	alice := auth(jwt("https://idp.example", "alice", map[string]any{"role": "user"}))
	cases := []struct {
		name    string
		opts    []reqOpt
		want    Outcome // with OPA
		wantNot Outcome // without OPA
		custom  string  // CustomEval.Result without OPA; "" when no CUSTOM policy applies
	}{
		{"custom_rego_allows_with_opa", []reqOpt{dst("prod", "app", "records"), alice, path("/records/alice/7"), header("X-Sensitivity-Level", "2"), atTime(at(10, 30))}, Allow, Deny, "unavailable"},
		{"custom_rego_denies_with_opa", []reqOpt{dst("prod", "app", "records"), alice, path("/records/alice/7"), header("X-Sensitivity-Level", "2"), atTime(at(18, 0))}, Deny, Deny, "unavailable"},
		{"no_custom_policy_applies", []reqOpt{dst("prod", "app", "web"), path("/public/x")}, Allow, Allow, ""},
		{"no_custom_policy_denies", []reqOpt{dst("prod", "app", "web"), path("/private/x")}, Deny, Deny, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := s.Decide(newReq(c.opts...))
			want := c.want
			if !RegoAvailable() {
				want = c.wantNot
			}
			if d.Outcome != want {
				t.Fatalf("outcome %v (%s), want %v (RegoAvailable %v)", d.Outcome, d.Reason, want, RegoAvailable())
			}
			if RegoAvailable() || c.custom == "" {
				return
			}
			if len(d.Custom) != 1 || d.Custom[0].Result != c.custom || d.Custom[0].Provider != "records-authz" {
				t.Fatalf("Custom = %+v, want one %q record of records-authz", d.Custom, c.custom)
			}
			if d.Action != "CUSTOM" || !strings.Contains(d.Reason, "unavailable") || !strings.Contains(d.Reason, "moatless sidecar") {
				t.Errorf("action %q reason %q: want CUSTOM, saying Rego is unavailable and naming moatless sidecar", d.Action, d.Reason)
			}
		})
	}
	_, err := s.RegoFailures("records-authz", newReq(dst("prod", "app", "records"), path("/records/alice/7")))
	if got := errors.Is(err, ErrRegoUnavailable); got == RegoAvailable() {
		t.Errorf("RegoFailures error %v: ErrRegoUnavailable %v, want %v", err, got, !RegoAvailable())
	}
}

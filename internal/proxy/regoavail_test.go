package proxy

import (
	"errors"
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/wire"
)

// TestRegoUnavailable: what the sidecar reports (the once-per-version
// warning, -check's refusal) about a policy version that needs Rego:
// nothing where Rego is evaluated; without OPA (moatless-sidecar; the
// tests: tag norego), what needs
// it, wrapping policy.ErrRegoUnavailable. Run both ways: go test and go
// test -tags norego -run Rego ./internal/proxy/.
func TestRegoUnavailable(t *testing.T) {
	provider := `apiVersion: moatless.io/v1
kind: RegoProvider
metadata: {name: owners}
spec: {query: data.owners.allow}
`
	plain := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: prod}
spec: {action: ALLOW, rules: [{}]}
`
	module := []wire.RegoModule{{ID: "owners.rego", Source: "package owners\n\nallow := true\n"}}
	data := []wire.DataDocument{{Key: "documents", Value: []byte(`{"d1": "alice"}`)}}
	cases := []struct {
		name    string
		docs    string
		modules []wire.RegoModule
		data    []wire.DataDocument
		want    []string // in the error without OPA; none: no error
	}{
		{"no_rego", plain, nil, nil, nil},
		{"provider_only", plain + "---\n" + provider, nil, nil, []string{"RegoProviders owners"}},
		{"modules_and_data_without_provider", plain, module, data, []string{"Rego modules owners.rego", "1 data documents"}},
		{"all", provider, module, data, []string{"RegoProviders owners", "Rego modules owners.rego"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var b policy.Bundle
			if err := b.Add("p.yaml", []byte(c.docs)); err != nil {
				t.Fatal(err)
			}
			b.Modules, b.Data = c.modules, c.data
			s, err := b.Compile(policy.Options{})
			if err != nil {
				t.Fatal(err)
			}
			err = regoUnavailable(s)
			if policy.RegoAvailable() || len(c.want) == 0 {
				if err != nil {
					t.Fatalf("RegoAvailable %v: %v, want no error", policy.RegoAvailable(), err)
				}
				return
			}
			if !errors.Is(err, policy.ErrRegoUnavailable) {
				t.Fatalf("%v, want ErrRegoUnavailable", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%v: does not name %q", err, w)
				}
			}
		})
	}
	if err := regoUnavailable(nil); err != nil {
		t.Errorf("no policy: %v", err)
	}
}

//go:build !norego

package policy

import (
	"reflect"
	"testing"
)

// TestRequestHeaders: the headers the policies of a workload read by name,
// which a sidecar protects from "_" spellings; a Rego module reading the
// headers through a variable key reads them all.
func TestRequestHeaders(t *testing.T) {
	authz := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: foo}
spec:
  action: DENY
  rules:
  - when:
    - {key: "request.headers[x-role]", values: [admin]}
    - {key: "request.headers[:authority]", values: [a]}
  - to: [{operation: {paths: [/x]}}]
    when:
    - {key: "request.headers[X-Tenant]", notValues: [acme]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-workload, namespace: foo}
spec:
  selector: {matchLabels: {app: other}}
  rules:
  - when: [{key: "request.headers[x-other]", values: ["*"]}]
`
	custom := func(module string) string {
		return `apiVersion: moatless.io/v1
kind: RegoProvider
metadata: {name: m}
spec:
  query: data.m.allow
  routes:
  - path: /records/{id}
    attributes: {level: {header: x-level}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: c, namespace: foo}
spec:
  action: CUSTOM
  provider: {name: m}
  rules: [{}]
`
	}
	tests := []struct {
		name, module string
		want         []string
		all          bool
	}{
		{"named_header", "package m\nallow if input.request.headers[\"x-user\"] == \"a\"\n", []string{"X-Level", "X-Role", "X-Tenant", "X-User"}, false},
		{"no_header", "package m\nallow if input.request.method == \"GET\"\n", []string{"X-Level", "X-Role", "X-Tenant"}, false},
		{"variable_key", "package m\nallow if { some k; input.request.headers[k] == \"a\" }\n", []string{"X-Level", "X-Role", "X-Tenant"}, true},
		{"whole_input", "package m\nallow if count(input) > 0\n", []string{"X-Level", "X-Role", "X-Tenant"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b Bundle
			if err := b.Add("m.rego", []byte(tc.module)); err != nil {
				t.Fatal(err)
			}
			if err := b.Add("p.yaml", []byte(authz+"---\n"+custom(tc.module))); err != nil {
				t.Fatal(err)
			}
			s, err := b.Compile(Options{})
			if err != nil {
				t.Fatal(err)
			}
			got, all := s.RequestHeaders(Destination{Namespace: "foo", Labels: map[string]string{"app": "web"}})
			if !reflect.DeepEqual(got, tc.want) || all != tc.all {
				t.Fatalf("RequestHeaders = %q, %v; want %q, %v", got, all, tc.want, tc.all)
			}
		})
	}
	if got, all := (*Set)(nil).RequestHeaders(Destination{}); got != nil || all {
		t.Fatalf("nil set: %q, %v", got, all)
	}
}

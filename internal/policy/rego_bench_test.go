//go:build !norego

package policy

import (
	"net/http"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/policy/regoengine"
)

// exampleRequest is an allowed request of the example policy:
// alice, role user, reading her own record of level 2 at 10:30.
func exampleRequest() *Request {
	r := benchRequest(1000)
	r.Destination.Labels = map[string]string{"app": "records"}
	r.Destination.Namespace = "prod"
	r.Method, r.Path = "GET", "/records/alice/7"
	r.Headers = http.Header{"X-Sensitivity-Level": {"2"}, "User-Agent": {"curl/8"}, "Accept": {"application/json"}}
	r.Auth = jwt("https://idp.example", "alice", map[string]any{"role": "user", "aud": "records", "exp": 1772629500.0, "iat": 1772628900.0})
	r.Time = time.Date(2026, 3, 4, 10, 30, 0, 0, time.UTC)
	return r
}

// BenchmarkRegoExample is the example policy per request: the
// input document built from the request, the prepared query evaluated,
// its result read (provider.eval, what Decide runs for a CUSTOM match).
func BenchmarkRegoExample(b *testing.B) {
	s := regoBundle(b, nil)
	p := s.providers["records-authz"]
	req := exampleRequest()
	path, err := s.matchPath(nil, req)
	if err != nil {
		b.Fatal(err)
	}
	if res := p.eval(req, path, false); !res.allow {
		b.Fatalf("benchmark request denied: %s", res.reason)
	}
	b.Run("eval", func(b *testing.B) {
		loopWithCPU(b, func() { p.eval(req, path, false) })
	})
	eng := regoengine.Current()
	b.Run("input_only", func(b *testing.B) {
		loopWithCPU(b, func() { eng.Digest(buildInput(eng, p, req, path, false)) })
	})
	// OPA's evaluation alone (with its timeout's timer): the prepared
	// query on an input built once.
	in := buildInput(eng, p, req, path, false)
	b.Run("opa_only", func(b *testing.B) {
		loopWithCPU(b, func() {
			if _, ok, _, err := p.pq.Eval(in, time.Time{}, time.Second); err != nil || !ok {
				b.Fatal(err)
			}
		})
	})
}

// BenchmarkDecideWithRego is a whole sidecar decision with one CUSTOM
// Rego policy (the example's provider) beside the 1,000 Istio policies
// of BenchmarkDecide, against the same request without the CUSTOM
// policy: the difference is what Rego adds to a decision.
func BenchmarkDecideWithRego(b *testing.B) {
	mesh := meshPolicies(1000)
	custom := `---
apiVersion: moatless.io/v1
kind: RegoProvider
metadata: {name: records-api}
spec:
  query: data.microservices.authz.allow
  input:
    user.id: auth.claims.sub
    user.role: auth.claims.role
    context.time: time.hour
    resource.owner: attributes.owner
    resource.sensitivity_level: attributes.level
  routes:
  - path: /api/v1/records/{owner}/{id}
    attributes:
      owner: {segment: owner}
      level: {header: x-sensitivity-level, as: number}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: records-abac, namespace: ns-0}
spec:
  selector: {matchLabels: {app: app-2}}
  action: CUSTOM
  provider: {name: records-api}
  rules: [{to: [{operation: {paths: ["/api/v1/records/*"]}}]}]
`
	without := mustSet(b, mesh, Options{})
	with := regoBundle(b, map[string]string{"mesh.yaml": mesh + custom})
	req := benchRequest(1000)
	ex := exampleRequest()
	req.Method, req.Path = "GET", "/api/v1/records/alice/7"
	req.Source.Principal = "td/ns/ns-0/sa/frontend"
	req.Headers = http.Header{"X-Sensitivity-Level": {"2"}, "X-Tenant": {"acme"}, "User-Agent": {"curl/8"}}
	req.Auth, req.Time = ex.Auth, ex.Time
	for _, c := range []struct {
		name   string
		s      *Set
		custom int
	}{{"istio_1000", without, 0}, {"istio_1000_plus_rego", with, 1}} {
		d := c.s.Decide(req)
		if d.Outcome != Allow || d.Rule != 2 || len(d.Custom) != c.custom || (c.custom > 0 && d.Custom[0].Result != "allow") {
			b.Fatalf("%s: %+v", c.name, d)
		}
		b.Run(c.name, func(b *testing.B) {
			loopWithCPU(b, func() { c.s.Decide(req) })
		})
	}
}

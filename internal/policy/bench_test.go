package policy

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user and system CPU time. On a shared machine
// wall-clock ns/op mostly measures waiting for a core; cpu-ns/op (CPU time
// over operations) is the steadier measure of what a decision costs.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loopWithCPU runs f in b.Loop and reports cpu-ns/op besides ns/op.
func loopWithCPU(b *testing.B, f func()) {
	b.ReportAllocs()
	start := cpuTime()
	n := 0
	for b.Loop() {
		f()
		n++
	}
	if n > 0 {
		b.ReportMetric(float64(cpuTime()-start)/float64(n), "cpu-ns/op")
	}
}

// meshPolicies writes n AuthorizationPolicies shaped like a real mesh's:
// spread over namespaces of 20 policies and workloads of two, each
// workload with an ALLOW policy of three rules (principals, methods,
// paths, a header condition) and a DENY policy (namespaces, an operation,
// service accounts), every namespace with a namespace-wide DENY, and three
// mesh-wide policies in the root namespace.
func meshPolicies(n int) string {
	var b strings.Builder
	write := func(ns, name, body string) {
		fmt.Fprintf(&b, "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: %s, namespace: %s}\nspec:\n%s", name, ns, body)
	}
	root := []string{
		"  action: DENY\n  rules:\n  - from: [{source: {notPrincipals: [\"*\"]}}]\n    to: [{operation: {paths: [\"/admin/*\"]}}]\n",
		"  action: DENY\n  rules:\n  - from: [{source: {ipBlocks: [\"192.0.2.0/24\", \"198.51.100.7\"]}}]\n",
		"  action: AUDIT\n  rules:\n  - to: [{operation: {methods: [DELETE]}}]\n",
	}
	for i := 0; i < n && i < len(root); i++ {
		write("istio-system", fmt.Sprintf("mesh-%d", i), root[i])
	}
	for i := len(root); i < n; i++ {
		ns := fmt.Sprintf("ns-%d", i/20)
		app := fmt.Sprintf("app-%d", (i%20)/2)
		switch {
		case i%20 == 19:
			write(ns, fmt.Sprintf("deny-debug-%d", i), "  action: DENY\n  rules:\n  - to: [{operation: {paths: [\"/debug/*\", \"/internal/*\"], ports: [\"8080\"]}}]\n")
		case i%2 == 0:
			write(ns, fmt.Sprintf("allow-%s", app), fmt.Sprintf(`  selector: {matchLabels: {app: %[1]s, tier: backend}}
  rules:
  - from: [{source: {principals: ["td/ns/%[2]s/sa/batch", "td/ns/%[2]s/sa/cron"]}}]
    to: [{operation: {methods: [PUT], paths: ["/api/v1/jobs/*"]}}]
  - from: [{source: {namespaces: ["monitoring"]}}]
    to: [{operation: {methods: [GET], paths: ["/metrics", "/healthz"]}}]
  - from: [{source: {principals: ["td/ns/%[2]s/sa/frontend", "td/ns/%[2]s/sa/orders", "td/ns/%[2]s/sa/web"]}}]
    to:
    - operation: {methods: [GET, HEAD], paths: ["/api/v1/*"]}
    - operation: {methods: [POST], paths: ["/api/v1/payments", "/api/v1/payments/{*}"]}
    when:
    - key: request.headers[X-Tenant]
      values: ["acme", "globex"]
`, app, ns))
		default:
			write(ns, fmt.Sprintf("deny-%s", app), fmt.Sprintf(`  selector: {matchLabels: {app: %[1]s}}
  action: DENY
  rules:
  - from: [{source: {notNamespaces: ["%[2]s", "monitoring"]}}]
  - to: [{operation: {methods: [DELETE], paths: ["/api/v1/*"]}}]
  - from: [{source: {serviceAccounts: ["quarantined", "tools/scanner"]}}]
`, app, ns))
		}
	}
	return b.String()
}

// benchRequest is an allowed POST to a workload that many policies share
// a namespace with: it is decided by the third rule of its ALLOW policy
// after every DENY in scope was checked.
func benchRequest(n int) *Request {
	ns := "ns-0"
	if n <= 3 {
		ns = "default"
	}
	return &Request{
		Protocol: HTTP,
		Source:   Source{Principal: "td/ns/" + ns + "/sa/orders", IP: netip.MustParseAddr("10.1.2.3")},
		Destination: Destination{
			Namespace: ns, Labels: map[string]string{"app": "app-2", "tier": "backend", "version": "v1"},
			IP: netip.MustParseAddr("10.1.9.9"), Port: 8080,
		},
		Method:  "POST",
		Host:    "payments.prod",
		Path:    "/api/v1/payments/42?expand=items",
		Headers: http.Header{"X-Tenant": {"acme"}, "User-Agent": {"curl/8"}},
	}
}

func BenchmarkDecide(b *testing.B) {
	for _, n := range []int{1, 100, 1000, 10000} {
		s := mustSet(b, meshPolicies(n), Options{})
		req := benchRequest(n)
		want := s.Decide(req)
		if n > 3 && (want.Outcome != Allow || want.Rule != 2) {
			b.Fatalf("benchmark request not decided by rule 2 of an ALLOW policy: %+v", want)
		}
		b.Run(fmt.Sprintf("policies=%d", n), func(b *testing.B) {
			loopWithCPU(b, func() { s.Decide(req) })
		})
	}
}

// BenchmarkDecideVariants measures the other common shapes at 1,000
// policies: a denied request, a path that needs normalization, raw TCP.
func BenchmarkDecideVariants(b *testing.B) {
	s := mustSet(b, meshPolicies(1000), Options{})
	variants := []struct {
		name string
		edit func(*Request)
	}{
		{"deny_delete", func(r *Request) { r.Method = "DELETE" }},
		{"normalize_path", func(r *Request) { r.Path = "/api/v1/./payments/%34%32/../42?x=1" }},
		{"tcp", func(r *Request) { r.Protocol, r.Method, r.Path, r.Host = TCP, "", "", "" }},
		{"plaintext", func(r *Request) { r.Source.Principal = "" }},
		// Paths with other readings: matched ignoring case too, and
		// decoded (which allocates the decoded reading).
		{"upper_case_path", func(r *Request) { r.Path = "/api/v1/Payments/42" }},
		{"encoded_slash", func(r *Request) { r.Path = "/api/v1/payments%2F42" }},
		{"parameter_slash_case", func(r *Request) { r.Path = "/api/v1/Payments;v=1%2F42" }},
		// Slashes side by side: read merged too, as most routers do.
		{"double_slash", func(r *Request) { r.Path = "/api/v1//payments/42" }},
	}
	for _, v := range variants {
		req := benchRequest(1000)
		v.edit(req)
		b.Run(v.name, func(b *testing.B) {
			loopWithCPU(b, func() { s.Decide(req) })
		})
	}
}

func BenchmarkCompile(b *testing.B) {
	for _, n := range []int{100, 1000} {
		docs, err := Parse(strings.NewReader(meshPolicies(n)))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("policies=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Compile(docs, Options{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkNormalizePath(b *testing.B) {
	var buf [maxPathBuffer]byte
	for _, p := range []string{"/api/v1/payments/42", "/api/v1/./payments/%34%32/../42?x=1"} {
		b.Run(p, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := normalizePath(buf[:0], p, NormalizeBase); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestDecideDoesNotAllocate pins the zero-allocation promise of the
// common path (not a timing test: allocation counts are deterministic).
func TestDecideDoesNotAllocate(t *testing.T) {
	s := mustSet(t, meshPolicies(1000), Options{})
	cases := map[string]func(*Request){
		"allow":                  func(*Request) {},
		"deny":                   func(r *Request) { r.Method = "DELETE" },
		"normalized_path":        func(r *Request) { r.Path = "/api/v1/./payments/%34%32/../42?x=1" },
		"tcp":                    func(r *Request) { r.Protocol, r.Method, r.Path, r.Host = TCP, "", "", "" },
		"plaintext":              func(r *Request) { r.Source.Principal = "" },
		"duplicate_headers":      func(r *Request) { r.Headers["X-Tenant"] = []string{"acme", "globex"} },
		"host_with_port_and_dot": func(r *Request) { r.Host = "Payments.Prod.:08080" },
		"ipv6_host":              func(r *Request) { r.Host = "[0:0::1]:8080" },
		// Another reading is looked for, and none is found or needed.
		"upper_case_path":    func(r *Request) { r.Path = "/api/v1/Payments/42" },
		"escape_not_a_slash": func(r *Request) { r.Path = "/api/v1/payments/%E2%82%AC" },
		"semicolon_in_query": func(r *Request) { r.Path = "/api/v1/payments/42?a=1;b=2" },
		"upper_case_deny":    func(r *Request) { r.Method, r.Path = "DELETE", "/API/v1/payments/42" },
		"path_normalized_ahead": func(r *Request) {
			r.NormalizedPath, _ = NormalizeRequestPath("/api/v1/./payments/%34%32/../42?x=1", NormalizeBase)
		},
	}
	for name, edit := range cases {
		t.Run(name, func(t *testing.T) {
			req := benchRequest(1000)
			edit(req)
			if n := testing.AllocsPerRun(200, func() { s.Decide(req) }); n != 0 {
				t.Errorf("Decide allocates %.1f times per call", n)
			}
		})
	}
}

// Evaluate with two RequestAuthentications in scope and no token: the
// merged rule list is remembered per workload, so nothing allocates.
func TestEvaluateDoesNotAllocate(t *testing.T) {
	s := mustSet(t, meshPolicies(100)+`
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: mesh-jwt, namespace: istio-system}
spec:
  jwtRules: [{issuer: "https://mesh.example"}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: ns-jwt, namespace: ns-0}
spec:
  jwtRules: [{issuer: "https://ns.example"}]
`, Options{})
	req := benchRequest(100)
	noToken := verifierFunc(func(rules []*securityv1beta1JWTRule, r *Request) (*Auth, error) {
		if len(rules) != 2 {
			t.Errorf("%d rules", len(rules))
		}
		return nil, nil
	})
	s.Evaluate(req, noToken)
	if n := testing.AllocsPerRun(200, func() { s.Evaluate(req, noToken) }); n != 0 {
		t.Errorf("Evaluate allocates %.1f times per call", n)
	}
	// Another workload gets its own list, not the remembered one.
	other := Destination{Namespace: "ns-1"}
	if got := s.JWTRules(other); len(got) != 1 || got[0].GetIssuer() != "https://mesh.example" {
		t.Errorf("JWTRules(ns-1) = %v", got)
	}
	if got := s.JWTRules(req.Destination); len(got) != 2 {
		t.Errorf("JWTRules(ns-0) = %v", got)
	}
}

// BenchmarkForwardAndDecide is a sidecar's per-request path work at 1,000
// policies: normalize the request target for forwarding, then decide.
func BenchmarkForwardAndDecide(b *testing.B) {
	s := mustSet(b, meshPolicies(1000), Options{})
	for _, v := range []struct{ name, path string }{
		{"normal_path", "/api/v1/payments/42?expand=items"},
		{"normalize_path", "/api/v1/./payments/%34%32/../42?x=1"},
	} {
		req := benchRequest(1000)
		req.Path = v.path
		b.Run(v.name, func(b *testing.B) {
			loopWithCPU(b, func() {
				np, err := NormalizeRequestPath(req.Path, s.PathNormalization())
				if err != nil {
					b.Fatal(err)
				}
				req.NormalizedPath = np
				s.Decide(req)
			})
		})
	}
}

// scopeClaimSet allows a request whose token's space-delimited "scope"
// claim holds "orders:write"; scopeClaimRequest has it as its last word.
func scopeClaimSet(tb testing.TB) (*Set, *Request) {
	s := mustSet(tb, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: scoped, namespace: prod}
spec:
  rules:
  - when: [{key: "request.auth.claims[scope]", values: ["orders:write"]}]
`, Options{})
	req := &Request{Protocol: HTTP, Source: Source{Principal: "td/ns/prod/sa/a"}, Destination: Destination{Namespace: "prod"}, Method: "GET", Path: "/",
		Auth: &Auth{Principal: "i/s", Claims: map[string]any{"scope": "openid profile orders:read orders:write"}}}
	if d := s.Decide(req); d.Outcome != Allow {
		tb.Fatalf("scope request not allowed: %+v", d)
	}
	return s, req
}

// BenchmarkDecideScopeClaim: an ALLOW rule on a word of the token's
// space-delimited "scope" claim, matched on its last word.
func BenchmarkDecideScopeClaim(b *testing.B) {
	s, req := scopeClaimSet(b)
	loopWithCPU(b, func() { s.Decide(req) })
}

// Matching one word of a space-delimited claim splits it without
// allocating.
func TestDecideScopeClaimDoesNotAllocate(t *testing.T) {
	s, req := scopeClaimSet(t)
	if n := testing.AllocsPerRun(200, func() { s.Decide(req) }); n != 0 {
		t.Errorf("Decide allocates %.1f times per call", n)
	}
}

// hostPolicies guards a workload by host as an ingress-facing service
// would: a DENY on the admin host and its subdomains, an ALLOW on the
// public names (exact and a wildcard), at 1,000 other policies.
func hostPolicies() string {
	return meshPolicies(1000) + `
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin-host, namespace: ns-0}
spec:
  action: DENY
  rules:
  - to: [{operation: {hosts: ["admin.example.com", "*.admin.example.com"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-public-hosts, namespace: ns-0}
spec:
  selector: {matchLabels: {app: app-2}}
  rules:
  - to: [{operation: {hosts: ["payments.prod", "shop.example.com", "*.shop.example.com"]}}]
`
}

// BenchmarkDecideHosts measures host matching (per request on every
// policy that names hosts) for the shapes a Host header takes.
func BenchmarkDecideHosts(b *testing.B) {
	s := mustSet(b, hostPolicies(), Options{})
	for _, h := range []string{"payments.prod", "Payments.Prod:8080", "eu.shop.example.com.", "[::1]:8080"} {
		req := benchRequest(1000)
		req.Host = h
		b.Run(h, func(b *testing.B) {
			loopWithCPU(b, func() { s.Decide(req) })
		})
	}
}

// Host matching does not allocate, whatever form a valid Host takes.
func TestDecideHostsDoesNotAllocate(t *testing.T) {
	s := mustSet(t, hostPolicies(), Options{})
	for _, h := range []string{"payments.prod", "Payments.Prod:8080", "eu.shop.example.com.", "[::1]:8080", "admin.example.com:443"} {
		req := benchRequest(1000)
		req.Host = h
		if n := testing.AllocsPerRun(200, func() { s.Decide(req) }); n != 0 {
			t.Errorf("Decide allocates %.1f times per call for host %q", n, h)
		}
	}
}

// BenchmarkParseRequestHost is the per-request cost of reading the Host
// as an authority, which every HTTP decision pays.
func BenchmarkParseRequestHost(b *testing.B) {
	for _, h := range []string{"payments.prod", "Payments.Prod:8080", "[::1]:8080"} {
		b.Run(h, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := parseRequestHost(h); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

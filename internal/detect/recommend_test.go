package detect

import (
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/policy"
)

const (
	tdp      = "spiffe://example.org/ns/prod/sa/"
	issuer   = "https://login.example.org"
	frontend = tdp + "frontend"
	orders   = tdp + "orders"
	payments = tdp + "payments"
	reports  = tdp + "reports"
	db       = tdp + "db"
)

var roundTripWorkloads = []Workload{
	{SPIFFEID: frontend, Namespace: "prod", Labels: map[string]string{"app": "frontend"}},
	{SPIFFEID: orders, Namespace: "prod", Labels: map[string]string{"app": "orders", "tier": "backend"}},
	{SPIFFEID: payments, Namespace: "prod", Labels: map[string]string{"app": "payments"}},
	{SPIFFEID: db, Namespace: "prod", Labels: map[string]string{"role": "db"}},
	{SPIFFEID: "spiffe://example.org/ns/dev/sa/x", Namespace: "dev", Labels: map[string]string{"app": "x"}},
}

// observed is a day of recorded traffic in prod, as recorded under a
// permissive (allow-all) policy.
var observed = []Edge{
	{Source: frontend, Destination: orders, Port: 8080, Protocol: "http", Method: "GET", Path: "/orders/{*}", Decision: "allow", Requests: 5000},
	{Source: frontend, Destination: orders, Port: 8080, Protocol: "http", Method: "POST", Path: "/orders", Decision: "allow", Token: issuer, Requests: 700},
	{Source: reports, Destination: orders, Port: 8080, Protocol: "http", Method: "GET", Path: "/orders/{*}", Decision: "allow", Requests: 90},
	{Source: reports, Destination: orders, Port: 8080, Protocol: "http", Method: "GET", Path: "/orders/export", Decision: "allow", Requests: 3},
	{Source: orders, Destination: payments, Port: 8080, Protocol: "http", Method: "POST", Path: "/payments", Decision: "allow", Token: issuer, Requests: 690},
	{Source: orders, Destination: payments, Port: 8080, Protocol: "http", Method: "POST", Path: "/payments", Decision: "allow", Requests: 10},
	{Source: orders, Destination: db, Port: 5432, Protocol: "tcp", Decision: "allow", Requests: 40},
	{Source: frontend, Destination: payments, Port: 8080, Protocol: "http", Method: "DELETE", Path: "/payments/{*}", Decision: "deny", Requests: 2},
	{Source: "", Destination: frontend, Port: 8080, Protocol: "http", Method: "GET", Path: "/", Decision: "allow", Requests: 800},
	{Source: frontend, Destination: "spiffe://example.org/ns/dev/sa/x", Port: 80, Protocol: "http", Method: "GET", Path: "/", Decision: "allow", Requests: 1},
}

func compile(t *testing.T, y string) *policy.Set {
	t.Helper()
	var b policy.Bundle
	if err := b.Add("recommended.yaml", []byte(y)); err != nil {
		t.Fatalf("recommended policies do not parse: %v\n%s", err, y)
	}
	set, err := b.Compile(policy.Options{})
	if err != nil {
		t.Fatalf("recommended policies do not compile: %v\n%s", err, y)
	}
	return set
}

func TestRecommendRoundTrip(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	rec := Recommend(observed, roundTripWorkloads, "prod", t0, t0.Add(24*time.Hour), nil)
	set := compile(t, rec.YAML)
	if rec.Policies != 5 { // allow-nothing, frontend, orders, payments, db
		t.Errorf("%d policies, want 4:\n%s", rec.Policies, rec.YAML)
	}
	for _, want := range []string{
		`paths: ["/orders/{*}"]`, `requestPrincipals: ["https://login.example.org/*"]`, `ports: ["5432"]`,
		`matchLabels:` + "\n      \"app\": \"orders\"", `"role": "db"`, `notPrincipals: ["*"]`,
	} {
		if !strings.Contains(rec.YAML, want) {
			t.Errorf("recommendation lacks %q:\n%s", want, rec.YAML)
		}
	}
	if strings.Contains(rec.YAML, "DELETE") || strings.Contains(rec.YAML, "ns/dev") {
		t.Errorf("a denied edge or another namespace made it in:\n%s", rec.YAML)
	}

	// The same traffic replayed: nothing newly denied.
	for _, r := range WhatIf(set, observed, roundTripWorkloads) {
		if r.Change == ChangeNewlyDenied || r.Change == ChangeNewlyAllowed {
			t.Errorf("recorded edge decided otherwise by its own recommendation: %+v", r)
		}
	}
	// A new edge, an operation never seen, a token dropped: denied.
	novel := []Edge{
		{Source: frontend, Destination: payments, Port: 8080, Protocol: "http", Method: "POST", Path: "/payments", Decision: "allow", Token: issuer, Requests: 1},
		{Source: reports, Destination: orders, Port: 8080, Protocol: "http", Method: "DELETE", Path: "/orders/{*}", Decision: "allow", Requests: 1},
		{Source: frontend, Destination: orders, Port: 8080, Protocol: "http", Method: "POST", Path: "/orders", Decision: "allow", Requests: 1},
		{Source: reports, Destination: db, Port: 5432, Protocol: "tcp", Decision: "allow", Requests: 1},
		// plaintext where only mTLS callers were seen, and an mTLS
		// caller on the plaintext-only edge
		{Source: "", Destination: orders, Port: 8080, Protocol: "http", Method: "GET", Path: "/orders/{*}", Decision: "allow", Requests: 1},
		{Source: reports, Destination: frontend, Port: 8080, Protocol: "http", Method: "GET", Path: "/", Decision: "allow", Requests: 1},
	}
	res := WhatIf(set, append(append([]Edge(nil), observed...), novel...), roundTripWorkloads)
	denied := map[string]bool{}
	for _, r := range res {
		if r.Change == ChangeNewlyDenied {
			denied[r.Source+" "+r.Destination+" "+r.Method+" "+r.Path+" "+r.Token] = true
		}
	}
	for _, e := range novel {
		if !denied[e.Source+" "+e.Destination+" "+e.Method+" "+e.Path+" "+e.Token] {
			t.Errorf("injected edge not denied: %+v", e)
		}
	}
	if res[0].Change != ChangeNewlyDenied {
		t.Errorf("newly denied edges do not come first: %+v", res[0])
	}
}

func TestWhatIfReportsNewlyAllowed(t *testing.T) {
	set := compile(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-payments, namespace: prod}
spec:
  selector: {matchLabels: {app: payments}}
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
`)
	res := WhatIf(set, observed, roundTripWorkloads)
	var newlyAllowed, newlyDenied int
	for _, r := range res {
		switch r.Change {
		case ChangeNewlyAllowed:
			newlyAllowed++
			if r.Method != "DELETE" || r.Policy != "prod/allow-payments" {
				t.Errorf("newly allowed: %+v", r)
			}
		case ChangeNewlyDenied:
			newlyDenied++
		}
	}
	if newlyAllowed != 1 || newlyDenied != 2 { // the two POST /payments edges
		t.Fatalf("newly allowed %d, newly denied %d", newlyAllowed, newlyDenied)
	}
}

func TestReplayPath(t *testing.T) {
	for in, want := range map[string]string{"": "/", "/orders/{*}": "/orders/0", "/a/{*}/b/{**}": "/a/0/b/0", "/x/%7B%2A%7D": "/x/%7B%2A%7D"} {
		if got := ReplayPath(in); got != want {
			t.Errorf("ReplayPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRecommendSharedAppLabel(t *testing.T) {
	// Two workloads share app=orders: each policy must select by all
	// labels, or each would admit the other's callers.
	a, b := tdp+"orders-v1", tdp+"orders-v2"
	ws := []Workload{
		{SPIFFEID: a, Namespace: "prod", Labels: map[string]string{"app": "orders", "version": "v1"}},
		{SPIFFEID: b, Namespace: "prod", Labels: map[string]string{"app": "orders", "version": "v2"}},
	}
	edges := []Edge{
		{Source: frontend, Destination: a, Port: 8080, Protocol: "http", Method: "GET", Path: "/v1", Decision: "allow", Requests: 1},
		{Source: reports, Destination: b, Port: 8080, Protocol: "http", Method: "GET", Path: "/v2", Decision: "allow", Requests: 1},
	}
	t0 := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	set := compile(t, Recommend(edges, ws, "prod", t0, t0.Add(time.Hour), nil).YAML)
	cross := []Edge{
		{Source: reports, Destination: a, Port: 8080, Protocol: "http", Method: "GET", Path: "/v2", Decision: "allow", Requests: 1},
		{Source: frontend, Destination: b, Port: 8080, Protocol: "http", Method: "GET", Path: "/v1", Decision: "allow", Requests: 1},
	}
	for _, r := range WhatIf(set, append(edges, cross...), ws) {
		crossed := r.Source == reports && r.Destination == a || r.Source == frontend && r.Destination == b
		if crossed != (r.Change == ChangeNewlyDenied) {
			t.Errorf("%s → %s %s: %s", r.Source, r.Destination, r.Path, r.Change)
		}
	}
}

// TestRecommendSelectorSelectsOneWorkload: a selector by all labels
// selects every workload whose labels include them, not only the one it
// was written for. orders-canary reports only app=orders (or a
// compromised node copies a subset of orders' labels, and reports
// made-up callers of itself): its policy's selector, all its labels,
// also selected orders, and granted orders' pods to its callers.
// A workload whose labels select another workload of the namespace too
// gets no policy (its calls are listed as not included), and the
// crossing calls are denied. Fails on the parent (frontend → orders,
// /canary, allowed by the canary's policy).
func TestRecommendSelectorSelectsOneWorkload(t *testing.T) {
	canary, full := tdp+"orders-canary", tdp+"orders"
	ws := []Workload{
		{SPIFFEID: canary, Namespace: "prod", Labels: map[string]string{"app": "orders"}},
		{SPIFFEID: full, Namespace: "prod", Labels: map[string]string{"app": "orders", "version": "v2"}},
	}
	edges := []Edge{
		{Source: frontend, Destination: canary, Port: 8080, Protocol: "http", Method: "GET", Path: "/canary", Decision: "allow", Requests: 1},
		{Source: reports, Destination: full, Port: 8080, Protocol: "http", Method: "GET", Path: "/v2", Decision: "allow", Requests: 1},
	}
	t0 := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	rec := Recommend(edges, ws, "prod", t0, t0.Add(time.Hour), nil)
	set := compile(t, rec.YAML)
	if !strings.Contains(strings.Join(rec.Skipped, "\n"), "calls to "+canary) {
		t.Errorf("the canary's calls are not listed as left out: %q", rec.Skipped)
	}
	cross := Edge{Source: frontend, Destination: full, Port: 8080, Protocol: "http", Method: "GET", Path: "/canary", Decision: "allow", Requests: 1}
	for _, r := range WhatIf(set, append(edges, cross), ws) {
		if r.Source == frontend && r.Destination == full && r.Change != ChangeNewlyDenied {
			t.Errorf("the canary's caller on orders: %s\n%s", r.Change, rec.YAML)
		}
		if r.Source == reports && r.Change == ChangeNewlyDenied {
			t.Errorf("orders' own caller denied: %+v", r)
		}
	}
}

func TestWhatIfMergesStatusClasses(t *testing.T) {
	// The traffic snapshot splits an edge by status class; replay
	// decides it once, with the requests summed.
	e := Edge{Source: frontend, Destination: orders, Port: 8080, Protocol: "http", Method: "GET", Path: "/orders/{*}", Decision: "allow", Requests: 5}
	f := e
	f.Requests = 7
	set := compile(t, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: none, namespace: prod}\nspec: {}\n")
	res := WhatIf(set, []Edge{e, f}, roundTripWorkloads)
	if len(res) != 1 || res[0].Requests != 12 || res[0].Change != ChangeNewlyDenied {
		t.Fatalf("%+v", res)
	}
}

func TestRecommendLeavesOutInexpressiblePaths(t *testing.T) {
	for _, tc := range []struct {
		name, path string
		kept       bool
	}{
		{"literal", "/orders/export", true},
		{"template", "/orders/{*}/items", true},
		{"trailing_any", "/static/{**}", true},
		{"literal_empty_segment", "/a//b", true},
		{"percent_encoded", "/x/%7B%2A%7D", true},
		{"literal_with_quote", `/a"b`, false},
		{"literal_with_space", "/a ", false},
		{"star_would_be_a_wildcard", "/admin*", false},
		{"template_with_bad_literal", "/a b/{*}", false},
		{"any_not_last", "/{**}/x", false},
		{"empty_inner_segment", "/a//{*}", false},
		{"no_leading_slash", "orders", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			edges := []Edge{{Source: frontend, Destination: orders, Port: 8080, Protocol: "http", Method: "GET", Path: tc.path, Decision: "allow", Requests: 1}}
			rec := Recommend(edges, roundTripWorkloads, "prod", time.Time{}, time.Time{}, nil)
			compile(t, rec.YAML)
			if got := rec.Edges == 1; got != tc.kept {
				t.Fatalf("kept %v, want %v:\n%s", got, tc.kept, rec.YAML)
			}
			if !tc.kept && len(rec.Skipped) != 1 {
				t.Fatalf("left out without a note: %+v", rec)
			}
		})
	}
}

// FuzzRecommendRoundTrip: whatever a reporter recorded, the
// recommendation compiles, and replaying the traffic it came from
// through it denies nothing that was allowed.
func FuzzRecommendRoundTrip(f *testing.F) {
	f.Add(frontend, "GET", "/orders/{*}", "", "app", "orders", "")
	f.Add("", "POST", "/", issuer, "role", "db", "x")
	f.Add(reports, "GET\n", "/a\"b/{**}", "https://x/\"", "a\"b", "c: d", "/*")
	f.Fuzz(func(t *testing.T, src, method, path, token, label, value, path2 string) {
		ws := []Workload{{SPIFFEID: orders, Namespace: "prod", Labels: map[string]string{label: value}}}
		edges := []Edge{
			{Source: src, Destination: orders, Port: 8080, Protocol: "http", Method: method, Path: path, Decision: "allow", Token: token, Requests: 1},
			{Source: src, Destination: orders, Port: 8080, Protocol: "http", Method: method, Path: path2, Decision: "allow", Requests: 1},
		}
		rec := Recommend(edges, ws, "prod", time.Time{}, time.Time{}, nil)
		var b policy.Bundle
		if err := b.Add("r.yaml", []byte(rec.YAML)); err != nil {
			t.Fatalf("does not parse: %v\n%s", err, rec.YAML)
		}
		set, err := b.Compile(policy.Options{})
		if err != nil {
			t.Fatalf("does not compile: %v\n%s", err, rec.YAML)
		}
		kept := map[string]bool{}
		for _, e := range edges {
			if inexpressible(e) == "" && selectorOf(ws[0], map[string]int{value: 1}) != nil {
				kept[e.Path] = true
			}
		}
		for _, r := range WhatIf(set, edges, ws) {
			if r.Change == ChangeNewlyDenied && kept[r.Path] {
				t.Fatalf("recorded edge denied by its recommendation: %+v\n%s", r, rec.YAML)
			}
		}
	})
}

func TestRecommendLeavesOutExcludedCallers(t *testing.T) {
	rec := Recommend(observed, roundTripWorkloads, "prod", time.Time{}, time.Time{}, map[string]string{reports: "under incident 1"})
	if strings.Contains(rec.YAML, "sa/reports\"]") || len(rec.Skipped) != 1 || !strings.Contains(rec.Skipped[0], "calls by "+reports+" (under incident 1): 93 requests") {
		t.Fatalf("skipped %q:\n%s", rec.Skipped, rec.YAML)
	}
	if !strings.Contains(rec.YAML, "# Not included: calls by "+reports) {
		t.Errorf("the file does not say what it left out:\n%s", rec.YAML)
	}
	for _, r := range WhatIf(compile(t, rec.YAML), observed, roundTripWorkloads) {
		if (r.Source == reports) != (r.Change == ChangeNewlyDenied) {
			t.Errorf("%s → %s %s %s: %s", r.Source, r.Destination, r.Method, r.Path, r.Change)
		}
	}
}

// TestRecommendTotalsSaturate: the store caps an edge's summed requests
// at the largest uint64 (a node may report enormous counters); merging
// and totalling them must not wrap, or recommend reports a handful of
// requests and sorts the busiest edge last.
func TestRecommendTotalsSaturate(t *testing.T) {
	const most = ^uint64(0)
	e := Edge{Source: frontend, Destination: orders, Protocol: "http", Method: "GET", Path: "/orders", Decision: "allow", Requests: most - 1}
	small := e
	small.Requests = 5
	merged := MergeEdges([]Edge{e, small})
	if len(merged) != 1 || merged[0].Requests != most {
		t.Fatalf("merged %+v, want one edge of %d requests", merged, most)
	}
	rec := Recommend([]Edge{e, small}, []Workload{{SPIFFEID: orders, Namespace: "prod", Labels: map[string]string{"app": "orders"}}}, "prod", time.Now().Add(-time.Hour), time.Now(), nil)
	if rec.Requests != most {
		t.Fatalf("recommend counts %d requests, want %d", rec.Requests, most)
	}
}

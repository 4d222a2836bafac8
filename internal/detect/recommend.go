package detect

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/traffic"
)

// Edge is one recorded edge with its traffic summed over a time range,
// as the server's traffic snapshot lists it (inbound: the destination is
// the workload that decided).
type Edge struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	Port        int    `json:"port,omitempty"`
	Protocol    string `json:"protocol"`
	Method      string `json:"method,omitempty"`
	Path        string `json:"path,omitempty"`
	Decision    string `json:"decision"`
	Token       string `json:"token,omitempty"`
	Requests    uint64 `json:"requests"`
}

// Workload is what a reporter said about its workload.
type Workload struct {
	SPIFFEID  string            `json:"spiffe_id"`
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels,omitempty"`
	Ports     []int             `json:"ports,omitempty"`
}

// Recommendation is the outcome of Recommend: the policies as YAML and
// what could not be expressed.
type Recommendation struct {
	YAML     string   `json:"yaml"`
	Policies int      `json:"policies"`
	Edges    int      `json:"edges"`
	Requests uint64   `json:"requests"`
	Skipped  []string `json:"skipped,omitempty"`
}

var dnsUnsafe = regexp.MustCompile(`[^a-z0-9-]+`)

// policyName is "observed-<service account>" as a DNS label.
func policyName(id string) string {
	tail := id
	if i := strings.LastIndex(id, "/sa/"); i >= 0 {
		tail = id[i+4:]
	} else if i := strings.LastIndex(id, "/"); i >= 0 {
		tail = id[i+1:]
	}
	n := strings.Trim(dnsUnsafe.ReplaceAllString(strings.ToLower(tail), "-"), "-")
	n = "observed-" + n
	if len(n) > 63 {
		n = strings.TrimRight(n[:63], "-")
	}
	return n
}

// Recommend writes Istio AuthorizationPolicies (security.istio.io/v1)
// that allow exactly the allowed edges and operations recorded for the
// workloads of namespace: one ALLOW policy per destination workload
// (selecting it by its app label, else by all its labels), one rule per
// caller (its principal, and the issuer of the token it always
// presented; plaintext callers of a PERMISSIVE workload as notPrincipals
// "*", so that no authenticated caller gains by the rule), one operation
// per method with the path templates seen ({*} where paths varied by an
// identifier), ports for TCP; and an allow-nothing policy for the
// namespace, so that what was not observed is denied. Denied and refused
// edges are left out; calls to workloads without labels to select them
// by are listed in Skipped.
//
// Exclude names callers whose traffic must not be learned from (an
// identity under an open or contained incident: what a compromised
// workload did is not what it should be allowed), with the reason; their
// edges are left out and listed in Skipped too.
func Recommend(edges []Edge, workloads []Workload, namespace string, from, to time.Time, exclude map[string]string) Recommendation {
	edges = MergeEdges(edges)
	ws := map[string]Workload{}
	apps := map[string]int{} // app label value → workloads of namespace carrying it
	var peers []Workload     // the workloads of namespace
	for _, w := range workloads {
		ws[w.SPIFFEID] = w
		if w.Namespace == namespace {
			peers = append(peers, w)
			if app, ok := w.Labels["app"]; ok {
				apps[app]++
			}
		}
	}
	// Each workload's selector (selectorOf), nil unless it selects that
	// workload alone among the namespace's (selectsOnly).
	sels := map[string]map[string]string{}
	for _, w := range peers {
		if sel := selectorOf(w, apps); sel != nil && selectsOnly(sel, w, peers) {
			sels[w.SPIFFEID] = sel
		}
	}
	type opKey struct{ method, path string }
	type callerKey struct{ src, token string }
	// destination → caller → method → paths (or ports for TCP)
	type callerOps struct {
		ops   map[string]map[string]bool
		ports map[int]bool
	}
	byDst := map[string]map[callerKey]*callerOps{}
	tokens := map[[4]string]map[string]bool{} // (src, dst, method, path) → token issuers seen
	rec := Recommendation{}
	skipped := map[string]uint64{}
	for _, e := range edges {
		if e.Decision != "allow" {
			continue
		}
		w, ok := ws[e.Destination]
		if !ok || w.Namespace != namespace {
			continue
		}
		if why, ok := exclude[e.Source]; ok && e.Source != "" {
			k := fmt.Sprintf("calls by %s (%s)", e.Source, why)
			skipped[k] = SatAdd(skipped[k], e.Requests)
			continue
		}
		if sels[e.Destination] == nil {
			k := fmt.Sprintf("calls to %s: the workload reported no labels a selector can use to select it alone", e.Destination)
			skipped[k] = SatAdd(skipped[k], e.Requests)
			continue
		}
		k := [4]string{e.Source, e.Destination, e.Method, e.Path}
		if tokens[k] == nil {
			tokens[k] = map[string]bool{}
		}
		tokens[k][e.Token] = true
	}
	for _, e := range edges {
		if e.Decision != "allow" {
			continue
		}
		w, ok := ws[e.Destination]
		if !ok || w.Namespace != namespace || sels[e.Destination] == nil {
			continue
		}
		if _, ok := exclude[e.Source]; ok && e.Source != "" {
			continue
		}
		if why := inexpressible(e); why != "" {
			k := fmt.Sprintf("calls to %s: %s", e.Destination, why)
			skipped[k] = SatAdd(skipped[k], e.Requests)
			continue
		}
		rec.Edges++
		rec.Requests = SatAdd(rec.Requests, e.Requests)
		// A token is required only when every request of the operation
		// carried one from the same issuer, and the issuer holds no "*"
		// (a wildcard in requestPrincipals).
		tok := ""
		if ts := tokens[[4]string{e.Source, e.Destination, e.Method, e.Path}]; len(ts) == 1 && !ts[""] && !strings.Contains(e.Token, "*") && utf8.ValidString(e.Token) {
			tok = e.Token
		}
		if byDst[e.Destination] == nil {
			byDst[e.Destination] = map[callerKey]*callerOps{}
		}
		ck := callerKey{e.Source, tok}
		co := byDst[e.Destination][ck]
		if co == nil {
			co = &callerOps{ops: map[string]map[string]bool{}, ports: map[int]bool{}}
			byDst[e.Destination][ck] = co
		}
		if e.Protocol == "tcp" || e.Method == "" {
			if e.Port > 0 {
				co.ports[e.Port] = true
			}
			continue
		}
		if co.ops[e.Method] == nil {
			co.ops[e.Method] = map[string]bool{}
		}
		co.ops[e.Method][e.Path] = true
	}
	dsts := make([]string, 0, len(byDst))
	for d := range byDst {
		dsts = append(dsts, d)
	}
	sort.Strings(dsts)
	var b strings.Builder
	fmt.Fprintf(&b, "# Recommended by \"moatless policy recommend\" from the traffic recorded in namespace %s\n", namespace)
	fmt.Fprintf(&b, "# from %s to %s: %d edges, %d allowed requests.\n", from.UTC().Format(time.RFC3339), to.UTC().Format(time.RFC3339), rec.Edges, rec.Requests)
	fmt.Fprintf(&b, "# Check them with \"moatless policy what-if -f THIS_FILE\" before applying.\n")
	notes := make([]string, 0, len(skipped))
	for s, n := range skipped {
		notes = append(notes, fmt.Sprintf("%s: %d requests", s, n))
	}
	sort.Strings(notes)
	rec.Skipped = notes
	for _, n := range notes {
		fmt.Fprintf(&b, "# Not included: %s\n", n)
	}
	// Deny by default in the namespace: ALLOW policies with no rules
	// match nothing, and once any ALLOW applies, only ALLOW rules admit.
	fmt.Fprintf(&b, "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: allow-nothing\n  namespace: %s\nspec: {}\n", yamlStr(namespace))
	rec.Policies = 1
	for _, d := range dsts {
		sel := sels[d]
		fmt.Fprintf(&b, "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: %s\n  namespace: %s\n", policyName(d), yamlStr(namespace))
		fmt.Fprintf(&b, "  annotations:\n    moatless.io/recommended-for: %s\n", yamlStr(d))
		fmt.Fprintf(&b, "spec:\n  selector:\n    matchLabels:\n")
		for _, k := range slices.Sorted(maps.Keys(sel)) {
			fmt.Fprintf(&b, "      %s: %s\n", yamlStr(k), yamlStr(sel[k]))
		}
		fmt.Fprintf(&b, "  action: ALLOW\n  rules:\n")
		callers := make([]callerKey, 0, len(byDst[d]))
		for ck := range byDst[d] {
			callers = append(callers, ck)
		}
		sort.Slice(callers, func(i, j int) bool {
			if callers[i].src != callers[j].src {
				return callers[i].src < callers[j].src
			}
			return callers[i].token < callers[j].token
		})
		for _, ck := range callers {
			co := byDst[d][ck]
			if ck.src == "" {
				// Plaintext callers (a PERMISSIVE edge workload): no
				// principal at all, these operations only.
				fmt.Fprintf(&b, "  - from:\n    - source:\n        notPrincipals: [\"*\"]\n")
			} else {
				fmt.Fprintf(&b, "  - from:\n    - source:\n        principals: [%s]\n", yamlStr(strings.TrimPrefix(ck.src, "spiffe://")))
			}
			if ck.token != "" {
				fmt.Fprintf(&b, "        requestPrincipals: [%s]\n", yamlStr(ck.token+"/*"))
			}
			fmt.Fprintf(&b, "    to:\n")
			for _, m := range slices.Sorted(maps.Keys(co.ops)) {
				paths := slices.Sorted(maps.Keys(co.ops[m]))
				q := make([]string, len(paths))
				for i, p := range paths {
					q[i] = yamlStr(p)
				}
				fmt.Fprintf(&b, "    - operation:\n        methods: [%s]\n        paths: [%s]\n", yamlStr(m), strings.Join(q, ", "))
			}
			if len(co.ports) > 0 {
				ports := make([]int, 0, len(co.ports))
				for p := range co.ports {
					ports = append(ports, p)
				}
				sort.Ints(ports)
				q := make([]string, len(ports))
				for i, p := range ports {
					q[i] = strconv.Quote(strconv.Itoa(p))
				}
				fmt.Fprintf(&b, "    - operation:\n        ports: [%s]\n", strings.Join(q, ", "))
			}
		}
		rec.Policies++
	}
	rec.YAML = b.String()
	return rec
}

// selectorOf is the matchLabels that select w: its app label alone
// unless another workload of the namespace shares it (apps counts them;
// a selector matching both would grant each the other's callers), else
// all its labels; nil when none or not all of them can be a selector
// (Istio: no "*", values of at most 63 bytes; UTF-8, as YAML reads it), since fewer labels could
// select other workloads too.
func selectorOf(w Workload, apps map[string]int) map[string]string {
	ok := func(k, v string) bool {
		return k != "" && !strings.Contains(k+v, "*") && len(v) <= 63 && utf8.ValidString(k) && utf8.ValidString(v)
	}
	if app, has := w.Labels["app"]; has && apps[app] == 1 && ok("app", app) {
		return map[string]string{"app": app}
	}
	if len(w.Labels) == 0 {
		return nil
	}
	for k, v := range w.Labels {
		if !ok(k, v) {
			return nil
		}
	}
	return w.Labels
}

// selectsOnly reports whether sel, w's selector, selects no other
// workload of peers (the namespace's). Istio's matchLabels selects every
// workload whose labels include sel's, so all the labels of a workload
// that reports a subset of another's (a canary with app=orders beside
// orders' app=orders, version=v2; or a node lying about its labels)
// select that other one too, and its policy would grant it its callers.
func selectsOnly(sel map[string]string, w Workload, peers []Workload) bool {
	for _, p := range peers {
		if p.SPIFFEID == w.SPIFFEID {
			continue
		}
		all := true
		for k, v := range sel {
			if pv, ok := p.Labels[k]; !ok || pv != v {
				all = false
				break
			}
		}
		if all {
			return false
		}
	}
	return true
}

// MergeEdges sums the requests of edges that differ only in what a
// recorded summary splits them by and replay cannot see (the status
// class, the reason): one edge per (source, destination, port, protocol,
// method, path, decision, token), in first-seen order.
func MergeEdges(edges []Edge) []Edge {
	type key struct {
		src, dst, proto, method, path, decision, token string
		port                                           int
	}
	idx := make(map[key]int, len(edges))
	out := make([]Edge, 0, len(edges))
	for _, e := range edges {
		k := key{e.Source, e.Destination, e.Protocol, e.Method, e.Path, e.Decision, e.Token, e.Port}
		if i, ok := idx[k]; ok {
			out[i].Requests = SatAdd(out[i].Requests, e.Requests)
			continue
		}
		idx[k] = len(out)
		out = append(out, e)
	}
	return out
}

// inexpressible says why a recorded edge cannot be allowed exactly by a
// policy rule, or "" when it can: a source that is not a SPIFFE ID, a
// method that is not an HTTP token or holds a "*" (a wildcard to the
// policy), a path policyPath refuses.
func inexpressible(e Edge) string {
	if e.Source != "" {
		if _, err := spiffeid.FromString(e.Source); err != nil {
			return "callers that are not SPIFFE IDs"
		}
	}
	if e.Protocol == "tcp" || e.Method == "" {
		return ""
	}
	for i := 0; i < len(e.Method); i++ {
		if c := e.Method[i]; c == '*' || !httpTokenChar(c) {
			return "methods no policy can match exactly"
		}
	}
	if !policyPath(e.Path) {
		return "paths no policy path can match exactly"
	}
	return ""
}

// httpTokenChar: RFC 9110 tchar.
func httpTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// policyPath reports whether a recorded path template can be an
// AuthorizationPolicy path as it is, matching what was recorded and no
// more: every segment is RFC 3986 pchar text (policy.IsTemplateLiteral:
// no "*", which the policy would read as a wildcard, no space or control
// character, which no request path holds), {*}, or — last — {**}; an
// empty segment only ends a template. traffic.PathTemplate's output qualifies;
// what a reporter sent otherwise is left out of a recommendation rather
// than widened.
func policyPath(p string) bool {
	if !strings.HasPrefix(p, "/") {
		return false
	}
	template := strings.Contains(p, traffic.AnySegment) || strings.Contains(p, "{**}")
	segs := strings.Split(p[1:], "/")
	for i, seg := range segs {
		last := i == len(segs)-1
		switch {
		case seg == traffic.AnySegment:
		case seg == "{**}":
			if !last {
				return false
			}
		case seg == "":
			if template && !last {
				return false
			}
		case !policy.IsTemplateLiteral(seg):
			return false
		}
	}
	return true
}

// yamlStr quotes s as a YAML (JSON) string.
func yamlStr(s string) string { return strconv.Quote(s) }

// WhatIf outcomes of an edge.
const (
	ChangeNewlyDenied  = "newly_denied"
	ChangeNewlyAllowed = "newly_allowed"
	ChangeStillAllowed = "still_allowed"
	ChangeStillDenied  = "still_denied"
)

// WhatIfResult is one recorded edge decided again under other policies.
type WhatIfResult struct {
	Edge
	// Change is newly_denied, newly_allowed, still_allowed or
	// still_denied.
	Change string `json:"change"`
	// Decision is the new decision, with the policy and rule that made
	// it.
	NewDecision string `json:"new_decision"`
	Policy      string `json:"policy,omitempty"`
	Rule        int    `json:"rule"`
	Reason      string `json:"reason,omitempty"`
}

// ReplayPath is the request path a path template is replayed as: each
// {*} becomes "0", and a trailing {**} "0".
func ReplayPath(template string) string {
	if template == "" {
		return "/"
	}
	return strings.ReplaceAll(strings.ReplaceAll(template, "{**}", "0"), traffic.AnySegment, "0")
}

// WhatIf decides every recorded inbound edge again with set — the same
// decision function the sidecars run (policy.Set.Decide) — and reports
// what would change, newly denied edges first (most requests first),
// then newly allowed ones, then the rest. An edge recorded with a
// verified token is decided as a request carrying a token of that issuer
// and an unknown subject: rules on token claims cannot be replayed.
// Refused connections (no request was made) and edges to workloads no
// reporter described are left out.
func WhatIf(set *policy.Set, edges []Edge, workloads []Workload) []WhatIfResult {
	edges = MergeEdges(edges)
	ws := map[string]Workload{}
	for _, w := range workloads {
		ws[w.SPIFFEID] = w
	}
	var out []WhatIfResult
	for _, e := range edges {
		switch e.Decision {
		case "allow", "deny", "unauthenticated":
		default:
			continue
		}
		w, ok := ws[e.Destination]
		if !ok {
			continue
		}
		req := &policy.Request{
			Protocol:    policy.HTTP,
			Source:      policy.Source{Principal: strings.TrimPrefix(e.Source, "spiffe://")},
			Destination: policy.Destination{Namespace: w.Namespace, Labels: w.Labels, Port: e.Port, Principal: strings.TrimPrefix(w.SPIFFEID, "spiffe://")},
			Method:      e.Method,
			Path:        ReplayPath(e.Path),
		}
		if e.Protocol == "tcp" {
			req.Protocol, req.Method, req.Path = policy.TCP, "", ""
		}
		if e.Token != "" {
			req.Auth = &policy.Auth{Principal: e.Token + "/(replayed)", Claims: map[string]any{"iss": e.Token, "sub": "(replayed)"}}
		}
		d := set.Decide(req)
		r := WhatIfResult{Edge: e, NewDecision: d.Outcome.String(), Policy: d.Policy, Rule: d.Rule, Reason: d.Reason}
		was := e.Decision == "allow"
		now := d.Outcome == policy.Allow
		switch {
		case was && !now:
			r.Change = ChangeNewlyDenied
		case !was && now:
			r.Change = ChangeNewlyAllowed
		case now:
			r.Change = ChangeStillAllowed
		default:
			r.Change = ChangeStillDenied
		}
		out = append(out, r)
	}
	rank := map[string]int{ChangeNewlyDenied: 0, ChangeNewlyAllowed: 1, ChangeStillDenied: 2, ChangeStillAllowed: 3}
	sort.SliceStable(out, func(i, j int) bool {
		if rank[out[i].Change] != rank[out[j].Change] {
			return rank[out[i].Change] < rank[out[j].Change]
		}
		if out[i].Requests != out[j].Requests {
			return out[i].Requests > out[j].Requests
		}
		return out[i].Source+out[i].Destination+out[i].Method+out[i].Path < out[j].Source+out[j].Destination+out[j].Method+out[j].Path
	})
	return out
}

//go:build !norego

package policy

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// prepare prepares rp's query against r (nil: no modules, so every
// evaluation is undefined, which denies).
func (rp *regoProvider) prepare(r *Rego, spec fieldPath) *fieldError {
	if r == nil {
		// An empty Rego keeps one code path.
		var err error
		if r, err = CompileRego(nil, nil); err != nil {
			return errAt(spec, "%v", err)
		}
	}
	ref := ast.MustParseRef(rp.query)
	pq, err := r.prepare(context.Background(), ref)
	if err != nil {
		return errAt(spec.key("query"), "%v", asRegoError(err))
	}
	rp.pq = pq
	rp.needs = inputNeeds(r, rp.maps)
	return nil
}

// parseRegoQuery reads a provider's query, a ground reference into data
// (data.a.b), in OPA's canonical form.
func parseRegoQuery(q string) (string, bool) {
	ref, err := ast.ParseRef(q)
	if err != nil || !ref.HasPrefix(ast.DefaultRootRef) || len(ref) < 2 || !ref.IsGround() {
		return "", false
	}
	return ref.String(), true
}

// regoQuery is a provider's prepared query; regoTerm a path element of
// an input mapping, made once.
type (
	regoQuery = rego.PreparedEvalQuery
	regoTerm  = *ast.Term
)

func stringTerms(ss []string) []*ast.Term {
	out := make([]*ast.Term, len(ss))
	for i, s := range ss {
		out[i] = ast.StringTerm(s)
	}
	return out
}

// inputNeeds is the part of the input the modules of r can read: every
// reference to input, followed through its constant keys (a variable key
// or a reference to the object itself reads all of it), and, for every
// mapping whose target the modules read, the mapping's source. Nil: all.
func inputNeeds(r *Rego, maps []inputMap) *needTree {
	root := &needTree{kids: map[string]*needTree{}}
	whole := false
	// add marks path as read in full.
	add := func(path []string) {
		n := root
		for i, k := range path {
			if n.kids == nil {
				return // an ancestor is read in full
			}
			kid, ok := n.kids[k]
			if !ok {
				kid = &needTree{}
				if i < len(path)-1 {
					kid.kids = map[string]*needTree{}
				}
				n.kids[k] = kid
			} else if i == len(path)-1 {
				kid.kids = nil
			}
			n = kid
		}
	}
	read := map[string]bool{}
	var visit func(x any)
	onRef := func(ref ast.Ref) {
		if whole || !ref.HasPrefix(ast.InputRootRef) {
			return
		}
		var path []string
		for _, t := range ref[1:] {
			k, ok := t.Value.(ast.String)
			if !ok {
				break
			}
			path = append(path, string(k))
		}
		if len(path) == 0 {
			whole = true
			return
		}
		read[path[0]] = true
		if inputRoots[path[0]] {
			add(path)
		}
	}
	visit = func(x any) {
		ast.NewGenericVisitor(func(x any) bool {
			switch t := x.(type) {
			case *ast.With:
				// "with input as …" replaces input (tests do it): its
				// target is not a read, its value may be.
				visit(t.Value)
				return true
			case ast.Ref:
				onRef(t)
			}
			return whole
		}).Walk(x)
	}
	for _, m := range r.modules {
		visit(r.compiler.Modules[m.ID])
	}
	if whole {
		return nil
	}
	for _, m := range maps {
		if read[m.to[0]] {
			add(m.from)
		}
	}
	// Header names are read lower-case; keep the form http.Header uses.
	if rq := root.kids["request"]; rq != nil && rq.kids != nil {
		if hs := rq.kids["headers"]; hs != nil {
			for k, n := range hs.kids {
				n.canon = http.CanonicalHeaderKey(k)
			}
		}
	}
	return root
}

// noMetrics spares every evaluation OPA's own timers: Moatless counts
// evaluations by provider and result instead.
var noMetrics = metrics.NoOp()

// eval runs the provider's query on req. Any failure denies: an error,
// the timeout, an undefined result, or a result of the wrong shape.
func (p *regoProvider) eval(req *Request, path string) customResult {
	res := customResult{eval: CustomEval{Provider: p.name, Query: p.query}}
	in := buildInput(p, req, path)
	res.eval.InputSHA256 = inputDigest(in)
	cancel := topdown.NewCancel()
	timer := time.AfterFunc(p.timeout, cancel.Cancel)
	opts := []rego.EvalOption{rego.EvalParsedInput(in), rego.EvalExternalCancel(cancel), rego.EvalMetrics(noMetrics)}
	if !req.Time.IsZero() {
		opts = append(opts, rego.EvalTime(req.Time))
	}
	rs, err := p.pq.Eval(context.Background(), opts...)
	stopped := timer.Stop()
	if err != nil {
		res.eval.Result, res.eval.Error = "error", err.Error()
		if !stopped || topdown.IsCancel(err) {
			res.eval.Result, res.eval.Error = "timeout", fmt.Sprintf("evaluation exceeded %s", p.timeout)
		}
		res.reason = "rego evaluation failed: " + res.eval.Error
		return res
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		res.eval.Result, res.reason = "deny", p.query+" is undefined"
		return res
	}
	if err := res.read(rs[0].Expressions[0].Value); err != nil {
		res.allow, res.headers, res.status = false, nil, 0
		res.eval.Result, res.eval.Error = "error", err.Error()
		res.reason = "rego result refused: " + err.Error()
		return res
	}
	res.eval.Result = "deny"
	if res.allow {
		res.eval.Result = "allow"
	}
	if res.reason == "" {
		res.reason = p.query + " is " + strconv.FormatBool(res.allow)
	}
	return res
}

// RegoFailures evaluates provider's query on req again with OPA's tracer
// and lists the expressions that evaluated to false, "file:line: expr",
// in evaluation order without repeats: for "moatless policy check
// --explain", what kept an allow rule from matching. It costs a traced
// evaluation and is not for the request path.
func (s *Set) RegoFailures(provider string, req *Request) ([]string, error) {
	if s == nil || s.providers[provider] == nil {
		return nil, fmt.Errorf("policy: no Rego provider %q", provider)
	}
	p := s.providers[provider]
	path := ""
	if req.Protocol != TCP {
		var err error
		if path, err = s.matchPath(nil, req); err != nil {
			return nil, err
		}
	}
	buf := topdown.NewBufferTracer()
	opts := []rego.EvalOption{rego.EvalParsedInput(buildInput(p, req, path)), rego.EvalQueryTracer(buf), rego.EvalRuleIndexing(false), rego.EvalEarlyExit(false)}
	if !req.Time.IsZero() {
		opts = append(opts, rego.EvalTime(req.Time))
	}
	ctx, cancel := context.WithTimeout(context.Background(), MaxRegoTimeout)
	defer cancel()
	if _, err := p.pq.Eval(ctx, opts...); err != nil {
		return nil, err
	}
	var out []string
	seen := map[string]bool{}
	for _, ev := range *buf {
		if ev.Op != topdown.FailOp {
			continue
		}
		e, ok := ev.Node.(*ast.Expr)
		if !ok || e.Location == nil || e.Location.File == "" || e.Generated {
			continue
		}
		line := fmt.Sprintf("%s:%d: %s", e.Location.File, e.Location.Row, strings.TrimSpace(string(e.Location.Text)))
		if !seen[line] {
			seen[line] = true
			out = append(out, line)
			if len(out) == maxRegoFailures {
				break
			}
		}
	}
	return out, nil
}

// RegoAvailable reports whether this executable evaluates Rego: true
// unless built with the tag norego (moatless-sidecar).
const RegoAvailable = true

// Package regoopa is OPA's Rego evaluator for package policy. Importing
// it registers it (regoengine.Register) and links OPA: an executable
// that does not import it — moatless-sidecar — evaluates no Rego and
// carries none of OPA's code. Import it for its effect:
//
//	import _ "github.com/moatless/moatless/internal/policy/regoopa"
//
// cmd/moatless does, through internal/cli and internal/server.
package regoopa

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/tester"
	"github.com/open-policy-agent/opa/v1/topdown"

	"github.com/moatless/moatless/internal/policy/regoengine"
)

func init() { regoengine.Register(Engine{}) }

// Engine is OPA's evaluator behind regoengine.Engine.
type Engine struct{ builder }

// asErrors turns OPA's errors into regoengine.Errors; other errors are
// returned as they are.
func asErrors(err error) error {
	var errs ast.Errors
	if errors.As(err, &errs) {
		return convertErrors(errs)
	}
	var one *ast.Error
	if errors.As(err, &one) {
		return convertErrors(ast.Errors{one})
	}
	return err
}

func convertErrors(errs ast.Errors) regoengine.Errors {
	out := make(regoengine.Errors, len(errs))
	for i, e := range errs {
		c := &regoengine.Error{Code: e.Code, Message: e.Message}
		if e.Location != nil {
			c.Located, c.File, c.Row, c.Col = true, e.Location.File, e.Location.Row, e.Location.Col
		}
		if e.Details != nil {
			c.Details = e.Details.Lines()
		}
		out[i] = c
	}
	return out
}

// parse parses one module as OPA does, trying Rego v1 first and then v0:
// a v0 module (rules without "if", "default allow = false" with "import
// future.keywords") is accepted where OPA accepts it with
// --v0-compatible. The error is v1's, OPA's own text with the module ID
// and line, when neither parses.
func parse(id, src string) (*ast.Module, error) {
	m, err := ast.ParseModuleWithOpts(id, src, ast.ParserOptions{RegoVersion: ast.RegoV1, ProcessAnnotation: true})
	if err == nil {
		return m, nil
	}
	if m0, err0 := ast.ParseModuleWithOpts(id, src, ast.ParserOptions{RegoVersion: ast.RegoV0, ProcessAnnotation: true}); err0 == nil {
		return m0, nil
	}
	return nil, asErrors(err)
}

// ParseModule implements regoengine.Engine.
func (Engine) ParseModule(id, src string) error {
	_, err := parse(id, src)
	return err
}

// ParseQuery implements regoengine.Engine.
func (Engine) ParseQuery(q string) (string, bool) {
	ref, err := ast.ParseRef(q)
	if err != nil || !ref.HasPrefix(ast.DefaultRootRef) || len(ref) < 2 || !ref.IsGround() {
		return "", false
	}
	return ref.String(), true
}

// compiled is one compiled version of the modules and data.
type compiled struct {
	ids      []string // sorted
	parsed   map[string]*ast.Module
	compiler *ast.Compiler
	store    storage.Store
	unsafe   map[string]struct{}
}

// Compile implements regoengine.Engine.
func (Engine) Compile(modules []regoengine.Module, data map[string]any, unsafe []string) (regoengine.Compiled, error) {
	c := &compiled{parsed: make(map[string]*ast.Module, len(modules)), unsafe: map[string]struct{}{}}
	for _, u := range unsafe {
		c.unsafe[u] = struct{}{}
	}
	// Every module's syntax errors at once: one answer names every
	// broken module.
	var errs regoengine.Errors
	for _, m := range modules {
		pm, err := parse(m.ID, m.Source)
		if err != nil {
			var re regoengine.Errors
			if !errors.As(err, &re) {
				return nil, err
			}
			errs = append(errs, re...)
			continue
		}
		c.ids = append(c.ids, m.ID)
		c.parsed[m.ID] = pm
	}
	if len(errs) > 0 {
		return nil, errs
	}
	c.compiler = ast.NewCompiler().
		WithUnsafeBuiltins(c.unsafe).
		WithEnablePrintStatements(false)
	c.compiler.Compile(c.parsed)
	if c.compiler.Failed() {
		return nil, convertErrors(c.compiler.Errors)
	}
	// A rule and a data document at the same path would make every query
	// under it fail at evaluation; OPA's server refuses the write, and so
	// does this.
	for _, key := range slices.Sorted(maps.Keys(data)) {
		ref := ast.Ref{ast.DefaultRootDocument, ast.StringTerm(key)}
		for _, id := range c.ids {
			m := c.parsed[id]
			if m.Package.Path.HasPrefix(ref) || ref.HasPrefix(m.Package.Path) {
				return nil, fmt.Errorf("data document %q conflicts with package %s of module %q", key, m.Package.Path, moduleFile(m))
			}
		}
	}
	// The store holds AST values: a query reads data without converting
	// it from Go values on every evaluation.
	if data == nil {
		data = map[string]any{}
	}
	dv, err := ast.InterfaceToValue(data)
	if err != nil {
		return nil, fmt.Errorf("data: %v", err)
	}
	obj, ok := dv.(ast.Object)
	if !ok {
		return nil, errors.New("data is not an object")
	}
	c.store = inmem.NewFromASTObject(obj)
	return c, nil
}

func moduleFile(m *ast.Module) string {
	if m.Package != nil && m.Package.Location != nil {
		return m.Package.Location.File
	}
	return ""
}

// ModuleAST implements regoengine.Compiled.
func (c *compiled) ModuleAST(id string) any {
	if m, ok := c.parsed[id]; ok {
		return m
	}
	return nil
}

func (c *compiled) prepare(ref ast.Ref) (*prepared, error) {
	pq, err := rego.New(
		rego.ParsedQuery(ast.NewBody(ast.NewExpr(ast.NewTerm(ref)))),
		rego.Compiler(c.compiler),
		rego.Store(c.store),
		rego.UnsafeBuiltins(c.unsafe),
		rego.EnablePrintStatements(false),
	).PrepareForEval(context.Background())
	if err != nil {
		return nil, asErrors(err)
	}
	return &prepared{pq: pq}, nil
}

// Prepare implements regoengine.Compiled.
func (c *compiled) Prepare(query string) (regoengine.Prepared, error) {
	ref, err := ast.ParseRef(query)
	if err != nil {
		return nil, asErrors(err)
	}
	return c.prepare(ref)
}

// maxDataPathSegments bounds a Data API path.
const maxDataPathSegments = 64

// PrepareData implements regoengine.Compiled: a segment of digits is an
// array index, as OPA's server reads it.
func (c *compiled) PrepareData(path []string) (regoengine.Prepared, error) {
	if len(path) > maxDataPathSegments {
		return nil, fmt.Errorf("path has more than %d segments", maxDataPathSegments)
	}
	ref := ast.Ref{ast.DefaultRootDocument}
	for _, k := range path {
		if n, err := strconv.Atoi(k); err == nil && n >= 0 && strconv.Itoa(n) == k {
			ref = append(ref, ast.InternedTerm(n))
			continue
		}
		ref = append(ref, ast.StringTerm(k))
	}
	return c.prepare(ref)
}

// InputRefs implements regoengine.Compiled: every reference to input,
// followed through its constant keys (a variable key stops the path; a
// reference to input itself reads all of it).
func (c *compiled) InputRefs() ([][]string, bool) {
	var paths [][]string
	whole := false
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
		paths = append(paths, path)
	}
	var visit func(x any)
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
	for _, id := range c.ids {
		visit(c.compiler.Modules[id])
	}
	if whole {
		return nil, true
	}
	return paths, false
}

// RunTests implements regoengine.Compiled: "opa test" with the same
// restrictions as a decision (no http.send, net.lookup_ip_addr or
// opa.runtime) but print() captured.
func (c *compiled) RunTests(ctx context.Context, filter string, timeout time.Duration) ([]regoengine.TestResult, error) {
	compiler := ast.NewCompiler().
		WithUnsafeBuiltins(c.unsafe).
		WithEnablePrintStatements(true)
	run := tester.NewRunner().
		SetCompiler(compiler).
		SetStore(c.store).
		CapturePrintOutput(true).
		SetTimeout(timeout)
	if filter != "" {
		run = run.Filter(filter)
	}
	ch, err := run.Run(ctx, c.parsed)
	if err != nil {
		return nil, asErrors(err)
	}
	var out []regoengine.TestResult
	for res := range ch {
		tr := regoengine.TestResult{Package: res.Package, Name: res.Name, Duration: res.Duration, Output: string(res.Output)}
		if res.Location != nil {
			tr.File, tr.Row = res.Location.File, res.Location.Row
		}
		switch {
		case res.Skip:
			tr.Outcome = "SKIPPED"
		case res.Error != nil:
			tr.Outcome, tr.Error = "ERROR", res.Error.Error()
		case res.Fail:
			tr.Outcome = "FAIL"
			if res.FailedAt != nil {
				tr.Error = fmt.Sprintf("failed at %s", res.FailedAt.String())
				if res.FailedAt.Location != nil {
					tr.Error = fmt.Sprintf("%s:%d: failed at %s", res.FailedAt.Location.File, res.FailedAt.Location.Row, res.FailedAt.String())
				}
			}
		default:
			tr.Outcome = "PASS"
		}
		out = append(out, tr)
	}
	return out, nil
}

// prepared is one prepared query.
type prepared struct{ pq rego.PreparedEvalQuery }

// noMetrics spares every evaluation OPA's own timers: Moatless counts
// evaluations by provider and result instead.
var noMetrics = metrics.NoOp()

// Eval implements regoengine.Prepared.
func (p *prepared) Eval(input any, t time.Time, timeout time.Duration) (any, bool, bool, error) {
	cancel := topdown.NewCancel()
	timer := time.AfterFunc(timeout, cancel.Cancel)
	opts := []rego.EvalOption{rego.EvalParsedInput(value(input)), rego.EvalExternalCancel(cancel), rego.EvalMetrics(noMetrics)}
	if !t.IsZero() {
		opts = append(opts, rego.EvalTime(t))
	}
	rs, err := p.pq.Eval(context.Background(), opts...)
	stopped := timer.Stop()
	if err != nil {
		return nil, false, !stopped || topdown.IsCancel(err), err
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return nil, false, false, nil
	}
	return rs[0].Expressions[0].Value, true, false, nil
}

// Failures implements regoengine.Prepared.
func (p *prepared) Failures(ctx context.Context, input any, t time.Time, max int) ([]string, error) {
	buf := topdown.NewBufferTracer()
	opts := []rego.EvalOption{rego.EvalParsedInput(value(input)), rego.EvalQueryTracer(buf), rego.EvalRuleIndexing(false), rego.EvalEarlyExit(false)}
	if !t.IsZero() {
		opts = append(opts, rego.EvalTime(t))
	}
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
			if len(out) == max {
				break
			}
		}
	}
	return out, nil
}

// Query implements regoengine.Prepared.
func (p *prepared) Query(ctx context.Context, input any, hasInput bool) (any, bool, error) {
	var opts []rego.EvalOption
	if hasInput {
		v, err := ast.InterfaceToValue(input)
		if err != nil {
			return nil, false, fmt.Errorf("%w: %v", regoengine.ErrInput, err)
		}
		opts = append(opts, rego.EvalParsedInput(v))
	}
	rs, err := p.pq.Eval(ctx, opts...)
	if err != nil {
		return nil, false, err
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return nil, false, nil
	}
	return rs[0].Expressions[0].Value, true, nil
}

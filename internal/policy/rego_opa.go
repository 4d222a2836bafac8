//go:build !norego

package policy

import (
	"context"
	"errors"
	"strings"
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"

	"github.com/moatless/moatless/internal/wire"
)

// regoErrors are OPA's errors of a module or data set (RegoError.Errors).
type regoErrors = ast.Errors

// checkRegoModule is ParseRegoModule for callers that need only its
// verdict.
func checkRegoModule(id, src string) error {
	_, err := ParseRegoModule(id, src)
	return err
}

// asRegoError turns whatever OPA returned into a *RegoError.
func asRegoError(err error) error {
	var errs ast.Errors
	if errors.As(err, &errs) {
		return &RegoError{Errors: errs}
	}
	var one *ast.Error
	if errors.As(err, &one) {
		return &RegoError{Errors: ast.Errors{one}}
	}
	return &RegoError{Msg: err.Error()}
}

// ParseRegoModule parses one module as OPA does, trying Rego v1 first and
// then v0: a v0 module (rules without "if", "default allow = false" with
// "import future.keywords") is accepted where OPA accepts it with
// --v0-compatible. The error is v1's, OPA's own text with the module ID
// and line, when neither parses.
func ParseRegoModule(id, src string) (*ast.Module, error) {
	if err := checkRegoSource(id, src); err != nil {
		return nil, err
	}
	m, err := ast.ParseModuleWithOpts(id, src, ast.ParserOptions{RegoVersion: ast.RegoV1, ProcessAnnotation: true})
	if err == nil {
		return m, nil
	}
	if m0, err0 := ast.ParseModuleWithOpts(id, src, ast.ParserOptions{RegoVersion: ast.RegoV0, ProcessAnnotation: true}); err0 == nil {
		return m0, nil
	}
	return nil, asRegoError(err)
}

// Rego is one compiled version of the Rego modules and data documents:
// immutable and safe for concurrent use. Build it with CompileRego, once
// per policy version, outside the request path; Compile prepares each
// RegoProvider's query against it (Options.Rego).
type Rego struct {
	modules  []wire.RegoModule // sorted by ID
	parsed   map[string]*ast.Module
	data     []wire.DataDocument // sorted by key
	dataMap  map[string]any
	compiler *ast.Compiler
	store    storage.Store

	mu      sync.Mutex
	queries map[string]rego.PreparedEvalQuery // Query's cache, bounded
}

// maxQueryCache bounds the prepared queries Rego.Query keeps.
const maxQueryCache = 256

// CompileRego parses and compiles modules with data. Errors are
// *RegoError (wrapping ErrInvalid): OPA's parse and compile errors name
// the module ID and line; limits and malformed data name the item. The
// inputs are copied.
func CompileRego(modules []wire.RegoModule, data []wire.DataDocument) (*Rego, error) {
	r := &Rego{parsed: make(map[string]*ast.Module, len(modules))}
	var errs ast.Errors
	var err error
	r.modules, err = checkRegoModules(modules, data, func(m wire.RegoModule) error {
		pm, err := ParseRegoModule(m.ID, m.Source)
		if err != nil {
			var re *RegoError
			if errors.As(err, &re) && re.Msg == "" {
				errs = append(errs, re.Errors...) // reported with the others
				return nil
			}
			return err
		}
		r.parsed[m.ID] = pm
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(errs) > 0 {
		return nil, &RegoError{Errors: errs}
	}
	if r.dataMap, r.data, err = decodeDataDocuments(data); err != nil {
		return nil, err
	}
	r.compiler = ast.NewCompiler().
		WithUnsafeBuiltins(regoUnsafeBuiltins).
		WithEnablePrintStatements(false)
	r.compiler.Compile(r.parsed)
	if r.compiler.Failed() {
		return nil, &RegoError{Errors: r.compiler.Errors}
	}
	// A rule and a data document at the same path would make every query
	// under it fail at evaluation; OPA's server refuses the write, and so
	// does this.
	for _, key := range sortedKeys(r.dataMap) {
		ref := ast.Ref{ast.DefaultRootDocument, ast.StringTerm(key)}
		for _, mm := range r.modules {
			m := r.parsed[mm.ID]
			if m.Package.Path.HasPrefix(ref) || ref.HasPrefix(m.Package.Path) {
				return nil, regoErrorf("data document %q conflicts with package %s of module %q", key, m.Package.Path, moduleFile(m))
			}
		}
	}
	// The store holds AST values: a query reads data without converting
	// it from Go values on every evaluation.
	dv, err := ast.InterfaceToValue(r.dataMap)
	if err != nil {
		return nil, regoErrorf("data: %v", err)
	}
	obj, ok := dv.(ast.Object)
	if !ok {
		return nil, regoErrorf("data is not an object")
	}
	r.store = inmem.NewFromASTObject(obj)
	return r, nil
}

func moduleFile(m *ast.Module) string {
	if m.Package != nil && m.Package.Location != nil {
		return m.Package.Location.File
	}
	return ""
}

// Module returns the module with id and its parsed form.
func (r *Rego) Module(id string) (wire.RegoModule, *ast.Module, bool) {
	if r == nil {
		return wire.RegoModule{}, nil, false
	}
	for _, m := range r.modules {
		if m.ID == id {
			return m, r.parsed[id], true
		}
	}
	return wire.RegoModule{}, nil, false
}

// prepare compiles query against the modules and data, for repeated
// evaluation. The query must be a reference into data.
func (r *Rego) prepare(ctx context.Context, query ast.Ref) (rego.PreparedEvalQuery, error) {
	return rego.New(
		rego.ParsedQuery(ast.NewBody(ast.NewExpr(ast.NewTerm(query)))),
		rego.Compiler(r.compiler),
		rego.Store(r.store),
		rego.UnsafeBuiltins(regoUnsafeBuiltins),
		rego.EnablePrintStatements(false),
	).PrepareForEval(ctx)
}

// DataRef parses an OPA Data API path ("a/b/c", as in /v1/data/a/b/c;
// "" is the whole of data) into the reference data.a.b.c. Segments are
// taken as strings (percent-decoding is the caller's), except that a
// segment of digits indexes arrays as OPA's server does.
func DataRef(p string) (ast.Ref, error) {
	ref := ast.Ref{ast.DefaultRootDocument}
	p = strings.Trim(p, "/")
	if p == "" {
		return ref, nil
	}
	segs := strings.Split(p, "/")
	if len(segs) > 64 {
		return nil, errors.New("path has more than 64 segments")
	}
	for _, s := range segs {
		if s == "" {
			return nil, errors.New("path has an empty segment")
		}
		ref = append(ref, ast.StringTerm(s))
	}
	return ref, nil
}

// Query evaluates the document at ref (data.a.b, from DataRef) with input
// (nil for none) and returns its value as JSON-compatible Go values;
// defined is false when the document is undefined. Prepared queries are
// cached per path. It is for the Data API and tools, not the request
// path (CUSTOM decisions use the providers' queries, prepared at Compile).
func (r *Rego) Query(ctx context.Context, ref ast.Ref, input ast.Value) (result any, defined bool, err error) {
	if r == nil {
		return nil, false, errors.New("policy: no Rego modules or data loaded")
	}
	key := ref.String()
	r.mu.Lock()
	pq, ok := r.queries[key]
	r.mu.Unlock()
	if !ok {
		if pq, err = r.prepare(ctx, ref); err != nil {
			return nil, false, asRegoError(err)
		}
		r.mu.Lock()
		if r.queries == nil || len(r.queries) >= maxQueryCache {
			r.queries = map[string]rego.PreparedEvalQuery{}
		}
		r.queries[key] = pq
		r.mu.Unlock()
	}
	opts := []rego.EvalOption{}
	if input != nil {
		opts = append(opts, rego.EvalParsedInput(input))
	}
	rs, err := pq.Eval(ctx, opts...)
	if err != nil {
		return nil, false, err
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return nil, false, nil
	}
	return rs[0].Expressions[0].Value, true, nil
}

// EmptyRego is the Rego of a version without modules or data: every
// query of data is undefined but data itself ({}).
var EmptyRego = sync.OnceValue(func() *Rego {
	r, err := CompileRego(nil, nil)
	if err != nil {
		panic("policy: empty Rego does not compile: " + err.Error())
	}
	return r
})

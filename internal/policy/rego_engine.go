package policy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/moatless/moatless/internal/policy/regoengine"
	"github.com/moatless/moatless/internal/wire"
)

// This file is Rego through whichever evaluator the executable links
// (package regoengine; OPA's is package regoopa, which cmd/moatless
// imports and cmd/moatless-sidecar does not). Without one, modules and
// data documents are checked as far as they can be (IDs, keys, sizes,
// counts, strict JSON) and kept, so that the policy version they belong
// to loads and the rest of it is enforced; a CUSTOM policy decided by a
// RegoProvider denies (regoProvider.eval), as Istio denies when an
// ext_authz provider cannot be reached and failOpen is not set.

// RegoAvailable reports whether this executable evaluates Rego: whether
// it links an evaluator (package regoopa). It does not change while the
// process runs: the evaluator registers itself before main.
func RegoAvailable() bool { return regoengine.Current() != nil }

// regoErrors are the evaluator's errors of a module or data set
// (RegoError.Errors).
type regoErrors = regoengine.Errors

// asRegoError turns whatever the evaluator returned into a *RegoError.
func asRegoError(err error) error {
	var re *RegoError
	if errors.As(err, &re) {
		return re
	}
	var errs regoengine.Errors
	if errors.As(err, &errs) {
		return &RegoError{Errors: errs}
	}
	return &RegoError{Msg: err.Error()}
}

// CheckRegoModule checks one module as the evaluator parses it (OPA:
// Rego v1 first, then v0, as OPA accepts a v0 module with
// --v0-compatible), with its ID and size. Errors are *RegoError: OPA's
// own text with the module ID and line. Without an evaluator only the ID
// and size are checked.
func CheckRegoModule(id, src string) error {
	if err := checkRegoSource(id, src); err != nil {
		return err
	}
	if e := regoengine.Current(); e != nil {
		if err := e.ParseModule(id, src); err != nil {
			return asRegoError(err)
		}
	}
	return nil
}

// checkRegoModule is CheckRegoModule (Bundle.Add's check).
func checkRegoModule(id, src string) error { return CheckRegoModule(id, src) }

// Rego is one version of the Rego modules and data documents: immutable
// and safe for concurrent use. Build it with CompileRego, once per
// policy version, outside the request path; Compile prepares each
// RegoProvider's query against it (Options.Rego). Without an evaluator
// it is checked but not compiled.
type Rego struct {
	modules  []wire.RegoModule   // sorted by ID
	data     []wire.DataDocument // sorted by key
	compiled regoengine.Compiled // nil without an evaluator

	mu      sync.Mutex
	queries map[string]regoengine.Prepared // Query's cache, bounded
}

// maxQueryCache bounds the prepared queries Rego.Query keeps.
const maxQueryCache = 256

// CompileRego parses and compiles modules with data. Errors are
// *RegoError (wrapping ErrInvalid): the evaluator's parse and compile
// errors name the module ID and line; limits and malformed data name the
// item. Without an evaluator what needs one (parsing, compiling, a data
// document at a package's path) is not checked; it could only change a
// deny into a refusal. The inputs are copied.
func CompileRego(modules []wire.RegoModule, data []wire.DataDocument) (*Rego, error) {
	r := &Rego{}
	var err error
	if r.modules, err = checkRegoModules(modules, data); err != nil {
		return nil, err
	}
	e := regoengine.Current()
	var dataMap map[string]any
	if dataMap, r.data, err = decodeDataDocuments(data); err != nil {
		// The modules' syntax errors come first, as they are found
		// first: every module's at once.
		if e != nil {
			var errs regoengine.Errors
			for _, m := range r.modules {
				var me regoengine.Errors
				if errors.As(e.ParseModule(m.ID, m.Source), &me) {
					errs = append(errs, me...)
				}
			}
			if len(errs) > 0 {
				return nil, &RegoError{Errors: errs}
			}
		}
		return nil, err
	}
	if e == nil {
		return r, nil
	}
	ms := make([]regoengine.Module, len(r.modules))
	for i, m := range r.modules {
		ms[i] = regoengine.Module{ID: m.ID, Source: m.Source}
	}
	unsafe := make([]string, 0, len(regoUnsafeBuiltins))
	for b := range regoUnsafeBuiltins {
		unsafe = append(unsafe, b)
	}
	if r.compiled, err = e.Compile(ms, dataMap, unsafe); err != nil {
		return nil, asRegoError(err)
	}
	return r, nil
}

// Module returns the module with id and its parsed form (the evaluator's
// AST, for JSON; nil without an evaluator).
func (r *Rego) Module(id string) (wire.RegoModule, any, bool) {
	if r == nil {
		return wire.RegoModule{}, nil, false
	}
	for _, m := range r.modules {
		if m.ID == id {
			var parsed any
			if r.compiled != nil {
				parsed = r.compiled.ModuleAST(id)
			}
			return m, parsed, true
		}
	}
	return wire.RegoModule{}, nil, false
}

// Query evaluates the document at path (segments of OPA's Data API,
// /v1/data/a/b → ["a", "b"]; none is the whole of data; a segment of
// digits indexes an array) with input (JSON-compatible values; hasInput
// false for none) and returns its value; defined is false when the
// document is undefined. Prepared queries are cached per path. It is for
// the Data API and tools, not the request path (CUSTOM decisions use the
// providers' queries, prepared at Compile). A query that does not
// compile is a *RegoError; an input that does not convert wraps
// regoengine.ErrInput; without an evaluator ErrRegoUnavailable.
func (r *Rego) Query(ctx context.Context, path []string, input any, hasInput bool) (result any, defined bool, err error) {
	if r == nil {
		return nil, false, errors.New("policy: no Rego modules or data loaded")
	}
	if r.compiled == nil {
		return nil, false, ErrRegoUnavailable
	}
	for _, s := range path {
		if s == "" {
			return nil, false, errors.New("policy: data path has an empty segment")
		}
	}
	key := strings.Join(path, "\x00")
	r.mu.Lock()
	pq, ok := r.queries[key]
	r.mu.Unlock()
	if !ok {
		if pq, err = r.compiled.PrepareData(path); err != nil {
			return nil, false, asRegoError(err)
		}
		r.mu.Lock()
		if r.queries == nil || len(r.queries) >= maxQueryCache {
			r.queries = map[string]regoengine.Prepared{}
		}
		r.queries[key] = pq
		r.mu.Unlock()
	}
	return pq.Query(ctx, input, hasInput)
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

// RegoTestResult is one Rego test rule's outcome ("opa test" semantics:
// rules named test_* pass when they are true; todo_test_* are skipped).
type RegoTestResult = regoengine.TestResult

// RunRegoTests runs the test rules of modules against data, as "opa
// test" does, with the same restrictions as a decision (no http.send,
// net.lookup_ip_addr or opa.runtime) but print() captured. filter, when
// set, is a regular expression selecting tests by "package.name"; timeout
// bounds each test (0: 5s). Modules that do not compile are a *RegoError;
// without an evaluator it is ErrRegoUnavailable.
func RunRegoTests(ctx context.Context, modules []wire.RegoModule, data []wire.DataDocument, filter string, timeout time.Duration) ([]RegoTestResult, error) {
	if !RegoAvailable() {
		return nil, fmt.Errorf("policy: rego tests: %w", ErrRegoUnavailable)
	}
	r, err := CompileRego(modules, data) // validates everything, OPA's errors on failure
	if err != nil {
		return nil, err
	}
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	res, err := r.compiled.RunTests(ctx, filter, timeout)
	if err != nil {
		return nil, asRegoError(err)
	}
	return res, nil
}

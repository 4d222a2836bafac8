// Package regoengine is the seam between package policy and a Rego
// evaluator: the interfaces policy calls, the few types both sides
// share, and the registry that links one in. It imports no evaluator.
//
// Why a registry and not a build tag: moatless-sidecar is the data plane
// alone, and OPA (its code, tables and initializers: ~18 MB of
// executable, ~6 MB of RSS per sidecar) must stay out of it without the
// user passing a tag to "go build" or "go install". An executable
// evaluates Rego exactly when it imports package regoopa, whose init
// calls Register; cmd/moatless does (through internal/cli and
// internal/server), cmd/moatless-sidecar does not, and "go list -deps
// ./cmd/moatless-sidecar" shows it (internal/cli's layering test checks
// that). Without an evaluator package policy still loads Rego modules
// and data (checked as far as they can be without parsing) and a CUSTOM
// policy decided by a RegoProvider denies with result "unavailable".
package regoengine

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Engine parses, compiles and evaluates Rego. Implementations are safe
// for concurrent use.
type Engine interface {
	// ParseModule parses one module's source (its ID and size are
	// already checked). A syntax error is Errors.
	ParseModule(id, src string) error
	// Compile parses and compiles modules (IDs unique, sources within
	// limits, sorted by ID) with data (the data documents by key, JSON
	// values as encoding/json decodes them with UseNumber), refusing
	// the built-ins named in unsafe. Errors are Errors (the modules'
	// syntax and compile errors, every module's at once) or a plain
	// error naming what is wrong (a data document at a package's path).
	Compile(modules []Module, data map[string]any, unsafe []string) (Compiled, error)
	// ParseQuery reads a provider's query: a ground reference into data
	// with at least one key (data.a.b), in the evaluator's canonical
	// form; ok is false for anything else.
	ParseQuery(q string) (canonical string, ok bool)
	// Builder builds input documents (policy's input.go).
	Builder
}

// Module is one Rego module's ID and source.
type Module struct {
	ID, Source string
}

// Compiled is one compiled set of modules and data: immutable.
type Compiled interface {
	// Prepare prepares the query, a reference into data (ParseQuery's
	// canonical form), for repeated evaluation; errors are the
	// evaluator's compile errors (Errors where it has them).
	Prepare(query string) (Prepared, error)
	// PrepareData prepares the document at path (segments of OPA's Data
	// API: a segment of digits indexes an array) for Query.
	PrepareData(path []string) (Prepared, error)
	// InputRefs lists the constant-key paths below input that the
	// modules read (input.request.headers["x-a"] reads [request headers
	// x-a]); whole is true when a module reads input itself or through a
	// variable key at its root.
	InputRefs() (paths [][]string, whole bool)
	// ModuleAST is the parsed form of a module, for the Policy API to
	// render as JSON; nil for an unknown ID.
	ModuleAST(id string) any
	// RunTests runs the modules' test rules as "opa test" does
	// (filter: a regular expression of "package.rule"; timeout per test).
	RunTests(ctx context.Context, filter string, timeout time.Duration) ([]TestResult, error)
}

// Prepared is one prepared query. Inputs are values of the engine's
// Builder (an object from NewObject).
type Prepared interface {
	// Eval evaluates with input at time t (zero: now), cancelled past
	// timeout. value is the first expression's value as JSON-compatible
	// Go values (numbers json.Number); defined is false when the query
	// is undefined; timedOut says that err is the timeout's.
	Eval(input any, t time.Time, timeout time.Duration) (value any, defined bool, timedOut bool, err error)
	// Failures evaluates again with a tracer and lists the expressions
	// that evaluated to false, "file:line: expr", in order without
	// repeats, at most max.
	Failures(ctx context.Context, input any, t time.Time, max int) ([]string, error)
	// Query evaluates with input given as JSON-compatible Go values
	// (hasInput false: none), for the Data API. A bad input wraps
	// ErrInput.
	Query(ctx context.Context, input any, hasInput bool) (value any, defined bool, err error)
}

// Builder makes the values of an input document. Values and objects are
// the engine's own, held as any by the caller; keys named often are
// made once by the engine.
type Builder interface {
	// NewObject returns an empty object with room for n keys.
	NewObject(n int) any
	// Put sets key in obj to v (a value or an object of this Builder).
	Put(obj any, key string, v any)
	String(s string) any
	Int(n int) any
	// Number is a JSON number's text.
	Number(text string) any
	Bool(b bool) any
	Strings(ss []string) any
	// JSONValue converts a JSON-compatible Go value (a verified token's
	// claims); ok is false for one that does not convert.
	JSONValue(v any) (any, bool)
	// Path makes a path of object keys for Lookup and Set, once: a
	// request then makes no key of it.
	Path(keys []string) any
	// Lookup follows path (from Path) through nested objects; ok is
	// false where it is undefined.
	Lookup(obj any, path any) (any, bool)
	// Set puts v at path (from Path), making objects on the way (a
	// non-object on the way is replaced).
	Set(obj any, path any, v any)
	// Digest is the hex SHA-256 of an unambiguous encoding of v: equal
	// values have equal digests.
	Digest(v any) string
	// JSON converts v to JSON-compatible Go values.
	JSON(v any) (any, error)
}

// ErrInput is a Data API input that the engine cannot take; the error
// reads "input: " and why.
var ErrInput = errors.New("input")

// Error is one of the evaluator's errors about a module: code, message,
// where (Located; File is the module ID) and detail lines.
type Error struct {
	Code    string
	Message string
	Located bool
	File    string
	Row     int
	Col     int
	Details []string
}

// Error renders it as OPA does: "file:row: code: message", then each
// detail line indented.
func (e *Error) Error() string {
	var b strings.Builder
	if e.Located {
		if e.File != "" {
			b.WriteString(e.File + ":" + strconv.Itoa(e.Row) + ": ")
		} else {
			b.WriteString(strconv.Itoa(e.Row) + ":" + strconv.Itoa(e.Col) + ": ")
		}
	}
	b.WriteString(e.Code + ": " + e.Message)
	for _, l := range e.Details {
		b.WriteString("\n\t" + l)
	}
	return b.String()
}

// Errors are the evaluator's errors of a module or a set of modules.
type Errors []*Error

func (es Errors) Error() string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "\n")
}

// TestResult is one Rego test rule's outcome ("opa test" semantics:
// rules named test_* pass when they are true; todo_test_* are skipped).
type TestResult struct {
	Package  string        `json:"package"`
	Name     string        `json:"name"`
	File     string        `json:"file"`
	Row      int           `json:"row"`
	Outcome  string        `json:"outcome"` // PASS, FAIL, ERROR, SKIPPED
	Error    string        `json:"error,omitempty"`
	Output   string        `json:"output,omitempty"` // what print() wrote
	Duration time.Duration `json:"duration_ns"`
}

var current atomic.Pointer[Engine]

// Register makes e the executable's Rego evaluator. It is called from
// the evaluator package's init, before main runs and before any policy
// is compiled; a second registration panics (two evaluators would make
// the decision depend on init order).
func Register(e Engine) {
	if e == nil || !current.CompareAndSwap(nil, &e) {
		panic("regoengine: Register called twice or with nil")
	}
}

// Current is the registered evaluator, nil when the executable links
// none.
func Current() Engine {
	if p := current.Load(); p != nil {
		return *p
	}
	return nil
}

package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"sigs.k8s.io/yaml"

	"github.com/moatless/moatless/internal/wire"
)

// Limits on Rego modules and data documents. They bound what one policy
// version can make every sidecar hold in memory and compile.
const (
	// MaxRegoModules bounds the modules of one policy version.
	MaxRegoModules = 1000
	// MaxRegoModuleSize bounds one module's source.
	MaxRegoModuleSize = 1 << 20
	// MaxDataDocuments bounds the data documents (top-level keys of
	// data) of one policy version.
	MaxDataDocuments = 1000
	// MaxDataDocumentSize bounds one data document as JSON.
	MaxDataDocumentSize = 4 << 20
	// MaxDataSize bounds all data documents together as JSON.
	MaxDataSize = 16 << 20
	// maxRegoIDLen bounds a module ID (OPA's policy ID).
	maxRegoIDLen = 256
)

// regoUnsafeBuiltins are the OPA built-ins a module may not call: they do
// network I/O (http.send, net.lookup_ip_addr) or read the process's
// environment (opa.runtime). A decision is a function of the request, the
// policy version and nothing else; a module that calls one of these is
// refused when it is compiled, with OPA's error and line.
var regoUnsafeBuiltins = map[string]struct{}{
	"http.send":          {},
	"net.lookup_ip_addr": {},
	"opa.runtime":        {},
}

// dataKeyRE is the shape of a data document's key: one path segment of
// OPA's Data API, usable as data.<key> in Rego. Compiled on first use: the
// {0,127} compiles to about 100 KB that every role would keep otherwise.
var dataKeyRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]{0,127}$`) })

// RegoError is a module or data set OPA refused, with OPA's errors (code,
// message, file = module ID, row and column). It wraps ErrInvalid.
type RegoError struct {
	Errors ast.Errors
	// Msg is set for errors that are not OPA's (limits, bad data).
	Msg string
}

func (e *RegoError) Error() string {
	if e.Msg != "" {
		return "rego: " + e.Msg
	}
	var b strings.Builder
	for i, x := range e.Errors {
		if i > 0 {
			b.WriteString("\n")
		}
		b.WriteString(x.Error())
	}
	return b.String()
}

func (e *RegoError) Unwrap() error { return ErrInvalid }

func regoErrorf(format string, args ...any) error {
	return &RegoError{Msg: fmt.Sprintf(format, args...)}
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

// ValidRegoID reports whether id may name a module: what OPA's Policy API
// takes as {id}, bounded, without control characters, "..", or a leading
// or trailing "/".
func ValidRegoID(id string) error {
	switch {
	case id == "":
		return errors.New("a module ID is required")
	case len(id) > maxRegoIDLen:
		return fmt.Errorf("module ID is longer than %d bytes", maxRegoIDLen)
	case strings.HasPrefix(id, "/") || strings.HasSuffix(id, "/"):
		return fmt.Errorf("module ID %q must not start or end with /", id)
	}
	for _, seg := range strings.Split(id, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("module ID %q has an empty, . or .. segment", id)
		}
	}
	for _, r := range id {
		if r < 0x20 || r == 0x7f || r == '\\' {
			return fmt.Errorf("module ID %q holds a control character or a backslash", id)
		}
	}
	return nil
}

// ValidDataKey reports whether key may name a data document.
func ValidDataKey(key string) error {
	if !dataKeyRE().MatchString(key) {
		return fmt.Errorf("data key %q: want a letter or _ then letters, digits, _ or - (at most 128)", key)
	}
	return nil
}

// ParseRegoModule parses one module as OPA does, trying Rego v1 first and
// then v0: a v0 module (rules without "if", "default allow = false" with
// "import future.keywords") is accepted where OPA accepts it with
// --v0-compatible. The error is v1's, OPA's own text with the module ID
// and line, when neither parses.
func ParseRegoModule(id, src string) (*ast.Module, error) {
	if err := ValidRegoID(id); err != nil {
		return nil, &RegoError{Msg: err.Error()}
	}
	if len(src) > MaxRegoModuleSize {
		return nil, regoErrorf("%s: module is larger than %d KiB", id, MaxRegoModuleSize>>10)
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
	if len(modules) > MaxRegoModules {
		return nil, regoErrorf("more than %d modules", MaxRegoModules)
	}
	if len(data) > MaxDataDocuments {
		return nil, regoErrorf("more than %d data documents", MaxDataDocuments)
	}
	r := &Rego{parsed: make(map[string]*ast.Module, len(modules)), dataMap: make(map[string]any, len(data))}
	var errs ast.Errors
	for _, m := range modules {
		if _, dup := r.parsed[m.ID]; dup {
			return nil, regoErrorf("module %q given twice", m.ID)
		}
		pm, err := ParseRegoModule(m.ID, m.Source)
		if err != nil {
			var re *RegoError
			if errors.As(err, &re) && re.Msg == "" {
				errs = append(errs, re.Errors...)
				r.parsed[m.ID] = nil
				continue
			}
			return nil, err
		}
		r.parsed[m.ID] = pm
		r.modules = append(r.modules, m)
	}
	if len(errs) > 0 {
		return nil, &RegoError{Errors: errs}
	}
	total := 0
	for _, d := range data {
		if err := ValidDataKey(d.Key); err != nil {
			return nil, &RegoError{Msg: err.Error()}
		}
		if _, dup := r.dataMap[d.Key]; dup {
			return nil, regoErrorf("data document %q given twice", d.Key)
		}
		if len(d.Value) > MaxDataDocumentSize {
			return nil, regoErrorf("data document %q is larger than %d MiB", d.Key, MaxDataDocumentSize>>20)
		}
		total += len(d.Value)
		if total > MaxDataSize {
			return nil, regoErrorf("data documents total more than %d MiB", MaxDataSize>>20)
		}
		v, err := decodeJSON(d.Value)
		if err != nil {
			return nil, regoErrorf("data document %q: %v", d.Key, err)
		}
		r.dataMap[d.Key] = v
		r.data = append(r.data, d)
	}
	sort.Slice(r.modules, func(i, j int) bool { return r.modules[i].ID < r.modules[j].ID })
	sort.Slice(r.data, func(i, j int) bool { return r.data[i].Key < r.data[j].Key })

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

// Modules are the modules, sorted by ID. Read only.
func (r *Rego) Modules() []wire.RegoModule {
	if r == nil {
		return nil
	}
	return r.modules
}

// Data are the data documents, sorted by key. Read only.
func (r *Rego) Data() []wire.DataDocument {
	if r == nil {
		return nil
	}
	return r.data
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

// ParseDataJSON reads a JSON document strictly (duplicate keys, trailing
// data and deep nesting refused), bounded by limit bytes.
func ParseDataJSON(r io.Reader, limit int64) (any, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("larger than %d KiB", limit>>10)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, errors.New("empty document")
	}
	return decodeJSON(b)
}

// SplitData turns a JSON object (as "moatless policy apply --data" and
// PUT /v1/data take it at the root) into data documents, one per
// top-level key, sorted by key.
func SplitData(v any) ([]wire.DataDocument, error) {
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("data must be a JSON object whose keys name data documents, not %s", jsonTypeName(v))
	}
	out := make([]wire.DataDocument, 0, len(obj))
	for _, k := range sortedKeys(obj) {
		if err := ValidDataKey(k); err != nil {
			return nil, err
		}
		raw, err := json.Marshal(obj[k])
		if err != nil {
			return nil, err
		}
		out = append(out, wire.DataDocument{Key: k, Value: raw})
	}
	return out, nil
}

// RegoModuleID is the module ID a file is applied under: its base name
// ("authz.rego"), as "moatless policy apply -f" and sidecar policy files
// name modules.
func RegoModuleID(file string) string {
	file = strings.ReplaceAll(file, "\\", "/")
	return file[strings.LastIndexByte(file, '/')+1:]
}

// FileKind is what a policy file holds, by its name.
type FileKind uint8

const (
	// FileDocuments: Istio security documents and RegoProviders, YAML or
	// JSON (*.yaml, *.yml, *.json).
	FileDocuments FileKind = iota
	// FileRego: a Rego module (*.rego), applied under its base name.
	FileRego
	// FileData: data documents, OPA's bundle convention: a file named
	// data.json or data.yaml holds a JSON object whose top-level keys
	// are data documents (data.<key>).
	FileData
)

// PolicyFileKind classifies a file name; ok is false for names that hold
// no policy (directories contribute only files with such names).
func PolicyFileKind(name string) (kind FileKind, ok bool) {
	base := strings.ToLower(RegoModuleID(name))
	switch {
	case base == "data.json" || base == "data.yaml" || base == "data.yml":
		return FileData, true
	case strings.HasSuffix(base, ".rego"):
		return FileRego, true
	case strings.HasSuffix(base, ".yaml"), strings.HasSuffix(base, ".yml"), strings.HasSuffix(base, ".json"):
		return FileDocuments, true
	}
	return 0, false
}

// Bundle gathers what policy files hold: documents, Rego modules and data
// documents, checked for duplicates as they are added.
type Bundle struct {
	Docs    []Document
	Modules []wire.RegoModule
	Data    []wire.DataDocument
	// from names the file each module ID and data key came from.
	from map[string]string
}

// Add parses one file by its kind (PolicyFileKind; data read as YAML or
// JSON). Errors name the file.
func (b *Bundle) Add(name string, content []byte) error {
	kind, _ := PolicyFileKind(name)
	if b.from == nil {
		b.from = map[string]string{}
	}
	switch kind {
	case FileRego:
		id := RegoModuleID(name)
		if prev, dup := b.from["module "+id]; dup {
			return &RegoError{Msg: fmt.Sprintf("%s: module ID %q is also the name of %s", name, id, prev)}
		}
		if _, err := ParseRegoModule(id, string(content)); err != nil {
			return err
		}
		b.from["module "+id] = name
		b.Modules = append(b.Modules, wire.RegoModule{ID: id, Source: string(content)})
	case FileData:
		docs, err := ParseDataFile(name, content)
		if err != nil {
			return err
		}
		for _, d := range docs {
			if prev, dup := b.from["data "+d.Key]; dup {
				return &RegoError{Msg: fmt.Sprintf("%s: data document %q is also in %s", name, d.Key, prev)}
			}
			b.from["data "+d.Key] = name
		}
		b.Data = append(b.Data, docs...)
	default:
		docs, err := ParseSource(name, bytes.NewReader(content))
		if err != nil {
			return err
		}
		b.Docs = append(b.Docs, docs...)
	}
	return nil
}

// ParseDataFile reads a data file (a JSON or YAML object) into data
// documents, one per top-level key.
func ParseDataFile(name string, content []byte) ([]wire.DataDocument, error) {
	if len(content) > MaxDataSize {
		return nil, &RegoError{Msg: fmt.Sprintf("%s: larger than %d MiB", name, MaxDataSize>>20)}
	}
	js, err := yaml.YAMLToJSONStrict(content)
	if err != nil {
		return nil, &RegoError{Msg: fmt.Sprintf("%s: %v", name, err)}
	}
	v, err := decodeJSON(js)
	if err != nil {
		return nil, &RegoError{Msg: fmt.Sprintf("%s: %v", name, err)}
	}
	docs, err := SplitData(v)
	if err != nil {
		return nil, &RegoError{Msg: fmt.Sprintf("%s: %v", name, err)}
	}
	return docs, nil
}

// Compile compiles the bundle's modules and data, then its documents
// against them.
func (b *Bundle) Compile(opts Options) (*Set, error) {
	if len(b.Modules) > 0 || len(b.Data) > 0 {
		r, err := CompileRego(b.Modules, b.Data)
		if err != nil {
			return nil, err
		}
		opts.Rego = r
	}
	return Compile(b.Docs, opts)
}

// Storage kinds of Rego modules and data documents in the policy store,
// beside the documents' own kinds. Both are mesh-wide: their namespace is
// "" and their name the module ID or the data key.
const (
	KindRegoModule = "RegoModule"
	KindRegoData   = "RegoData"
)

// EmptyRego is the Rego of a version without modules or data: every
// query of data is undefined but data itself ({}).
var EmptyRego = sync.OnceValue(func() *Rego {
	r, err := CompileRego(nil, nil)
	if err != nil {
		panic("policy: empty Rego does not compile: " + err.Error())
	}
	return r
})

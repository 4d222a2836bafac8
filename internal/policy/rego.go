package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"sync"

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
	// Errors are the evaluator's (OPA's ast.Errors, converted); in an
	// executable without one (moatless-sidecar) there are none.
	Errors regoErrors
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
		if err := checkRegoModule(id, string(content)); err != nil {
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

// ErrRegoUnavailable is why a RegoProvider denies in an executable
// without a Rego evaluator (moatless-sidecar; RegoAvailable() is false
// there).
var ErrRegoUnavailable = errors.New(`Rego is not built into this executable (moatless-sidecar leaves OPA out); run the sidecar as "moatless sidecar" to evaluate Rego`)

// checkRegoCounts bounds how many modules and data documents one policy
// version may hold.
func checkRegoCounts(modules []wire.RegoModule, data []wire.DataDocument) error {
	if len(modules) > MaxRegoModules {
		return regoErrorf("more than %d modules", MaxRegoModules)
	}
	if len(data) > MaxDataDocuments {
		return regoErrorf("more than %d data documents", MaxDataDocuments)
	}
	return nil
}

// decodeDataDocuments checks data documents (keys, duplicates, sizes,
// strict JSON) and decodes them: the values by key, and the documents
// sorted by key.
func decodeDataDocuments(data []wire.DataDocument) (map[string]any, []wire.DataDocument, error) {
	m := make(map[string]any, len(data))
	var out []wire.DataDocument
	total := 0
	for _, d := range data {
		if err := ValidDataKey(d.Key); err != nil {
			return nil, nil, &RegoError{Msg: err.Error()}
		}
		if _, dup := m[d.Key]; dup {
			return nil, nil, regoErrorf("data document %q given twice", d.Key)
		}
		if len(d.Value) > MaxDataDocumentSize {
			return nil, nil, regoErrorf("data document %q is larger than %d MiB", d.Key, MaxDataDocumentSize>>20)
		}
		total += len(d.Value)
		if total > MaxDataSize {
			return nil, nil, regoErrorf("data documents total more than %d MiB", MaxDataSize>>20)
		}
		v, err := decodeJSON(d.Value)
		if err != nil {
			return nil, nil, regoErrorf("data document %q: %v", d.Key, err)
		}
		m[d.Key] = v
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return m, out, nil
}

// checkRegoSource checks what can be checked of a module without parsing
// it: its ID and its size.
func checkRegoSource(id, src string) error {
	if err := ValidRegoID(id); err != nil {
		return &RegoError{Msg: err.Error()}
	}
	if len(src) > MaxRegoModuleSize {
		return regoErrorf("%s: module is larger than %d KiB", id, MaxRegoModuleSize>>10)
	}
	return nil
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

package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	securityv1beta1 "istio.io/api/security/v1beta1"
	"sigs.k8s.io/yaml"
)

// The kinds the loader accepts, all in API group security.istio.io at
// version v1 or v1beta1 (the same schema; v1 is the storage version).
const (
	KindAuthorizationPolicy   = "AuthorizationPolicy"
	KindPeerAuthentication    = "PeerAuthentication"
	KindRequestAuthentication = "RequestAuthentication"

	// Group is the API group of every accepted kind.
	Group = "security.istio.io"
	// AnnotationDryRun marks an AuthorizationPolicy as evaluated and
	// reported but never enforced ("true"/"false", as strconv.ParseBool).
	AnnotationDryRun = "istio.io/dry-run"
	// DefaultNamespace is the namespace of a document without one, as
	// kubectl assumes.
	DefaultNamespace = "default"
)

// Size limits. They bound memory and CPU spent on untrusted input before
// anything is validated; each is far above what a real mesh needs.
const (
	// MaxInputSize bounds one Parse call (all documents together).
	MaxInputSize = 16 << 20
	// MaxDocumentSize bounds one YAML or JSON document.
	MaxDocumentSize = 1 << 20
	// MaxDocuments bounds the number of documents in one input.
	MaxDocuments = 20000
	// maxAnnotationsSize is Kubernetes' limit on all annotations of an object.
	maxAnnotationsSize = 256 << 10
	// maxJSONDepth bounds nesting so a hostile document cannot exhaust the stack.
	maxJSONDepth = 64
	// maxErrors is how many document errors one Parse reports before stopping.
	maxErrors = 20
)

// ErrInvalid is what every loader and compiler error wraps: the input was
// rejected and nothing was loaded. APIs map it to 400.
var ErrInvalid = errors.New("invalid policy")

// Document is one validated policy object.
type Document struct {
	// Source names where the document came from (a file name), "" if the
	// caller gave none.
	Source string
	// Index is the document's 1-based position in its input; documents of
	// a List count one each.
	Index int
	// Line is the first line of the document in its source (1-based), 0
	// when unknown (JSON input).
	Line int

	APIVersion string
	Kind       string
	Name       string
	// Namespace is metadata.namespace, DefaultNamespace when absent.
	Namespace   string
	Labels      map[string]string
	Annotations map[string]string
	// DryRun is the istio.io/dry-run annotation, parsed.
	DryRun bool

	// Spec is *securityv1beta1.AuthorizationPolicy, *PeerAuthentication or
	// *RequestAuthentication (security.istio.io/v1 types are aliases of
	// these).
	Spec proto.Message
	// Raw is the canonical JSON of the whole object (apiVersion, kind,
	// metadata with name, namespace, labels and annotations only, and the
	// spec re-encoded), compact and with sorted keys: what the server
	// stores and pushes, and what ParseJSON reads back unchanged.
	Raw json.RawMessage

	// Provider is the spec of a RegoProvider document (Spec is nil then).
	Provider *RegoProviderSpec

	// Warnings are valid but probably unintended constructs, in Istio's
	// words where Istio warns (a DENY rule with only HTTP attributes, a
	// selector without labels, targetRefs that no sidecar applies).
	Warnings []string
}

// Ref is "namespace/name", the way decisions name policies.
func (d *Document) Ref() string { return d.Namespace + "/" + d.Name }

func (d *Document) describe() string {
	return d.Kind + " " + d.Ref()
}

// ParseError is one rejected document. Error() reads, for example:
//
//	policies.yaml: document 2 (AuthorizationPolicy prod/orders), line 14: spec.rules[0].from[0].source.principal: unknown field; did you mean "principals"?
type ParseError struct {
	Source   string // file name, "" if unknown
	Document int    // 1-based document index, 0 when about the whole input
	Line     int    // 1-based line in Source, 0 when unknown
	Object   string // "Kind namespace/name" once known
	Path     string // field path inside the document, "" for the whole document
	Msg      string
}

func (e *ParseError) Error() string {
	var b strings.Builder
	if e.Source != "" {
		b.WriteString(e.Source)
		b.WriteString(": ")
	}
	if e.Document > 0 {
		fmt.Fprintf(&b, "document %d", e.Document)
		if e.Object != "" {
			fmt.Fprintf(&b, " (%s)", e.Object)
		}
		if e.Line > 0 {
			fmt.Fprintf(&b, ", line %d", e.Line)
		}
		b.WriteString(": ")
	} else if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap makes every ParseError match ErrInvalid.
func (e *ParseError) Unwrap() error { return ErrInvalid }

// Parse reads Istio security policies as YAML (several documents separated
// by "---"; JSON is YAML too) and validates each one completely. On any
// error it returns no documents and an error joining up to 20 *ParseError,
// each naming the document, line and field. Empty documents are skipped; a
// "kind: List" document (kubectl's output) contributes its items.
func Parse(r io.Reader) ([]Document, error) { return ParseSource("", r) }

// ParseSource is Parse with a source name (a file name) that documents and
// errors carry.
func ParseSource(source string, r io.Reader) ([]Document, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxInputSize+1))
	if err != nil {
		return nil, fmt.Errorf("policy: read %s: %w", nameOr(source, "input"), err)
	}
	if len(data) > MaxInputSize {
		return nil, &ParseError{Source: source, Msg: fmt.Sprintf("input is larger than %d MiB", MaxInputSize>>20)}
	}
	docs, err := parseYAMLStream(source, data)
	if err != nil {
		return nil, err
	}
	return docs, nil
}

// ParseSourceEach is ParseSource for linters: it returns the documents
// that are valid alongside the error for those that are not (up to 20),
// instead of all or nothing. Duplicates among the valid ones are errors
// too. Never use its documents to enforce anything when err is not nil.
func ParseSourceEach(source string, data []byte) ([]Document, error) {
	if len(data) > MaxInputSize {
		return nil, &ParseError{Source: source, Msg: fmt.Sprintf("input is larger than %d MiB", MaxInputSize>>20)}
	}
	return parseYAMLStream(source, data)
}

// ParseJSON reads one policy object in JSON, as Document.Raw holds it and
// as wire.PolicySet carries it, with the same validation as Parse.
func ParseJSON(raw []byte) (Document, error) {
	if len(raw) > MaxDocumentSize {
		return Document{}, &ParseError{Document: 1, Msg: fmt.Sprintf("document is larger than %d KiB", MaxDocumentSize>>10)}
	}
	v, err := decodeJSON(raw)
	if err != nil {
		return Document{}, &ParseError{Document: 1, Msg: "malformed JSON: " + err.Error()}
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return Document{}, &ParseError{Document: 1, Msg: "a policy document must be a JSON object, not " + jsonTypeName(v)}
	}
	if k, _ := obj["kind"].(string); k == "List" {
		return Document{}, &ParseError{Document: 1, Msg: "a List is not accepted here: send its items one by one"}
	}
	doc, ferr := decodeObject(obj, nil)
	if ferr != nil {
		return Document{}, &ParseError{Document: 1, Object: ferr.object, Path: ferr.path.String(), Msg: ferr.msg}
	}
	doc.Index = 1
	return doc, nil
}

// ParseJSONDocuments parses several JSON documents (a wire.PolicySet's) in
// order and rejects duplicates, as Parse does.
func ParseJSONDocuments(raws []json.RawMessage) ([]Document, error) {
	if len(raws) > MaxDocuments {
		return nil, &ParseError{Msg: fmt.Sprintf("more than %d documents", MaxDocuments)}
	}
	var errs []error
	docs := make([]Document, 0, len(raws))
	for i, raw := range raws {
		d, err := ParseJSON(raw)
		if err != nil {
			var pe *ParseError
			if errors.As(err, &pe) {
				pe.Document = i + 1
			}
			errs = append(errs, err)
			if len(errs) >= maxErrors {
				break
			}
			continue
		}
		d.Index = i + 1
		docs = append(docs, d)
	}
	if len(errs) == 0 {
		errs = checkDuplicates(docs)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return docs, nil
}

func nameOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// chunk is one YAML document of a stream and the line it starts on.
type chunk struct {
	text []byte
	line int
}

// splitYAML cuts a stream at document separators ("---" alone on a line,
// or followed by a space or a comment), as kubectl does. Line numbers are
// those of the first line of each document.
func splitYAML(data []byte) []chunk {
	var out []chunk
	start, startLine, line := 0, 1, 1
	for i := 0; i < len(data); {
		end := bytes.IndexByte(data[i:], '\n')
		next := len(data)
		if end >= 0 {
			next = i + end + 1
		}
		l := bytes.TrimRight(data[i:next], "\r\n")
		if bytes.HasPrefix(l, []byte("---")) && (len(l) == 3 || l[3] == ' ' || l[3] == '\t' || l[3] == '#') {
			out = append(out, chunk{text: data[start:i], line: startLine})
			start, startLine = next, line+1
		}
		i = next
		line++
	}
	out = append(out, chunk{text: data[start:], line: startLine})
	return out
}

var yamlLineRE = regexp.MustCompile(`line (\d+)`)

// shiftYAMLError rewrites "line N" in a YAML library error, which counts
// from the start of the document, to count from the start of the input.
func shiftYAMLError(msg string, first int) string {
	msg = strings.TrimPrefix(msg, "error converting YAML to JSON: ")
	msg = strings.TrimPrefix(msg, "yaml: ")
	return yamlLineRE.ReplaceAllStringFunc(msg, func(m string) string {
		n, err := strconv.Atoi(m[len("line "):])
		if err != nil {
			return m
		}
		return "line " + strconv.Itoa(n+first-1)
	})
}

func parseYAMLStream(source string, data []byte) ([]Document, error) {
	var (
		docs  []Document
		errs  []error
		index int
	)
	add := func(err error) bool {
		errs = append(errs, err)
		return len(errs) < maxErrors
	}
	for _, c := range splitYAML(data) {
		if isBlankYAML(c.text) {
			continue
		}
		index++
		if index > MaxDocuments {
			add(&ParseError{Source: source, Line: c.line, Msg: fmt.Sprintf("more than %d documents", MaxDocuments)})
			break
		}
		fail := func(path fieldPath, object, msg string, keyLine bool) bool {
			return add(&ParseError{
				Source: source, Document: index, Object: object,
				Line: lineOf(c.text, c.line, path, keyLine), Path: path.String(), Msg: msg,
			})
		}
		if len(c.text) > MaxDocumentSize {
			if !add(&ParseError{Source: source, Document: index, Line: c.line, Msg: fmt.Sprintf("document is larger than %d KiB", MaxDocumentSize>>10)}) {
				break
			}
			continue
		}
		js, err := yaml.YAMLToJSONStrict(c.text)
		if err != nil {
			if !add(&ParseError{Source: source, Document: index, Line: c.line, Msg: "malformed YAML: " + shiftYAMLError(err.Error(), c.line)}) {
				break
			}
			continue
		}
		v, err := decodeJSON(js)
		if err != nil {
			if !fail(nil, "", "malformed document: "+err.Error(), false) {
				break
			}
			continue
		}
		if v == nil {
			index-- // a document of comments only
			continue
		}
		obj, ok := v.(map[string]any)
		if !ok {
			if !fail(nil, "", "a policy document must be a mapping with apiVersion, kind, metadata and spec, not "+jsonTypeName(v), false) {
				break
			}
			continue
		}
		objs, paths, ferr := expandList(obj)
		if ferr != nil {
			if !fail(ferr.path, "", ferr.msg, ferr.keyLine) {
				break
			}
			continue
		}
		stop := false
		for i, o := range objs {
			if i > 0 {
				index++
			}
			d, ferr := decodeObject(o, paths[i])
			if ferr != nil {
				if !fail(ferr.path, ferr.object, ferr.msg, ferr.keyLine) {
					stop = true
					break
				}
				continue
			}
			d.Source, d.Index = source, index
			if len(paths[i]) == 0 {
				d.Line = firstContentLine(c.text, c.line)
			} else {
				d.Line = lineOf(c.text, c.line, paths[i], false)
			}
			docs = append(docs, d)
		}
		if stop {
			break
		}
	}
	if dups := checkDuplicates(docs); len(dups) > 0 {
		errs = append(errs, dups...)
		docs = slices.DeleteFunc(docs, func(d Document) bool {
			for _, e := range dups {
				if e.(*ParseError).Document == d.Index {
					return true
				}
			}
			return false
		})
	}
	if len(errs) > 0 {
		// ParseSource drops docs; ParseSourceEach keeps the valid ones.
		return docs, errors.Join(errs...)
	}
	return docs, nil
}

// firstContentLine is the line of the first line that is neither blank
// nor a comment: where a reader sees the document start.
func firstContentLine(b []byte, first int) int {
	for i, l := range bytes.Split(b, []byte("\n")) {
		l = bytes.TrimSpace(l)
		if len(l) > 0 && l[0] != '#' {
			return first + i
		}
	}
	return first
}

func isBlankYAML(b []byte) bool {
	for _, l := range bytes.Split(b, []byte("\n")) {
		l = bytes.TrimSpace(l)
		if len(l) > 0 && l[0] != '#' && !bytes.Equal(l, []byte("...")) {
			return false
		}
	}
	return true
}

// expandList returns the objects of a "kind: List" document, or the
// document itself, with the field path of each.
func expandList(obj map[string]any) ([]map[string]any, []fieldPath, *fieldError) {
	kind, _ := obj["kind"].(string)
	if kind != "List" {
		return []map[string]any{obj}, []fieldPath{nil}, nil
	}
	for _, k := range sortedKeys(obj) {
		switch k {
		case "apiVersion", "kind", "metadata", "items":
		default:
			return nil, nil, &fieldError{path: fieldPath{}.key(k), msg: "unknown field in a List", keyLine: true}
		}
	}
	if av, _ := obj["apiVersion"].(string); av != "v1" {
		return nil, nil, &fieldError{path: fieldPath{}.key("apiVersion"), msg: `a List must have apiVersion "v1"`}
	}
	items, ok := obj["items"].([]any)
	if !ok && obj["items"] != nil {
		return nil, nil, &fieldError{path: fieldPath{}.key("items"), msg: "items must be a list"}
	}
	var objs []map[string]any
	var paths []fieldPath
	for i, it := range items {
		p := fieldPath{}.key("items").index(i)
		o, ok := it.(map[string]any)
		if !ok {
			return nil, nil, &fieldError{path: p, msg: "a List item must be a mapping, not " + jsonTypeName(it)}
		}
		if k, _ := o["kind"].(string); k == "List" {
			return nil, nil, &fieldError{path: p.key("kind"), msg: "a List cannot contain a List"}
		}
		objs, paths = append(objs, o), append(paths, p)
	}
	return objs, paths, nil
}

// fieldError is a validation failure at a path inside one document.
type fieldError struct {
	path    fieldPath
	msg     string
	object  string // "Kind ns/name" once known
	keyLine bool   // report the line of the key (unknown fields), not of its value
}

func errAt(p fieldPath, format string, args ...any) *fieldError {
	return &fieldError{path: p, msg: fmt.Sprintf(format, args...)}
}

var (
	// DNS-1123 subdomain (metadata.name) and label (metadata.namespace).
	dns1123Subdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	dns1123Label     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

// knownMetadata lists the ObjectMeta fields the loader accepts. Only name,
// namespace, labels and annotations mean anything here; the others appear
// in "kubectl get -o yaml" output and are ignored. Anything else is a typo.
var knownMetadata = map[string]bool{
	"name": true, "namespace": true, "labels": true, "annotations": true,
	"uid": true, "resourceVersion": true, "generation": true, "creationTimestamp": true,
	"deletionTimestamp": true, "deletionGracePeriodSeconds": true, "managedFields": true,
	"finalizers": true, "ownerReferences": true, "selfLink": true, "generateName": true,
}

// decodeObject validates one object (its path inside the document is at)
// and returns it as a Document, spec decoded and compiled once to prove it
// valid.
func decodeObject(obj map[string]any, at fieldPath) (Document, *fieldError) {
	var d Document
	_, hasAV := obj["apiVersion"]
	_, hasKind := obj["kind"]
	if !hasAV && !hasKind {
		return d, errAt(at, "not a policy document: it has no apiVersion and kind (want an AuthorizationPolicy, PeerAuthentication or RequestAuthentication)")
	}
	for _, k := range sortedKeys(obj) {
		switch k {
		case "apiVersion", "kind", "metadata", "spec", "status":
		default:
			fe := unknownField(at.key(k), k, []string{"apiVersion", "kind", "metadata", "spec"})
			return d, fe
		}
	}
	var ok bool
	if d.APIVersion, ok = obj["apiVersion"].(string); !ok || d.APIVersion == "" {
		return d, errAt(at.key("apiVersion"), "apiVersion is required and must be a string, e.g. %q", Group+"/v1")
	}
	if d.Kind, ok = obj["kind"].(string); !ok || d.Kind == "" {
		return d, errAt(at.key("kind"), "kind is required and must be a string: AuthorizationPolicy, PeerAuthentication or RequestAuthentication")
	}
	switch d.Kind {
	case KindAuthorizationPolicy, KindPeerAuthentication, KindRequestAuthentication:
	case KindRegoProvider:
		return decodeRegoProvider(d, obj, at)
	default:
		return d, errAt(at.key("kind"), "unsupported kind %q (%s): Moatless applies %s AuthorizationPolicy, PeerAuthentication and RequestAuthentication", d.Kind, d.APIVersion, Group)
	}
	if d.APIVersion != Group+"/v1" && d.APIVersion != Group+"/v1beta1" {
		return d, errAt(at.key("apiVersion"), "unsupported apiVersion %q for %s: use %q (or %q)", d.APIVersion, d.Kind, Group+"/v1", Group+"/v1beta1")
	}
	if fe := decodeMetadata(&d, obj["metadata"], at.key("metadata")); fe != nil {
		return d, fe
	}
	object := d.describe()
	withObject := func(fe *fieldError) *fieldError {
		fe.object = object
		return fe
	}

	switch d.Kind {
	case KindAuthorizationPolicy:
		d.Spec = &securityv1beta1.AuthorizationPolicy{}
	case KindPeerAuthentication:
		d.Spec = &securityv1beta1.PeerAuthentication{}
	case KindRequestAuthentication:
		d.Spec = &securityv1beta1.RequestAuthentication{}
	}
	spec := obj["spec"]
	if spec == nil {
		spec = map[string]any{}
	}
	specPath := at.key("spec")
	if fe := checkSchema(specPath, spec, d.Spec.ProtoReflect().Descriptor()); fe != nil {
		return d, withObject(fe)
	}
	specJSON, err := json.Marshal(spec)
	if err != nil {
		return d, withObject(errAt(specPath, "cannot re-encode: %v", err))
	}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(specJSON, d.Spec); err != nil {
		return d, withObject(errAt(specPath, "%s", cleanProtoJSONError(err)))
	}

	// Compiling one document alone is the semantic validation: the same
	// code that builds the matchers rejects what it cannot build.
	warnings, fe := validateDocument(&d, specPath)
	if fe != nil {
		return d, withObject(fe)
	}
	d.Warnings = append(d.Warnings, warnings...)

	raw, err := canonicalJSON(&d)
	if err != nil {
		return d, withObject(errAt(specPath, "cannot encode: %v", err))
	}
	d.Raw = raw
	return d, nil
}

func decodeMetadata(d *Document, v any, p fieldPath) *fieldError {
	md, ok := v.(map[string]any)
	if !ok {
		return errAt(p, "metadata is required and must be a mapping with at least a name")
	}
	for _, k := range sortedKeys(md) {
		if !knownMetadata[k] {
			return unknownField(p.key(k), k, []string{"name", "namespace", "labels", "annotations"})
		}
	}
	name, _ := md["name"].(string)
	switch {
	case name == "" && md["generateName"] != nil:
		return errAt(p.key("generateName"), "generateName is not supported: set metadata.name")
	case name == "":
		return errAt(p.key("name"), "metadata.name is required and must be a string")
	case len(name) > 253 || !dns1123Subdomain.MatchString(name):
		return errAt(p.key("name"), "%q is not a valid name: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters", name)
	}
	d.Name = name
	d.Namespace = DefaultNamespace
	if ns, present := md["namespace"]; present && ns != nil {
		s, ok := ns.(string)
		if !ok || len(s) > 63 || !dns1123Label.MatchString(s) {
			return errAt(p.key("namespace"), "%v is not a valid namespace: lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 characters", describeValue(ns))
		}
		d.Namespace = s
	}
	var fe *fieldError
	if d.Labels, fe = stringMap(md["labels"], p.key("labels")); fe != nil {
		return fe
	}
	if d.Annotations, fe = stringMap(md["annotations"], p.key("annotations")); fe != nil {
		return fe
	}
	size := 0
	for k, v := range d.Annotations {
		size += len(k) + len(v)
	}
	if size > maxAnnotationsSize {
		return errAt(p.key("annotations"), "annotations total more than %d KiB", maxAnnotationsSize>>10)
	}
	if v, ok := d.Annotations[AnnotationDryRun]; ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return errAt(p.key("annotations").key(AnnotationDryRun), "%q is not a boolean: use \"true\" or \"false\"", v)
		}
		d.DryRun = b
	}
	return nil
}

func stringMap(v any, p fieldPath) (map[string]string, *fieldError) {
	if v == nil {
		return nil, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, errAt(p, "must be a mapping of strings to strings, not %s", jsonTypeName(v))
	}
	out := make(map[string]string, len(m))
	for _, k := range sortedKeys(m) {
		s, ok := m[k].(string)
		if !ok {
			return nil, errAt(p.key(k), "must be a string, not %s (quote it)", describeValue(m[k]))
		}
		if k == "" {
			return nil, errAt(p, "empty key")
		}
		out[k] = s
	}
	return out, nil
}

// canonicalJSON is Document.Raw: stable bytes for equal documents.
func canonicalJSON(d *Document) (json.RawMessage, error) {
	spec, err := protojson.MarshalOptions{}.Marshal(d.Spec)
	if err != nil {
		return nil, err
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, spec); err != nil {
		return nil, err
	}
	md := map[string]any{"name": d.Name, "namespace": d.Namespace}
	if len(d.Labels) > 0 {
		md["labels"] = d.Labels
	}
	if len(d.Annotations) > 0 {
		md["annotations"] = d.Annotations
	}
	return json.Marshal(map[string]any{
		"apiVersion": d.APIVersion,
		"kind":       d.Kind,
		"metadata":   md,
		"spec":       json.RawMessage(compact.Bytes()),
	})
}

// checkDuplicates rejects two documents with the same kind, namespace and
// name: one input must say one thing about each object.
func checkDuplicates(docs []Document) []error {
	seen := make(map[string]int, len(docs))
	var errs []error
	for i := range docs {
		d := &docs[i]
		k := d.Kind + "\x00" + d.Namespace + "\x00" + d.Name
		if j, dup := seen[k]; dup {
			errs = append(errs, &ParseError{
				Source: d.Source, Document: d.Index, Line: d.Line, Object: d.describe(),
				Msg: fmt.Sprintf("duplicate: %s is also defined in document %d", d.describe(), docs[j].Index),
			})
			if len(errs) >= maxErrors {
				break
			}
			continue
		}
		seen[k] = i
	}
	return errs
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// decodeJSON decodes one JSON value into maps, slices, strings,
// json.Number, bools and nils, rejecting duplicate keys (two parsers could
// otherwise read one document two ways), trailing data and deep nesting.
func decodeJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := readJSONValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("unexpected data after the document")
	}
	return v, nil
}

func readJSONValue(dec *json.Decoder, depth int) (any, error) {
	if depth > maxJSONDepth {
		return nil, fmt.Errorf("nested deeper than %d levels", maxJSONDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		if err == io.EOF {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			m := map[string]any{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k, ok := kt.(string)
				if !ok {
					return nil, errors.New("object key is not a string")
				}
				if _, dup := m[k]; dup {
					return nil, fmt.Errorf("duplicate key %q", k)
				}
				v, err := readJSONValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				m[k] = v
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return m, nil
		case '[':
			s := []any{}
			for dec.More() {
				v, err := readJSONValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				s = append(s, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return s, nil
		}
		return nil, fmt.Errorf("unexpected %q", t)
	default:
		return t, nil
	}
}

func jsonTypeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	}
	return fmt.Sprintf("%T", v)
}

func describeValue(v any) string {
	switch t := v.(type) {
	case string:
		return strconv.Quote(t)
	case json.Number:
		return "the number " + t.String()
	case bool:
		return "the boolean " + strconv.FormatBool(t)
	}
	return jsonTypeName(v)
}

// cleanProtoJSONError strips protojson's prefixes; its "(line 1:23)" refers
// to re-encoded JSON, not to the user's file, so it is dropped.
var protoLineRE = regexp.MustCompile(`^proto:\s*(\(line \d+:\d+\):\s*)?`)

func cleanProtoJSONError(err error) string {
	return protoLineRE.ReplaceAllString(err.Error(), "")
}

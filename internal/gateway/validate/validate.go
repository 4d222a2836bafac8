// Package validate checks requests against a JSON Schema or an OpenAPI 3
// document before the gateway forwards them.
package validate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// Violation is why a request was refused: a message and the JSON pointer
// of the first offending value ("/items/0/qty"; "" when the request as a
// whole is wrong).
type Violation struct {
	Pointer string
	Message string
}

func (v *Violation) Error() string { return v.Message }

// Validator checks one request; body is the whole body. A nil error
// passes it.
type Validator interface {
	Validate(ctx context.Context, r *http.Request, body []byte) *Violation
}

// JSONSchema validates JSON bodies against one schema (drafts 4 to
// 2020-12). A body that is not JSON is refused; a request without a body
// passes (methods without bodies are left to policy).
type JSONSchema struct{ s *jsonschema.Schema }

// NewJSONSchema compiles the schema document b. References to other
// documents are not fetched: the schema must be self-contained.
func NewJSONSchema(name string, b []byte) (*JSONSchema, error) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("validate: %s: %w", name, err)
	}
	c := jsonschema.NewCompiler()
	c.UseLoader(noLoader{})
	url := "mem:///" + strings.TrimLeft(name, "/")
	if err := c.AddResource(url, doc); err != nil {
		return nil, fmt.Errorf("validate: %s: %w", name, err)
	}
	s, err := c.Compile(url)
	if err != nil {
		return nil, fmt.Errorf("validate: %s: %w", name, err)
	}
	return &JSONSchema{s: s}, nil
}

// noLoader refuses every external reference.
type noLoader struct{}

func (noLoader) Load(url string) (any, error) {
	return nil, fmt.Errorf("external schema reference %q is not loaded", url)
}

// Validate implements Validator.
func (j *JSONSchema) Validate(_ context.Context, r *http.Request, body []byte) *Violation {
	if len(body) == 0 {
		return nil
	}
	if v := checkContentType(r.Header); v != nil {
		return v
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" && !strings.HasSuffix(mt, "+json") {
		return &Violation{Message: "body must be application/json"}
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return &Violation{Message: "body is not valid JSON"}
	}
	if v := checkUniqueNames(body); v != nil {
		return v
	}
	err = j.s.Validate(inst)
	if err == nil {
		return nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return &Violation{Message: "body does not match the schema"}
	}
	for len(ve.Causes) > 0 {
		ve = ve.Causes[0]
	}
	return &Violation{Pointer: pointer(ve.InstanceLocation), Message: "body does not match the schema: " + leafMessage(ve)}
}

func leafMessage(ve *jsonschema.ValidationError) string {
	// The kind names the keyword and the expectation, never the value.
	if k := ve.ErrorKind; k != nil {
		return "violates " + strings.Join(k.KeywordPath(), "/")
	}
	return "invalid"
}

// pointer is an RFC 6901 JSON pointer.
func pointer(loc []string) string {
	var b strings.Builder
	for _, p := range loc {
		b.WriteByte('/')
		b.WriteString(strings.NewReplacer("~", "~0", "/", "~1").Replace(p))
	}
	return b.String()
}

// OpenAPI validates requests against the operations of an OpenAPI 3
// document: path, method, parameters and body. The document's servers are
// ignored: its paths are matched against the request path as received.
type OpenAPI struct {
	doc    *openapi3.T
	router routers.Router
}

// NewOpenAPI loads and validates the document b (YAML or JSON). External
// references are not followed.
func NewOpenAPI(name string, b []byte) (*OpenAPI, error) {
	l := openapi3.NewLoader()
	l.IsExternalRefsAllowed = false
	doc, err := l.LoadFromData(b)
	if err != nil {
		return nil, fmt.Errorf("validate: %s: %w", name, err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("validate: %s: %w", name, err)
	}
	doc.Servers = nil
	rt, err := legacy.NewRouter(doc)
	if err != nil {
		return nil, fmt.Errorf("validate: %s: %w", name, err)
	}
	return &OpenAPI{doc: doc, router: rt}, nil
}

// Validate implements Validator.
func (o *OpenAPI) Validate(ctx context.Context, r *http.Request, body []byte) *Violation {
	if len(body) > 0 {
		if v := checkContentType(r.Header); v != nil {
			return v
		}
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "application/json" || strings.HasSuffix(mt, "+json") {
			if v := checkUniqueNames(body); v != nil {
				return v
			}
		}
	}
	req := r.Clone(ctx)
	req.URL.Scheme, req.URL.Host = "https", r.Host
	req.Body = io.NopCloser(bytes.NewReader(body))
	route, params, err := o.router.FindRoute(req)
	if err != nil {
		return &Violation{Message: "no operation of the API matches " + r.Method + " " + r.URL.Path}
	}
	// kin-openapi checks a body only against a declared requestBody; a
	// body sent to an operation that declares none (a GET, say) would
	// reach the app unchecked, and some apps read it.
	if len(body) > 0 && route.Operation != nil && route.Operation.RequestBody == nil {
		return &Violation{Message: "the operation " + r.Method + " " + route.Path + " takes no request body"}
	}
	in := &openapi3filter.RequestValidationInput{
		Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc},
	}
	err = openapi3filter.ValidateRequest(ctx, in)
	if err == nil {
		return nil
	}
	v := &Violation{Message: "request does not match the API"}
	var re *openapi3filter.RequestError
	if errors.As(err, &re) {
		switch {
		case re.Parameter != nil:
			v.Message = "parameter " + re.Parameter.Name + " (" + re.Parameter.In + ") is invalid"
		case re.RequestBody != nil:
			v.Message = "body does not match the API"
		}
	}
	var se *openapi3.SchemaError
	if errors.As(err, &se) {
		v.Pointer = pointer(se.JSONPointer())
		if se.SchemaField != "" {
			v.Message += ": violates " + se.SchemaField
		}
	}
	return v
}

// checkContentType refuses a body whose type the gateway and the app
// could read differently: more than one Content-Type field (one app
// takes the first, another the last or both joined), or a JSON type
// naming a charset other than UTF-8 (JSON between systems is UTF-8, RFC
// 8259 section 8.1: the schema checked the bytes as UTF-8, an app that
// honours the charset would decode other text).
func checkContentType(h http.Header) *Violation {
	cts := h["Content-Type"]
	if len(cts) > 1 {
		return &Violation{Message: "more than one Content-Type"}
	}
	if len(cts) == 0 {
		return nil
	}
	mt, params, err := mime.ParseMediaType(cts[0])
	if err != nil {
		return &Violation{Message: "malformed Content-Type"}
	}
	if cs, ok := params["charset"]; ok && (mt == "application/json" || strings.HasSuffix(mt, "+json")) && !strings.EqualFold(cs, "utf-8") {
		return &Violation{Message: "a JSON body must be UTF-8"}
	}
	return nil
}

// checkUniqueNames refuses a JSON document (already known to be valid)
// in which an object names a member twice, however escaped
// ({"qty":0,"q\u0074y":2}): the schema saw the last value (encoding/json
// keeps the last), while parsers that keep the first (gjson, jsonparser,
// several C and Java ones) would hand the app a value nobody checked.
// I-JSON (RFC 7493 section 2.3) forbids such documents. The pointer names
// the object and the duplicated member.
func checkUniqueNames(body []byte) *Violation {
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber()
	// One frame per open object or array; path holds one element per
	// member or array element being read, the pointer to the value.
	type frame struct {
		names     map[string]bool // nil for an array
		index     int             // an array's next index
		expectKey bool            // an object expecting a name (or '}')
	}
	var stack []*frame
	var path []string
	// valueDone: the value at path is complete; its parent object next
	// expects a name.
	valueDone := func() {
		if len(stack) == 0 {
			return
		}
		path = path[:len(path)-1]
		if top := stack[len(stack)-1]; top.names != nil {
			top.expectKey = true
		}
	}
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return &Violation{Message: "body is not valid JSON"}
		}
		if len(stack) > 0 {
			top := stack[len(stack)-1]
			switch {
			case tok == json.Delim('}') || tok == json.Delim(']'):
				stack = stack[:len(stack)-1]
				valueDone()
				continue
			case top.expectKey:
				name, _ := tok.(string)
				if top.names[name] {
					return &Violation{Pointer: pointer(append(path, name)), Message: "body names an object member twice"}
				}
				top.names[name], top.expectKey = true, false
				path = append(path, name)
				continue
			case top.names == nil:
				path = append(path, strconv.Itoa(top.index))
				top.index++
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{names: map[string]bool{}, expectKey: true})
		case json.Delim('['):
			stack = append(stack, &frame{})
		default:
			valueDone()
		}
	}
}

package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/policy/regoengine"
)

// KindRegoProvider is the Moatless document that makes a Rego query an
// Istio extension provider: an AuthorizationPolicy with action CUSTOM and
// provider.name NAME is decided by the RegoProvider named NAME. It plays
// the part of Istio's meshConfig.extensionProviders entry and of the
// OPA-Envoy plugin's "path" setting. APIVersionMoatless is its apiVersion.
const (
	KindRegoProvider   = "RegoProvider"
	APIVersionMoatless = "moatless.io/v1"
)

// Limits of a RegoProvider.
const (
	// DefaultRegoTimeout bounds one evaluation when the provider sets no
	// timeout; MaxRegoTimeout bounds what it may set.
	DefaultRegoTimeout = 100 * time.Millisecond
	MaxRegoTimeout     = time.Second
	maxRegoRoutes      = 64
	maxRegoAttributes  = 64
	maxRegoInputMaps   = 64
	maxInputPathDepth  = 8
	maxRegoHeaders     = 32
)

// RegoProviderSpec is the spec of a RegoProvider document:
//
//	apiVersion: moatless.io/v1
//	kind: RegoProvider
//	metadata: {name: records-authz}
//	spec:
//	  query: data.microservices.authz.allow
//	  timeout: 10ms          # default 10ms, at most 1s; past it the request is denied
//	  timeZone: Europe/Paris # for input.time.hour and friends; default UTC
//	  input:                 # more input fields, copied from the input document
//	    user.id: auth.claims.sub
//	    resource.owner: attributes.owner
//	  routes:                # attributes the app declares per route
//	  - path: /records/{owner}/{id}
//	    methods: [GET, PUT]
//	    attributes:
//	      owner: {segment: owner}
//	      level: {header: x-sensitivity-level, as: number}
type RegoProviderSpec struct {
	Query    string            `json:"query"`
	Timeout  string            `json:"timeout,omitempty"`
	TimeZone string            `json:"timeZone,omitempty"`
	Input    map[string]string `json:"input,omitempty"`
	Routes   []RegoRoute       `json:"routes,omitempty"`
}

// RegoRoute declares attributes for the requests whose normalized path
// matches Path (a template: literal segments, {name} for one segment
// captured under name, {*} for one segment, {**} for the rest) and, when
// Methods is set, whose method is one of them. The first route that
// matches applies.
type RegoRoute struct {
	Path       string                   `json:"path"`
	Methods    []string                 `json:"methods,omitempty"`
	Attributes map[string]RegoAttribute `json:"attributes"`
}

// RegoAttribute is where one attribute's value comes from: exactly one of
// a captured path segment, a request header (several values joined with
// ","), or a query parameter (the first value). As converts it: "string"
// (default), "number" or "boolean"; a value that does not convert is
// left out of the input, as an absent one is.
type RegoAttribute struct {
	Segment string `json:"segment,omitempty"`
	Header  string `json:"header,omitempty"`
	Query   string `json:"query,omitempty"`
	As      string `json:"as,omitempty"`
}

// inputRoots are the top-level fields of the input document that
// Moatless fills; input mappings may read them and may not replace them.
var inputRoots = map[string]bool{
	"source": true, "destination": true, "request": true, "connection": true,
	"auth": true, "time": true, "attributes": true,
}

var (
	identRE     = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	pathSegRE   = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	httpMethodR = regexp.MustCompile(`^[A-Z]+$`)
)

// needTree is the part of the input document the modules can read: a
// nil tree (or node) means everything below it, a node lists the keys
// read under it. Built once per provider (inputNeeds), so a request
// builds only what the policy can see: a token's other claims, headers
// nobody reads and the like cost nothing.
type needTree struct {
	kids map[string]*needTree
	// canon is the canonical header name of a key under request.headers.
	canon string
}

// child returns the subtree of key (nil: all of it) and whether key is
// read at all. A node without kids is read in full (inputNeeds' add makes the last key
// of a path such a leaf): everything below it is read, as below a nil
// tree. Reading it as "nothing below" built input.auth empty for a
// module that binds it to a variable (a := input.auth), and the headers
// empty for one that reads them by a variable key, so a module that
// denies on what it finds there allowed everything.
func (n *needTree) child(key string) (*needTree, bool) {
	if n == nil || n.kids == nil {
		return nil, true
	}
	k, ok := n.kids[key]
	if ok && k.kids == nil {
		return nil, true
	}
	return k, ok
}

func (n *needTree) has(key string) bool { _, ok := n.child(key); return ok }

// regoProvider is a compiled RegoProvider.
type regoProvider struct {
	name    string
	ref     string // "namespace/name" of the document
	query   string
	pq      regoengine.Prepared // nil without an evaluator: eval denies
	timeout time.Duration
	loc     *time.Location
	maps    []inputMap
	routes  []regoRoute
	// queryAttrs: a route declares an attribute from a query parameter
	// (see ambiguousAttribute).
	queryAttrs bool
	// upperLits: a route's literal segment holds an upper-case letter,
	// so a path without one may still select another route ignoring case
	// (evalCtx.regoPaths).
	upperLits bool
	// needs lists the input's root fields the modules read (directly or
	// through the mappings): building the rest would be wasted work on
	// every request. Nil means everything (a module reads input whole).
	needs *needTree
}

// inputMap copies the value at from (a path into the input document) to
// to (a path of object keys), when it is defined.
type inputMap struct {
	to   []string
	from []string
	// toP and fromP are the paths as the evaluator's keys
	// (regoengine.Builder.Path), made when the provider is prepared.
	toP, fromP any
}

type regoRoute struct {
	segs    []routeSeg
	methods []string
	attrs   []routeAttr // sorted by name
}

type routeSeg struct {
	kind segKind
	lit  string // segLit: the segment ("" only as a trailing "/")
	name string // segOne: the capture's name, "" for {*}
}

type segKind uint8

const (
	segLit  segKind = iota // a literal segment
	segOne                 // {*} or {name}: one non-empty segment
	segRest                // {**}: the rest of the path, after a "/"
)

type routeAttr struct {
	name                 string
	segment, header, qry string
	as                   string
}

// decodeRegoProvider validates a RegoProvider object (the loader's
// decodeObject hands it over once apiVersion and kind are read).
func decodeRegoProvider(d Document, obj map[string]any, at fieldPath) (Document, *fieldError) {
	if d.APIVersion != APIVersionMoatless {
		return d, errAt(at.key("apiVersion"), "unsupported apiVersion %q for %s: use %q", d.APIVersion, d.Kind, APIVersionMoatless)
	}
	for _, k := range sortedKeys(obj) {
		switch k {
		case "apiVersion", "kind", "metadata", "spec":
		default:
			return d, unknownField(at.key(k), k, []string{"apiVersion", "kind", "metadata", "spec"})
		}
	}
	if fe := decodeMetadata(&d, obj["metadata"], at.key("metadata")); fe != nil {
		return d, fe
	}
	object := d.describe()
	specPath := at.key("spec")
	withObject := func(fe *fieldError) (Document, *fieldError) {
		fe.object = object
		return d, fe
	}
	raw, err := json.Marshal(obj["spec"])
	if err != nil {
		return withObject(errAt(specPath, "cannot re-encode: %v", err))
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var spec RegoProviderSpec
	if err := dec.Decode(&spec); err != nil {
		return withObject(errAt(specPath, "%s", strings.TrimPrefix(err.Error(), "json: ")))
	}
	if _, fe := compileRegoProviderSpec(&spec, specPath); fe != nil {
		return withObject(fe)
	}
	d.Provider = &spec
	md := map[string]any{"name": d.Name, "namespace": d.Namespace}
	if len(d.Labels) > 0 {
		md["labels"] = d.Labels
	}
	if len(d.Annotations) > 0 {
		md["annotations"] = d.Annotations
	}
	if d.Raw, err = json.Marshal(map[string]any{"apiVersion": d.APIVersion, "kind": d.Kind, "metadata": md, "spec": &spec}); err != nil {
		return withObject(errAt(specPath, "cannot encode: %v", err))
	}
	return d, nil
}

// compileRegoProviderSpec validates spec and builds everything but the
// prepared query, which needs the Rego modules (Compile).
func compileRegoProviderSpec(spec *RegoProviderSpec, p fieldPath) (*regoProvider, *fieldError) {
	rp := &regoProvider{timeout: DefaultRegoTimeout, loc: time.UTC}
	q := strings.TrimSpace(spec.Query)
	if q == "" {
		return nil, errAt(p.key("query"), "query is required: the Rego rule that decides, e.g. data.microservices.authz.allow")
	}
	ref, ok := parseRegoQuery(q)
	if !ok {
		return nil, errAt(p.key("query"), "%q is not a reference into data such as data.microservices.authz.allow", spec.Query)
	}
	rp.query = ref
	if spec.Timeout != "" {
		d, err := time.ParseDuration(spec.Timeout)
		if err != nil || d <= 0 || d > MaxRegoTimeout {
			return nil, errAt(p.key("timeout"), "%q is not a duration between 0 and %s, such as 10ms", spec.Timeout, MaxRegoTimeout)
		}
		rp.timeout = d
	}
	if spec.TimeZone != "" {
		loc, err := time.LoadLocation(spec.TimeZone)
		if err != nil {
			return nil, errAt(p.key("timeZone"), "unknown time zone %q (an IANA name such as Europe/Paris, or UTC)", spec.TimeZone)
		}
		rp.loc = loc
	}
	if len(spec.Input) > maxRegoInputMaps {
		return nil, errAt(p.key("input"), "at most %d input mappings", maxRegoInputMaps)
	}
	targets := sortedKeys(spec.Input)
	for i, t := range targets {
		ip := p.key("input").key(t)
		to := strings.Split(t, ".")
		if len(to) > maxInputPathDepth {
			return nil, errAt(ip, "target %q is nested deeper than %d", t, maxInputPathDepth)
		}
		for _, s := range to {
			if !identRE.MatchString(s) {
				return nil, errAt(ip, "target %q: each part must be a name (letters, digits, _), e.g. user.id", t)
			}
		}
		if inputRoots[to[0]] {
			return nil, errAt(ip, "target %q would replace input.%s, which Moatless fills; map to another name", t, to[0])
		}
		if i > 0 && strings.HasPrefix(t, targets[i-1]+".") {
			return nil, errAt(ip, "target %q is inside target %q", t, targets[i-1])
		}
		from, err := parseInputPath(spec.Input[t])
		if err != nil {
			return nil, errAt(ip, "%v", err)
		}
		rp.maps = append(rp.maps, inputMap{to: to, from: from})
	}
	if len(spec.Routes) > maxRegoRoutes {
		return nil, errAt(p.key("routes"), "at most %d routes", maxRegoRoutes)
	}
	for i, r := range spec.Routes {
		rtp := p.key("routes").index(i)
		segs, names, err := parseRouteTemplate(r.Path)
		if err != nil {
			return nil, errAt(rtp.key("path"), "%v", err)
		}
		rr := regoRoute{segs: segs}
		rp.upperLits = rp.upperLits || upperLetter(r.Path)
		for j, m := range r.Methods {
			if !httpMethodR.MatchString(m) {
				return nil, errAt(rtp.key("methods").index(j), "%q is not an upper-case HTTP method", m)
			}
			rr.methods = append(rr.methods, m)
		}
		if len(r.Attributes) == 0 || len(r.Attributes) > maxRegoAttributes {
			return nil, errAt(rtp.key("attributes"), "want 1 to %d attributes", maxRegoAttributes)
		}
		for _, name := range sortedKeys(r.Attributes) {
			a := r.Attributes[name]
			ap := rtp.key("attributes").key(name)
			if !identRE.MatchString(name) {
				return nil, errAt(ap, "attribute name %q: letters, digits and _, not starting with a digit", name)
			}
			ra := routeAttr{name: name, segment: a.Segment, qry: a.Query, as: a.As}
			n := 0
			if a.Segment != "" {
				n++
				if !names[a.Segment] {
					return nil, errAt(ap.key("segment"), "the route's path %q has no {%s}", r.Path, a.Segment)
				}
			}
			if a.Header != "" {
				n++
				h, err := headerKey(a.Header)
				if err != nil || strings.HasPrefix(h, ":") {
					return nil, errAt(ap.key("header"), "%q is not a header name", a.Header)
				}
				ra.header = h
			}
			if a.Query != "" {
				n++
				rp.queryAttrs = true
			}
			if n != 1 {
				return nil, errAt(ap, "set exactly one of segment, header or query")
			}
			switch a.As {
			case "", "string", "number", "boolean":
			default:
				return nil, errAt(ap.key("as"), "%q: want string, number or boolean", a.As)
			}
			rr.attrs = append(rr.attrs, ra)
		}
		rp.routes = append(rp.routes, rr)
	}
	return rp, nil
}

// parseInputPath reads a path into the input document: a root field
// (source, destination, request, connection, auth, time, attributes)
// followed by .name or [any name] parts, e.g. auth.claims.sub,
// request.headers[x-user], auth.claims[https://example.com/roles].
func parseInputPath(s string) ([]string, error) {
	bad := func(why string) error {
		return fmt.Errorf("source %q: %s; write e.g. auth.claims.sub or request.headers[x-user]", s, why)
	}
	var out []string
	rest := s
	for rest != "" {
		var name string
		switch {
		case rest[0] == '[' && len(out) > 0:
			end := strings.IndexByte(rest, ']')
			if end < 0 {
				return nil, bad("missing ]")
			}
			name = rest[1:end]
			if name == "" || strings.ContainsAny(name, "[") {
				return nil, bad("empty or unbalanced []")
			}
			rest = rest[end+1:]
			// After "]" comes ".", "[" or the end: "claims[a]b" is a
			// typo, not claims.a.b.
			if rest != "" && rest[0] != '.' && rest[0] != '[' {
				return nil, bad("expected . or [ after ]")
			}
		default:
			if len(out) > 0 {
				// Not a "[": a "." and a name follow.
				if rest[0] != '.' {
					return nil, bad("expected . or [")
				}
				rest = rest[1:]
			}
			end := strings.IndexAny(rest, ".[")
			if end < 0 {
				end = len(rest)
			}
			name = rest[:end]
			if !pathSegRE.MatchString(name) {
				return nil, bad("expected a name")
			}
			rest = rest[end:]
		}
		out = append(out, name)
		if len(out) > maxInputPathDepth+maxClaimDepth {
			return nil, bad("nested too deep")
		}
	}
	if len(out) == 0 || !inputRoots[out[0]] {
		return nil, bad("it must start with one of source, destination, request, connection, auth, time, attributes")
	}
	return out, nil
}

// parseRouteTemplate reads a route path template. Its rules are those of
// a policy's path templates (parsePathTemplate, Envoy's uri_template
// matcher), with {name} as a {*} that captures: literal segments of RFC
// 3986 pchar characters (IsTemplateLiteral), never empty except as a
// trailing "/" ("/" alone is the root), and {**} only as the last
// segment. An empty segment in the middle ("/records//x") is refused: read
// as anything it would be a {*}, giving a path the attributes of a route
// that does not name it.
func parseRouteTemplate(t string) ([]routeSeg, map[string]bool, error) {
	if !strings.HasPrefix(t, "/") {
		return nil, nil, fmt.Errorf("path template %q must start with /", t)
	}
	if len(t) > maxValueLen {
		return nil, nil, fmt.Errorf("path template is longer than %d", maxValueLen)
	}
	names := map[string]bool{}
	parts := strings.Split(t[1:], "/")
	segs := make([]routeSeg, 0, len(parts))
	for i, p := range parts {
		last := i == len(parts)-1
		switch {
		case p == "{**}":
			if !last {
				return nil, nil, fmt.Errorf("path template %q: {**} must be last", t)
			}
			segs = append(segs, routeSeg{kind: segRest})
		case p == "{*}":
			segs = append(segs, routeSeg{kind: segOne})
		case strings.HasPrefix(p, "{") && strings.HasSuffix(p, "}"):
			name := p[1 : len(p)-1]
			if !identRE.MatchString(name) {
				return nil, nil, fmt.Errorf("path template %q: {%s} is not a name", t, name)
			}
			if names[name] {
				return nil, nil, fmt.Errorf("path template %q: {%s} twice", t, name)
			}
			names[name] = true
			segs = append(segs, routeSeg{kind: segOne, name: name})
		case p == "":
			if !last {
				return nil, nil, fmt.Errorf("path template %q: empty path segment", t)
			}
			segs = append(segs, routeSeg{kind: segLit}) // a trailing "/"
		case strings.ContainsAny(p, "{}"):
			return nil, nil, fmt.Errorf("path template %q: segment %q mixes text and {…}", t, p)
		case !IsTemplateLiteral(p):
			return nil, nil, fmt.Errorf("path template %q: segment %q: only letters, digits and -._~%%!$&'()+,;:@= are allowed in a literal segment", t, p)
		default:
			segs = append(segs, routeSeg{kind: segLit, lit: p})
		}
	}
	return segs, names, nil
}

// compileRegoProvider prepares the provider of document d against r.
func compileRegoProvider(d *Document, r *Rego) (*regoProvider, *fieldError) {
	spec := fieldPath{}.key("spec")
	rp, fe := compileRegoProviderSpec(d.Provider, spec)
	if fe != nil {
		return nil, fe
	}
	rp.name, rp.ref = d.Name, d.Ref()
	if fe := rp.prepare(r, spec); fe != nil {
		return nil, fe
	}
	return rp, nil
}

// CustomEval records one CUSTOM provider evaluation for the decision log
// and metrics.
type CustomEval struct {
	// Provider is the provider's name; Query the Rego query (empty for a
	// provider given in Options.Custom).
	Provider string
	Query    string
	// Result is "allow", "deny", "error" or "timeout" (the last two deny).
	Result string
	// InputSHA256 is the hex SHA-256 of the input document the query saw
	// (in an unambiguous binary encoding): equal inputs have equal
	// digests, and the log never holds the input itself (it carries
	// tokens' claims and headers).
	InputSHA256 string
	// Error is why the evaluation failed, for "error" and "timeout".
	Error string
}

// customResult is what a provider decided.
type customResult struct {
	allow   bool
	reason  string
	headers map[string]string
	status  int
	eval    CustomEval
}

// forbiddenHeaders may not be set by a provider: they frame the request,
// or they are the sidecar's own statement of who called.
var forbiddenHeaders = map[string]bool{
	"Host": true, "Content-Length": true, "Transfer-Encoding": true, "Connection": true,
	"Upgrade": true, "Te": true, "Trailer": true, "Keep-Alive": true, "Proxy-Connection": true,
	"X-Forwarded-Client-Cert": true,
}

// read interprets a query's value: a boolean, or an object with allow
// (or OPA-Envoy's allowed), reason, headers and status (or http_status).
func (res *customResult) read(v any) error {
	switch t := v.(type) {
	case bool:
		res.allow = t
		return nil
	case map[string]any:
		a, ok := t["allow"]
		if !ok {
			a, ok = t["allowed"]
		}
		if res.allow, ok = a.(bool); !ok {
			return errors.New(`the result object needs a boolean "allow"`)
		}
		if r, ok := t["reason"]; ok {
			s, ok := r.(string)
			if !ok {
				return errors.New(`"reason" must be a string`)
			}
			if len(s) > 1024 {
				s = s[:1024]
			}
			res.reason = s
		}
		if h, ok := t["headers"]; ok {
			hs, ok := h.(map[string]any)
			if !ok || len(hs) > maxRegoHeaders {
				return fmt.Errorf(`"headers" must be an object of at most %d strings`, maxRegoHeaders)
			}
			for k, v := range hs {
				name, err := headerKey(k)
				s, ok := v.(string)
				switch {
				case err != nil || strings.HasPrefix(name, ":"):
					return fmt.Errorf("header %q is not a header name", k)
				case strings.ContainsRune(name, '_'):
					// CGI-style apps read "_" and "-" alike: X_Forwarded_Client_Cert
					// would be the sidecar's header to them.
					return fmt.Errorf("header %q: names with _ are refused (apps may read them as -)", k)
				case forbiddenHeaders[name]:
					return fmt.Errorf("header %q may not be set by a policy", name)
				case !ok || strings.ContainsAny(s, "\r\n\x00") || len(s) > maxValueLen:
					return fmt.Errorf("header %q needs a string value without CR, LF or NUL", name)
				}
				if res.headers == nil {
					res.headers = map[string]string{}
				}
				res.headers[name] = s
			}
		}
		st, ok := t["status"]
		if !ok {
			st, ok = t["http_status"]
		}
		if ok {
			n, _ := st.(json.Number)
			code, err := n.Int64()
			if err != nil || code < 400 || code > 599 {
				return errors.New(`"status" must be an HTTP status from 400 to 599`)
			}
			res.status = int(code)
		}
		return nil
	}
	return fmt.Errorf("the result is %s, not a boolean or an object with allow", jsonTypeName(v))
}

// regoProviders maps provider names to providers; nil without any.
type regoProviders map[string]*regoProvider

func (ps regoProviders) sortedNames() []string {
	out := make([]string, 0, len(ps))
	for n := range ps {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// maxRegoFailures bounds what RegoFailures reports.
const maxRegoFailures = 20

// prepare prepares rp's query against r (nil: no modules, so every
// evaluation is undefined, which denies). Without an evaluator there is
// nothing to prepare: eval denies.
func (rp *regoProvider) prepare(r *Rego, spec fieldPath) *fieldError {
	if !RegoAvailable() {
		return nil
	}
	if r == nil {
		// An empty Rego keeps one code path.
		r = EmptyRego()
	}
	pq, err := r.compiled.Prepare(rp.query)
	if err != nil {
		return errAt(spec.key("query"), "%v", asRegoError(err))
	}
	rp.pq = pq
	rp.needs = inputNeeds(r, rp.maps)
	b := regoengine.Current()
	for i := range rp.maps {
		rp.maps[i].toP, rp.maps[i].fromP = b.Path(rp.maps[i].to), b.Path(rp.maps[i].from)
	}
	return nil
}

// parseRegoQuery reads a provider's query, a ground reference into data
// (data.a.b), in the evaluator's canonical form. Without an evaluator it
// is checked as far as it can be without OPA's parser: a reference into
// data (data.a.b or data["a-b"]), on one line, within the value limit.
// It is never evaluated there, so a query OPA would refuse can only
// deny; the full executable and "moatless policy check" refuse it.
func parseRegoQuery(q string) (string, bool) {
	if e := regoengine.Current(); e != nil {
		return e.ParseQuery(q)
	}
	if !strings.HasPrefix(q, "data.") && !strings.HasPrefix(q, "data[") || len(q) > maxValueLen {
		return "", false
	}
	for _, r := range q {
		if r < 0x20 || r == 0x7f || r == ' ' {
			return "", false
		}
	}
	return q, true
}

// inputNeeds is the part of the input the modules of r can read: every
// reference to input, followed through its constant keys (a variable key
// or a reference to the object itself reads all of it), and, for every
// mapping whose target the modules read, the mapping's source. Nil: all.
func inputNeeds(r *Rego, maps []inputMap) *needTree {
	refs, whole := r.compiled.InputRefs()
	if whole {
		return nil
	}
	root := &needTree{kids: map[string]*needTree{}}
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
	for _, path := range refs {
		read[path[0]] = true
		if inputRoots[path[0]] {
			add(path)
		}
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

// eval runs the provider's query on req, with path (one reading of its
// path) and fold (routes match literal segments ignoring case) as in
// buildInput. Any failure denies: an error,
// the timeout, an undefined result, or a result of the wrong shape.
// Without an evaluator it denies with result "unavailable"
// (ErrRegoUnavailable), counted apart from a policy's own deny.
func (p *regoProvider) eval(req *Request, path string, fold bool) customResult {
	if p.pq == nil {
		return customResult{
			reason: "rego provider " + p.name + " unavailable: " + ErrRegoUnavailable.Error(),
			eval:   CustomEval{Provider: p.name, Query: p.query, Result: "unavailable", Error: ErrRegoUnavailable.Error()},
		}
	}
	res := customResult{eval: CustomEval{Provider: p.name, Query: p.query}}
	if p.queryAttrs {
		if name := p.ambiguousAttribute(req, path, fold); name != "" {
			res.eval.Result = "deny"
			res.reason = "attribute " + name + ": its query parameter is given different values, and apps differ on which counts"
			return res
		}
	}
	b := regoengine.Current()
	in := buildInput(b, p, req, path, fold)
	res.eval.InputSHA256 = b.Digest(in)
	v, defined, timedOut, err := p.pq.Eval(in, req.Time, p.timeout)
	if err != nil {
		res.eval.Result, res.eval.Error = "error", err.Error()
		if timedOut {
			res.eval.Result, res.eval.Error = "timeout", fmt.Sprintf("evaluation exceeded %s", p.timeout)
		}
		res.reason = "rego evaluation failed: " + res.eval.Error
		return res
	}
	if !defined {
		res.eval.Result, res.reason = "deny", p.query+" is undefined"
		return res
	}
	if err := res.read(v); err != nil {
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

// RegoFailures evaluates provider's query on req again with the
// evaluator's tracer and lists the expressions that evaluated to false,
// "file:line: expr", in evaluation order without repeats: for "moatless
// policy check --explain", what kept an allow rule from matching. It
// costs a traced evaluation and is not for the request path. Without an
// evaluator it is ErrRegoUnavailable.
func (s *Set) RegoFailures(provider string, req *Request) ([]string, error) {
	if s == nil || s.providers[provider] == nil {
		return nil, fmt.Errorf("policy: no Rego provider %q", provider)
	}
	p := s.providers[provider]
	if p.pq == nil {
		return nil, fmt.Errorf("policy: rego provider %q: %w", provider, ErrRegoUnavailable)
	}
	path := ""
	if req.Protocol != TCP {
		var err error
		if path, err = s.matchPath(nil, req); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), MaxRegoTimeout)
	defer cancel()
	return p.pq.Failures(ctx, buildInput(regoengine.Current(), p, req, path, false), req.Time, maxRegoFailures)
}

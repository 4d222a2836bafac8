//go:build !norego

package policy

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
)

// The input document a Rego provider's query sees (docs/rego.md shows
// one in full). Absent attributes are absent fields, never "" or null, so
// that a policy comparing them is undefined and denies:
//
//	source:      principal ("td/ns/prod/sa/orders"), spiffe_id, trust_domain,
//	             namespace, service_account (from the /ns/<ns>/sa/<sa> path),
//	             ip, remote_ip; no principal for a plaintext peer
//	destination: namespace, labels, port, ip, principal (the workload's own ID)
//	request:     protocol ("http", "tcp"); for HTTP method, path (normalized,
//	             without the query), query ({name: [values]}), host, headers
//	             ({lower-case name: values joined with ","})
//	connection:  sni
//	auth:        the verified JWT (RequestAuthentication): principal
//	             ("iss/sub"), audiences, presenter, claims
//	time:        unix, unix_ns, rfc3339, year, month, day, hour, minute,
//	             weekday ("Monday"), in the provider's time zone
//	attributes:  what the provider's routes declare for this request
//
// then every input mapping of the provider (user.id: auth.claims.sub).

// buildInput builds the input document of p for req (the parts p's
// modules read); path is the normalized path policies match.
func buildInput(p *regoProvider, req *Request, path string) ast.Object {
	var need *needTree
	if p != nil {
		need = p.needs
	}
	in := ast.NewObjectWithCapacity(8)
	if n, ok := need.child("source"); ok {
		putSource(in, n, req)
	}
	if n, ok := need.child("destination"); ok {
		putDestination(in, n, req)
	}
	var query url.Values
	if need.has("request") || need.has("attributes") {
		if _, q, ok := strings.Cut(req.Path, "?"); ok && req.Protocol != TCP {
			q, _, _ = strings.Cut(q, "#")
			query, _ = url.ParseQuery(q) // what parses; a bad pair is dropped
		}
	}
	if n, ok := need.child("request"); ok {
		putRequest(in, n, req, path, query)
	}
	if n, ok := need.child("connection"); ok && req.SNI != "" && n.has("sni") {
		c := ast.NewObjectWithCapacity(1)
		str(c, "sni", req.SNI)
		put(in, "connection", ast.NewTerm(c))
	}
	if n, ok := need.child("auth"); ok && req.Auth != nil && req.Protocol != TCP {
		putAuth(in, n, req.Auth)
	}
	if n, ok := need.child("time"); ok && !req.Time.IsZero() {
		putTime(in, n, p, req.Time)
	}
	if p != nil && req.Protocol != TCP && need.has("attributes") {
		if attrs := p.attributes(req, path, query); attrs != nil {
			put(in, "attributes", ast.NewTerm(attrs))
		}
	}
	if p != nil {
		for _, m := range p.maps {
			if v := lookupInput(in, m.fromT); v != nil {
				setInput(in, m.toT, v)
			}
		}
	}
	return in
}

// keyTerms are the input document's own keys as terms, made once: terms
// are immutable, and a request then allocates only for its values.
var keyTerms = func() map[string]*ast.Term {
	m := map[string]*ast.Term{}
	for _, k := range []string{"source", "destination", "request", "connection", "auth", "time", "attributes",
		"principal", "spiffe_id", "trust_domain", "namespace", "service_account", "ip", "remote_ip",
		"labels", "port", "protocol", "method", "path", "query", "host", "headers", "sni",
		"audiences", "presenter", "claims", "unix", "unix_ns", "rfc3339", "year", "month", "day",
		"hour", "minute", "weekday"} {
		m[k] = ast.StringTerm(k)
	}
	return m
}()

func put(o ast.Object, k string, v *ast.Term) {
	kt := keyTerms[k]
	if kt == nil {
		kt = ast.StringTerm(k)
	}
	o.Insert(kt, v)
}

func str(o ast.Object, k, v string) {
	if v != "" {
		put(o, k, ast.StringTerm(v))
	}
}

func putSource(in ast.Object, n *needTree, req *Request) {
	src := ast.NewObjectWithCapacity(7)
	if pr := strings.TrimPrefix(req.Source.Principal, "spiffe://"); pr != "" {
		if n.has("principal") {
			str(src, "principal", pr)
		}
		if n.has("spiffe_id") {
			str(src, "spiffe_id", "spiffe://"+pr)
		}
		td, rest, _ := strings.Cut(pr, "/")
		if n.has("trust_domain") {
			str(src, "trust_domain", td)
		}
		if ns, sa, ok := nsSA(rest); ok {
			if n.has("namespace") {
				str(src, "namespace", ns)
			}
			if n.has("service_account") {
				str(src, "service_account", sa)
			}
		}
	}
	if req.Source.IP.IsValid() && n.has("ip") {
		str(src, "ip", req.Source.IP.String())
	}
	if n.has("remote_ip") {
		if ip := req.RemoteIP; ip.IsValid() {
			str(src, "remote_ip", ip.String())
		} else if req.Source.IP.IsValid() {
			str(src, "remote_ip", req.Source.IP.String())
		}
	}
	put(in, "source", ast.NewTerm(src))
}

func putDestination(in ast.Object, n *needTree, req *Request) {
	dst := ast.NewObjectWithCapacity(5)
	d := &req.Destination
	if n.has("namespace") {
		str(dst, "namespace", d.Namespace)
	}
	if len(d.Labels) > 0 && n.has("labels") {
		l := ast.NewObjectWithCapacity(len(d.Labels))
		for k, v := range d.Labels {
			put(l, k, ast.StringTerm(v))
		}
		put(dst, "labels", ast.NewTerm(l))
	}
	if d.Port > 0 && n.has("port") {
		put(dst, "port", ast.InternedTerm(d.Port))
	}
	if d.IP.IsValid() && n.has("ip") {
		str(dst, "ip", d.IP.String())
	}
	if n.has("principal") {
		str(dst, "principal", d.Principal)
	}
	put(in, "destination", ast.NewTerm(dst))
}

func putRequest(in ast.Object, n *needTree, req *Request, path string, query url.Values) {
	rq := ast.NewObjectWithCapacity(6)
	if req.Protocol == TCP {
		str(rq, "protocol", "tcp")
		put(in, "request", ast.NewTerm(rq))
		return
	}
	str(rq, "protocol", "http")
	str(rq, "method", req.Method)
	str(rq, "path", path)
	if qn, ok := n.child("query"); ok && len(query) > 0 {
		qo := ast.NewObjectWithCapacity(len(query))
		for k, vs := range query {
			if !qn.has(k) {
				continue
			}
			ts := make([]*ast.Term, len(vs))
			for i, v := range vs {
				ts[i] = ast.StringTerm(v)
			}
			put(qo, k, ast.ArrayTerm(ts...))
		}
		put(rq, "query", ast.NewTerm(qo))
	}
	str(rq, "host", req.Host)
	if hn, ok := n.child("headers"); ok && len(req.Headers) > 0 {
		var ho ast.Object
		header := func(lower string, vs []string) {
			if len(vs) == 0 {
				return
			}
			v := vs[0]
			if len(vs) > 1 {
				v = strings.Join(vs, ",")
			}
			ho.Insert(ast.StringTerm(lower), ast.StringTerm(v))
		}
		if hn == nil {
			ho = ast.NewObjectWithCapacity(len(req.Headers))
			for k, vs := range req.Headers {
				header(strings.ToLower(k), vs)
			}
		} else {
			ho = ast.NewObjectWithCapacity(len(hn.kids))
			for lower, k := range hn.kids {
				header(lower, req.Headers[k.canon])
			}
		}
		put(rq, "headers", ast.NewTerm(ho))
	}
	put(in, "request", ast.NewTerm(rq))
}

func putAuth(in ast.Object, n *needTree, a *Auth) {
	ao := ast.NewObjectWithCapacity(4)
	if n.has("principal") {
		str(ao, "principal", a.Principal)
	}
	if len(a.Audiences) > 0 && n.has("audiences") {
		ts := make([]*ast.Term, len(a.Audiences))
		for i, s := range a.Audiences {
			ts[i] = ast.StringTerm(s)
		}
		put(ao, "audiences", ast.ArrayTerm(ts...))
	}
	if n.has("presenter") {
		str(ao, "presenter", a.Presenter)
	}
	// Claims come from a verified token's JSON: every value converts;
	// one that does not is left out, never guessed.
	if cn, ok := n.child("claims"); ok && a.Claims != nil {
		if cn == nil {
			if v, err := ast.InterfaceToValue(a.Claims); err == nil {
				put(ao, "claims", ast.NewTerm(v))
			}
		} else {
			co := ast.NewObjectWithCapacity(len(cn.kids))
			for k := range cn.kids {
				if c, ok := a.Claims[k]; ok {
					if v, err := ast.InterfaceToValue(c); err == nil {
						co.Insert(ast.StringTerm(k), ast.NewTerm(v))
					}
				}
			}
			put(ao, "claims", ast.NewTerm(co))
		}
	}
	put(in, "auth", ast.NewTerm(ao))
}

func putTime(in ast.Object, n *needTree, p *regoProvider, at time.Time) {
	loc := time.UTC
	if p != nil && p.loc != nil {
		loc = p.loc
	}
	t := at.In(loc)
	to := ast.NewObjectWithCapacity(9)
	num := func(k string, v int) {
		if n.has(k) {
			put(to, k, ast.InternedTerm(v))
		}
	}
	num("unix", int(t.Unix()))
	if n.has("unix_ns") {
		put(to, "unix_ns", ast.NumberTerm(json.Number(strconv.FormatInt(t.UnixNano(), 10))))
	}
	if n.has("rfc3339") {
		str(to, "rfc3339", t.Format(time.RFC3339Nano))
	}
	num("year", t.Year())
	num("month", int(t.Month()))
	num("day", t.Day())
	num("hour", t.Hour())
	num("minute", t.Minute())
	if n.has("weekday") {
		str(to, "weekday", t.Weekday().String())
	}
	put(in, "time", ast.NewTerm(to))
}

// nsSA reads "ns/<ns>/sa/<sa>" at the start of a SPIFFE ID's path, the
// Istio convention; anything else has neither.
func nsSA(path string) (ns, sa string, ok bool) {
	parts := strings.Split(path, "/")
	if len(parts) >= 4 && parts[0] == "ns" && parts[2] == "sa" && parts[1] != "" && parts[3] != "" {
		return parts[1], parts[3], true
	}
	return "", "", false
}

// attributes evaluates the first route of p that matches the request.
func (p *regoProvider) attributes(req *Request, path string, query url.Values) ast.Object {
	for i := range p.routes {
		r := &p.routes[i]
		if len(r.methods) > 0 && !containsString(r.methods, req.Method) {
			continue
		}
		caps, ok := r.match(path)
		if !ok {
			continue
		}
		out := ast.NewObject()
		for _, a := range r.attrs {
			var v string
			var present bool
			switch {
			case a.segment != "":
				v, present = caps[a.segment]
			case a.header != "":
				if vs := req.Headers[a.header]; len(vs) > 0 {
					v, present = strings.Join(vs, ","), true
				}
			case a.qry != "":
				if vs := query[a.qry]; len(vs) > 0 {
					v, present = vs[0], true
				}
			}
			if !present {
				continue
			}
			if t := convertAttr(v, a.as); t != nil {
				out.Insert(ast.StringTerm(a.name), t)
			}
		}
		return out
	}
	return nil
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// convertAttr converts a declared attribute; nil when it does not convert.
func convertAttr(v, as string) *ast.Term {
	switch as {
	case "number":
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || f != f || f > 1e300 || f < -1e300 {
			return nil
		}
		return ast.NumberTerm(json.Number(strconv.FormatFloat(f, 'g', -1, 64)))
	case "boolean":
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return nil
		}
		return ast.BooleanTerm(b)
	}
	return ast.StringTerm(v)
}

// match matches a normalized path against the template, returning the
// named segments (percent-decoded where they decode).
func (r *regoRoute) match(path string) (map[string]string, bool) {
	if !strings.HasPrefix(path, "/") {
		return nil, false
	}
	parts := strings.Split(path[1:], "/")
	var caps map[string]string
	for i, s := range r.segs {
		if s.rest {
			return caps, true
		}
		if i >= len(parts) {
			return nil, false
		}
		part := parts[i]
		switch {
		case s.lit != "":
			if part != s.lit {
				return nil, false
			}
		default:
			if part == "" {
				return nil, false
			}
			if s.name != "" {
				if caps == nil {
					caps = map[string]string{}
				}
				if u, err := url.PathUnescape(part); err == nil {
					part = u
				}
				caps[s.name] = part
			}
		}
	}
	if len(parts) != len(r.segs) {
		return nil, false
	}
	return caps, true
}

// lookupInput follows path through nested objects; nil when undefined.
func lookupInput(o ast.Object, path []*ast.Term) *ast.Term {
	var cur ast.Value = o
	var t *ast.Term
	for _, k := range path {
		obj, ok := cur.(ast.Object)
		if !ok {
			return nil
		}
		if t = obj.Get(k); t == nil {
			return nil
		}
		cur = t.Value
	}
	return t
}

// setInput puts v at path, creating objects on the way (a non-object on
// the way is replaced: mappings own their targets).
func setInput(o ast.Object, path []*ast.Term, v *ast.Term) {
	cur := o
	for _, key := range path[:len(path)-1] {
		next, ok := func() (ast.Object, bool) {
			if t := cur.Get(key); t != nil {
				obj, ok := t.Value.(ast.Object)
				return obj, ok
			}
			return nil, false
		}()
		if !ok {
			next = ast.NewObject()
			cur.Insert(key, ast.NewTerm(next))
		}
		cur = next
	}
	cur.Insert(path[len(path)-1], v)
}

// inputDigest is the hex SHA-256 of an unambiguous encoding of the input
// (appendValue).
func inputDigest(in ast.Value) string {
	buf := make([]byte, 0, 1024)
	buf = appendValue(buf, in)
	sum := sha256.Sum256(buf)
	return hex.EncodeToString(sum[:])
}

// appendValue encodes v unambiguously: a type byte, strings and numbers
// length-prefixed, arrays and objects counted, object keys in OPA's
// sorted order. Cheaper than rendering the value as text.
func appendValue(buf []byte, v ast.Value) []byte {
	switch t := v.(type) {
	case ast.String:
		return appendLP(buf, 's', string(t))
	case ast.Number:
		return appendLP(buf, 'n', string(t))
	case ast.Boolean:
		if t {
			return append(buf, 't')
		}
		return append(buf, 'f')
	case ast.Null:
		return append(buf, 'z')
	case *ast.Array:
		buf = binary.AppendUvarint(append(buf, 'a'), uint64(t.Len()))
		for i := 0; i < t.Len(); i++ {
			buf = appendValue(buf, t.Elem(i).Value)
		}
		return buf
	case ast.Object:
		buf = binary.AppendUvarint(append(buf, 'o'), uint64(t.Len()))
		for _, k := range t.Keys() {
			buf = appendValue(buf, k.Value)
			buf = appendValue(buf, t.Get(k).Value)
		}
		return buf
	}
	return appendLP(buf, 'x', v.String()) // sets and refs do not occur in inputs
}

func appendLP(buf []byte, tag byte, s string) []byte {
	buf = append(buf, tag)
	buf = binary.AppendUvarint(buf, uint64(len(s)))
	return append(buf, s...)
}

// RegoInput is the input document provider's query sees for req, as JSON
// values: what "moatless policy check --explain" prints and what tests
// compare. An unknown provider gets the document without attributes and
// mappings. It is the whole document: an evaluation builds only the root
// fields the modules read. It does not modify req.
func (s *Set) RegoInput(provider string, req *Request) (map[string]any, error) {
	var p *regoProvider
	if s != nil && s.providers[provider] != nil {
		full := *s.providers[provider]
		full.needs = nil // the whole document, not only what the modules read
		p = &full
	}
	path := ""
	if req.Protocol != TCP {
		var err error
		if s != nil {
			path, err = s.matchPath(nil, req)
		} else {
			path, err = normalizePath(nil, req.Path, NormalizeBase)
		}
		if err != nil {
			return nil, err
		}
	}
	v, err := ast.JSON(buildInput(p, req, path))
	if err != nil {
		return nil, err
	}
	m, _ := v.(map[string]any)
	return m, nil
}

// RedactInput replaces the values of request headers that carry
// credentials (authorization, cookie, proxy-authorization) with
// "[redacted]", for printing an input document.
func RedactInput(in map[string]any) {
	rq, _ := in["request"].(map[string]any)
	hs, _ := rq["headers"].(map[string]any)
	for _, k := range sortedKeys(hs) {
		switch k {
		case "authorization", "cookie", "proxy-authorization", "x-api-key":
			hs[k] = "[redacted]"
		}
	}
}

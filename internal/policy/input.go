package policy

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/policy/regoengine"
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
// modules read) with the evaluator's builder b; path is the normalized
// path policies match (one of its readings), fold whether routes match its
// literal segments ignoring ASCII case (regoProvider.route). The values are b's own: an evaluator takes them
// without converting Go values on every evaluation.
func buildInput(b regoengine.Builder, p *regoProvider, req *Request, path string, fold bool) any {
	var need *needTree
	if p != nil {
		need = p.needs
	}
	in := b.NewObject(8)
	if n, ok := need.child("source"); ok {
		putSource(b, in, n, req)
	}
	if n, ok := need.child("destination"); ok {
		putDestination(b, in, n, req)
	}
	var query url.Values
	if need.has("request") || need.has("attributes") {
		if _, q, ok := strings.Cut(req.Path, "?"); ok && req.Protocol != TCP {
			q, _, _ = strings.Cut(q, "#")
			query, _ = url.ParseQuery(q) // what parses; a bad pair is dropped
		}
	}
	if n, ok := need.child("request"); ok {
		putRequest(b, in, n, req, path, query)
	}
	if n, ok := need.child("connection"); ok && req.SNI != "" && n.has("sni") {
		c := b.NewObject(1)
		str(b, c, "sni", req.SNI)
		b.Put(in, "connection", c)
	}
	if n, ok := need.child("auth"); ok && req.Auth != nil && req.Protocol != TCP {
		putAuth(b, in, n, req.Auth)
	}
	if n, ok := need.child("time"); ok && !req.Time.IsZero() {
		putTime(b, in, n, p, req.Time)
	}
	if p != nil && req.Protocol != TCP && need.has("attributes") {
		if attrs := p.attributes(b, req, path, fold, query); attrs != nil {
			b.Put(in, "attributes", attrs)
		}
	}
	if p != nil {
		for _, m := range p.maps {
			if m.fromP == nil {
				continue // not prepared: no evaluator
			}
			if v, ok := b.Lookup(in, m.fromP); ok {
				b.Set(in, m.toP, v)
			}
		}
	}
	return in
}

func str(b regoengine.Builder, o any, k, v string) {
	if v != "" {
		b.Put(o, k, b.String(v))
	}
}

func putSource(b regoengine.Builder, in any, n *needTree, req *Request) {
	src := b.NewObject(7)
	if pr := strings.TrimPrefix(req.Source.Principal, "spiffe://"); pr != "" {
		if n.has("principal") {
			str(b, src, "principal", pr)
		}
		if n.has("spiffe_id") {
			str(b, src, "spiffe_id", "spiffe://"+pr)
		}
		td, rest, _ := strings.Cut(pr, "/")
		if n.has("trust_domain") {
			str(b, src, "trust_domain", td)
		}
		if ns, sa, ok := nsSA(rest); ok {
			if n.has("namespace") {
				str(b, src, "namespace", ns)
			}
			if n.has("service_account") {
				str(b, src, "service_account", sa)
			}
		}
	}
	if req.Source.IP.IsValid() && n.has("ip") {
		str(b, src, "ip", req.Source.IP.String())
	}
	if n.has("remote_ip") {
		if ip := req.RemoteIP; ip.IsValid() {
			str(b, src, "remote_ip", ip.String())
		} else if req.Source.IP.IsValid() {
			str(b, src, "remote_ip", req.Source.IP.String())
		}
	}
	b.Put(in, "source", src)
}

func putDestination(b regoengine.Builder, in any, n *needTree, req *Request) {
	dst := b.NewObject(5)
	d := &req.Destination
	if n.has("namespace") {
		str(b, dst, "namespace", d.Namespace)
	}
	if len(d.Labels) > 0 && n.has("labels") {
		l := b.NewObject(len(d.Labels))
		for k, v := range d.Labels {
			b.Put(l, k, b.String(v))
		}
		b.Put(dst, "labels", l)
	}
	if d.Port > 0 && n.has("port") {
		b.Put(dst, "port", b.Int(d.Port))
	}
	if d.IP.IsValid() && n.has("ip") {
		str(b, dst, "ip", d.IP.String())
	}
	if n.has("principal") {
		str(b, dst, "principal", d.Principal)
	}
	b.Put(in, "destination", dst)
}

func putRequest(b regoengine.Builder, in any, n *needTree, req *Request, path string, query url.Values) {
	rq := b.NewObject(6)
	if req.Protocol == TCP {
		str(b, rq, "protocol", "tcp")
		b.Put(in, "request", rq)
		return
	}
	str(b, rq, "protocol", "http")
	str(b, rq, "method", req.Method)
	str(b, rq, "path", path)
	if qn, ok := n.child("query"); ok && len(query) > 0 {
		qo := b.NewObject(len(query))
		for k, vs := range query {
			if !qn.has(k) {
				continue
			}
			b.Put(qo, k, b.Strings(vs))
		}
		b.Put(rq, "query", qo)
	}
	str(b, rq, "host", req.Host)
	if hn, ok := n.child("headers"); ok && len(req.Headers) > 0 {
		var ho any
		header := func(lower string, vs []string) {
			if len(vs) == 0 {
				return
			}
			v := vs[0]
			if len(vs) > 1 {
				v = strings.Join(vs, ",")
			}
			b.Put(ho, lower, b.String(v))
		}
		if hn == nil {
			ho = b.NewObject(len(req.Headers))
			for k, vs := range req.Headers {
				if req.Auth != nil {
					if _, set := req.Auth.SetHeaders[k]; set {
						continue
					}
				}
				header(strings.ToLower(k), vs)
			}
			if req.Auth != nil {
				for k, v := range req.Auth.SetHeaders {
					header(strings.ToLower(k), []string{v})
				}
			}
		} else {
			ho = b.NewObject(len(hn.kids))
			for lower, k := range hn.kids {
				header(lower, req.header(k.canon))
			}
		}
		b.Put(rq, "headers", ho)
	}
	b.Put(in, "request", rq)
}

func putAuth(b regoengine.Builder, in any, n *needTree, a *Auth) {
	ao := b.NewObject(4)
	if n.has("principal") {
		str(b, ao, "principal", a.Principal)
	}
	if len(a.Audiences) > 0 && n.has("audiences") {
		b.Put(ao, "audiences", b.Strings(a.Audiences))
	}
	if n.has("presenter") {
		str(b, ao, "presenter", a.Presenter)
	}
	// Claims come from a verified token's JSON: every value converts;
	// one that does not is left out, never guessed.
	if cn, ok := n.child("claims"); ok && a.Claims != nil {
		if cn == nil {
			if v, ok := b.JSONValue(a.Claims); ok {
				b.Put(ao, "claims", v)
			}
		} else {
			co := b.NewObject(len(cn.kids))
			for k := range cn.kids {
				if c, ok := a.Claims[k]; ok {
					if v, ok := b.JSONValue(c); ok {
						b.Put(co, k, v)
					}
				}
			}
			b.Put(ao, "claims", co)
		}
	}
	b.Put(in, "auth", ao)
}

func putTime(b regoengine.Builder, in any, n *needTree, p *regoProvider, at time.Time) {
	loc := time.UTC
	if p != nil && p.loc != nil {
		loc = p.loc
	}
	t := at.In(loc)
	to := b.NewObject(9)
	num := func(k string, v int) {
		if n.has(k) {
			b.Put(to, k, b.Int(v))
		}
	}
	num("unix", int(t.Unix()))
	if n.has("unix_ns") {
		b.Put(to, "unix_ns", b.Number(strconv.FormatInt(t.UnixNano(), 10)))
	}
	if n.has("rfc3339") {
		str(b, to, "rfc3339", t.Format(time.RFC3339Nano))
	}
	num("year", t.Year())
	num("month", int(t.Month()))
	num("day", t.Day())
	num("hour", t.Hour())
	num("minute", t.Minute())
	if n.has("weekday") {
		str(b, to, "weekday", t.Weekday().String())
	}
	b.Put(in, "time", to)
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

// route is the first route of p that matches the request, with the
// segments it captured; nil when none does. With fold, a route's literal
// segments match ignoring ASCII case, as an app that routes so reads them;
// what its {name} segments capture is the path's own text either way.
func (p *regoProvider) route(req *Request, path string, fold bool) (*regoRoute, map[string]string) {
	for i := range p.routes {
		r := &p.routes[i]
		if len(r.methods) > 0 && !containsString(r.methods, req.Method) {
			continue
		}
		if caps, ok := r.match(path, fold); ok {
			return r, caps
		}
	}
	return nil, nil
}

// ambiguousAttribute names a query attribute of the route that applies
// to req whose parameter the query gives more than once with different
// values ("" when there is none). Frameworks disagree on which one counts
// (Go and Express's first, PHP's and Rails' last, older Python and Java
// parsers split on ";" too), so no decision on one of them holds for the
// app: eval denies such a request. Pairs are split on "&" and ";", names
// and values percent-decoded where they decode.
func (p *regoProvider) ambiguousAttribute(req *Request, path string, fold bool) string {
	_, q, ok := strings.Cut(req.Path, "?")
	if !ok || req.Protocol == TCP {
		return ""
	}
	r, _ := p.route(req, path, fold)
	if r == nil {
		return ""
	}
	for _, a := range r.attrs {
		if a.qry == "" {
			continue
		}
		var first string
		seen := false
		for pair := range strings.FieldsFuncSeq(q, func(c rune) bool { return c == '&' || c == ';' }) {
			k, v, _ := strings.Cut(pair, "=")
			if u, err := url.QueryUnescape(k); err == nil {
				k = u
			}
			if k != a.qry {
				continue
			}
			if u, err := url.QueryUnescape(v); err == nil {
				v = u
			}
			if seen && v != first {
				return a.name
			}
			first, seen = v, true
		}
	}
	return ""
}

// attributes evaluates the first route of p that matches the request.
func (p *regoProvider) attributes(b regoengine.Builder, req *Request, path string, fold bool, query url.Values) any {
	if r, caps := p.route(req, path, fold); r != nil {
		out := b.NewObject(len(r.attrs))
		for _, a := range r.attrs {
			var v string
			var present bool
			switch {
			case a.segment != "":
				v, present = caps[a.segment]
			case a.header != "":
				if vs := req.header(a.header); len(vs) > 0 {
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
			if t := convertAttr(b, v, a.as); t != nil {
				b.Put(out, a.name, t)
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
func convertAttr(b regoengine.Builder, v, as string) any {
	switch as {
	case "number":
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || f != f || f > 1e300 || f < -1e300 {
			return nil
		}
		return b.Number(strconv.FormatFloat(f, 'g', -1, 64))
	case "boolean":
		x, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return nil
		}
		return b.Bool(x)
	}
	return b.String(v)
}

// match matches a normalized path against the template, returning the
// named segments (percent-decoded where they decode). {*}, {name} and
// {**} match what they match in a policy's path template (templateChar);
// with fold, literal segments match ignoring ASCII case.
func (r *regoRoute) match(path string, fold bool) (map[string]string, bool) {
	if !strings.HasPrefix(path, "/") {
		return nil, false
	}
	rest := path[1:]
	var caps map[string]string
	for i, s := range r.segs {
		if s.kind == segRest {
			for j := 0; j < len(rest); j++ {
				if c := rest[j]; c != '/' && !templateChar(c) {
					return nil, false
				}
			}
			return caps, true
		}
		part, more := rest, false
		if end := strings.IndexByte(rest, '/'); end >= 0 {
			part, rest, more = rest[:end], rest[end+1:], true
		} else {
			rest = ""
		}
		if s.kind == segLit {
			if part != s.lit && !(fold && asciiEqualFold(part, s.lit)) {
				return nil, false
			}
		} else {
			if part == "" || !IsTemplateLiteral(part) {
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
		last := i == len(r.segs)-1
		if more == last {
			// More path than template, or a template that wants more
			// (another segment, or the "/" before {**}).
			return nil, false
		}
	}
	return caps, true
}

// RegoInput is the input document provider's query sees for req, as JSON
// values: what "moatless policy check --explain" prints and what tests
// compare. An unknown provider gets the document without attributes and
// mappings. It is the whole document: an evaluation builds only the root
// fields the modules read. It does not modify req.
func (s *Set) RegoInput(provider string, req *Request) (map[string]any, error) {
	b := regoengine.Current()
	if b == nil {
		return nil, fmt.Errorf("policy: rego input: %w", ErrRegoUnavailable)
	}
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
	v, err := b.JSON(buildInput(b, p, req, path, false))
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

package proxy

import (
	"io"
	"net/http"
	"strings"

	"github.com/moatless/moatless/internal/policy"
)

// Request headers the app could mistake for the sidecar's word.
//
// WSGI, CGI and many frameworks read a header under a folded name
// (X-User and x_user are both HTTP_X_USER), so removing a header by its
// exact name is not enough: an "_" spelling arriving next to, or instead
// of, the one the sidecar sets reaches the app as the same variable, and
// which one wins depends on the order it sees them in. The sidecar
// therefore compares names case-insensitively with "_" read as "-" and
// drops, rather than refuses, what it finds — as nginx drops every name
// with an underscore by default and Envoy can (headers_with_underscores_
// action: DROP_HEADER) — so that a well-meaning client with an odd header
// keeps working and a forger gains nothing:
//
//   - headers the sidecar sets (x-forwarded-client-cert, the headers
//     RequestAuthentication writes from a token), method and path
//     overrides and the x-moatless-* namespace are dropped under every
//     spelling;
//   - headers that other parts of the request path vouch for or that frame
//     the message (the token headers RequestAuthentication reads, hop-by-hop
//     fields, Content-Length, x-forwarded-*) keep their real spelling and
//     lose their "_" twins.
//
// The gateway uses the same filter in its edge form (NewEdgeHeaderFilter):
// there the forwarding family, the request ID and Envoy's and Istio's
// headers are owned too, and every name with "_" is dropped.

// ownedHeaders are set by the sidecar alone, whatever the policy, or
// never forwarded (method overrides: see query.go; path overrides: see
// pathOverrideHeaders).
var ownedHeaders = append(append([]string{xfccHeader}, methodOverrideHeaders...), pathOverrideHeaders...)

// pathOverrideHeaders name another target than the request line's, and
// frameworks behind IIS and some PHP and Java stacks serve that one:
// policy would decide on /public while the app serves /admin. Like method
// overrides, they are never forwarded.
var pathOverrideHeaders = []string{"X-Original-Url", "X-Rewrite-Url", "X-Original-Uri"}

// twinHeaders lose their "_" spellings; the real spelling is either
// handled elsewhere (hop-by-hop fields) or end-to-end.
var twinHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Http2-Settings", "Content-Length",
}

// Prefixes of folded names: x-moatless-* is reserved for the sidecar,
// x-forwarded-* for the proxies in front of it.
const (
	ownedPrefix = "x-moatless-"
	twinPrefix  = "x-forwarded-"
)

// At the edge (the gateway) nothing in front of the mesh is trusted to
// have set anything: the client-address and request-ID headers a proxy
// in front of a sidecar vouches for are the edge's own to write, and so
// are Envoy's and Istio's internal headers, which Envoy too strips from
// requests arriving from outside.
var (
	edgeOwnedHeaders = []string{
		"Forwarded", "X-Real-Ip", "X-Client-Ip", "True-Client-Ip", "X-Cluster-Client-Ip",
		"X-Original-Forwarded-For", "X-Request-Id",
		// What CDNs set and apps configured for them believe (nginx's
		// real_ip_header, Cloudflare and Fastly middleware, host
		// overrides): a caller's to forge at an edge with no CDN in front.
		"Cf-Connecting-Ip", "Cf-Connecting-Ipv6", "Fastly-Client-Ip", "X-Host", "X-Http-Host-Override",
		"X-Original-Host", "X-Originating-Ip", "X-Remote-Ip", "X-Remote-Addr", "X-Proxyuser-Ip",
	}
	edgeOwnedPrefixes = []string{twinPrefix, "x-envoy-", "x-istio-"}
)

type headerRule uint8

const (
	dropAnySpelling headerRule = iota + 1
	dropUnderscored
)

// headerFilter removes, from one listener's requests under one policy
// version, the headers described above. It is built once per policy
// version and read concurrently.
type headerFilter struct {
	// exact are the canonical "-" spellings of the owned headers: every
	// name without "_" arrives canonical.
	exact []string
	// prefixes are the lower-case owned name prefixes.
	prefixes []string
	// rules holds folded names (lower case, "_" read as "-"), consulted
	// for names that contain "_".
	rules map[string]headerRule
	// anyUnderscore drops every name holding "_" (the edge).
	anyUnderscore bool
	// oddNames drops every name holding a character other than a
	// letter, a digit, "-" or "_" (the edge, as nginx's
	// ignore_invalid_headers): a CGI bridge maps them to "_", so
	// "X.Forwarded.For" would be HTTP_X_FORWARDED_FOR.
	oddNames bool
	// join are the canonical names of the headers the policies read: a
	// repeated one becomes one field, its values joined with "," as the
	// policy read them (policy.Set.RequestHeaders).
	join []string
}

// newHeaderFilter builds the filter for a listener whose RequestAuthentication
// writes output and reads tokens from tokenHeaders.
func newHeaderFilter(output, tokenHeaders []string) *headerFilter {
	return buildHeaderFilter(output, tokenHeaders, false)
}

func buildHeaderFilter(output, tokenHeaders []string, edge bool) *headerFilter {
	f := &headerFilter{rules: map[string]headerRule{}, prefixes: []string{ownedPrefix}, anyUnderscore: edge, oddNames: edge}
	own := func(h string) {
		folded := foldHeaderName(h)
		if f.rules[folded] != dropAnySpelling {
			f.rules[folded] = dropAnySpelling
			f.exact = append(f.exact, http.CanonicalHeaderKey(folded))
		}
	}
	owned := [][]string{ownedHeaders, output}
	if edge {
		owned = append(owned, edgeOwnedHeaders)
		f.prefixes = append(f.prefixes, edgeOwnedPrefixes...)
	}
	for _, list := range owned {
		for _, h := range list {
			own(h)
		}
	}
	for _, list := range [][]string{twinHeaders, tokenHeaders} {
		for _, h := range list {
			if folded := foldHeaderName(h); f.rules[folded] == 0 {
				f.rules[folded] = dropUnderscored
			}
		}
	}
	return f
}

// baseHeaderFilter is the filter of a listener without RequestAuthentication.
var baseHeaderFilter = newHeaderFilter(nil, nil)

// foldHeaderName is h as a CGI-style app compares it: lower case, "_" read
// as "-".
func foldHeaderName(h string) string {
	return strings.ToLower(strings.ReplaceAll(h, "_", "-"))
}

// strip deletes from h, in place, every header the filter refuses, in
// one pass over h's own fields, and joins the repeated fields of the
// headers policies read.
func (f *headerFilter) strip(h http.Header) {
	for k := range h {
		if f.oddNames && oddName(k) {
			delete(h, k)
		} else if strings.IndexByte(k, '_') >= 0 {
			if f.underscored(k) {
				delete(h, k)
			}
		} else if f.owned(k) {
			delete(h, k)
		}
	}
	for _, k := range f.join {
		if vs := h[k]; len(vs) > 1 {
			h[k] = []string{strings.Join(vs, ",")}
		}
	}
}

// owned reports whether k, a canonical name without "_", is an owned
// header's.
func (f *headerFilter) owned(k string) bool {
	for _, e := range f.exact {
		if k == e {
			return true
		}
	}
	for _, p := range f.prefixes {
		if len(k) >= len(p) && strings.EqualFold(k[:len(p)], p) {
			return true
		}
	}
	return false
}

// underscored reports whether k, a name holding "_", folds to a refused
// name. Folding uses a stack buffer: no allocation for names up to 64
// bytes.
func (f *headerFilter) underscored(k string) bool {
	if f.anyUnderscore {
		return true
	}
	var buf [64]byte
	b := policy.AppendCGIName(buf[:0], k)
	if f.rules[string(b)] != 0 {
		return true
	}
	for _, p := range f.prefixes {
		if len(b) >= len(p) && string(b[:len(p)]) == p {
			return true
		}
	}
	return len(b) >= len(twinPrefix) && string(b[:len(twinPrefix)]) == twinPrefix
}

// guardTrailers applies f to the trailer fields of r, which reach the app
// after the body (and which some apps merge into the headers): declared
// fields are filtered now, those the policies read dropped, and what arrives at
// the end of the body is cut down to the declared fields that remain (an
// HTTP/1.1 body may carry trailer fields it never announced). It does
// nothing for a request without trailers.
func (f *headerFilter) guardTrailers(r *http.Request) {
	if len(r.Trailer) == 0 {
		return
	}
	f.strip(r.Trailer)
	// The policies decided on the head's fields: the same name arriving
	// after the decision was never seen by them.
	for _, k := range f.join {
		delete(r.Trailer, k)
	}
	declared := make(map[string]bool, len(r.Trailer))
	for k := range r.Trailer {
		declared[k] = true
	}
	r.Body = &trailerGuard{ReadCloser: r.Body, trailer: r.Trailer, declared: declared}
}

// trailerGuard removes undeclared trailer fields once the body ends,
// before the client forwarding the request reads them.
type trailerGuard struct {
	io.ReadCloser
	trailer  http.Header
	declared map[string]bool
}

func (g *trailerGuard) Read(p []byte) (int, error) {
	n, err := g.ReadCloser.Read(p)
	if err == io.EOF {
		for k := range g.trailer {
			if !g.declared[k] {
				delete(g.trailer, k)
			}
		}
	}
	return n, err
}

// paddedValue reports whether a field value of h starts or ends with a
// space or a tab. An HTTP/1.1 parser strips that padding (RFC 9112 §5),
// so only HTTP/2 delivers it, where it makes the request malformed (RFC
// 9113 §8.2.1) and Go's server does not check: policy would match
// "admin " where the HTTP/1.1 app, stripping it, reads "admin". Such a
// request is refused (400).
func paddedValue(h http.Header) bool {
	for _, vs := range h {
		for _, v := range vs {
			if v != "" && (isSpaceOrTab(v[0]) || isSpaceOrTab(v[len(v)-1])) {
				return true
			}
		}
	}
	return false
}

func isSpaceOrTab(c byte) bool { return c == ' ' || c == '\t' }

// oddName reports whether a header name holds a character other than a
// letter, a digit, "-" or "_".
func oddName(k string) bool {
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c == '-' || c == '_' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return true
		}
	}
	return false
}

package gateway

import (
	"errors"
	"strings"
	"unicode/utf8"

	"github.com/moatless/moatless/internal/policy"
)

// Errors of checkPathMeaning: the reason in the 400's body.
var (
	errDotParams = errors.New("a dot segment with path parameters (\"..;\"): servers read it as \"..\"")
	errPathUTF8  = errors.New("the decoded path is not valid UTF-8")
)

// checkPathMeaning refuses a normalized path (policy.RequestPath.Path)
// that the upstream may read as another path than the one routes and
// policy matched, so that what was decided is what is served:
//
//   - a "." or ".." segment with path parameters ("..;", ".;x", "%2E%2E;"),
//     in every normalization mode: Tomcat, Jetty and other servlet
//     containers cut a segment's parameters off before they resolve dot
//     segments, so "/public/..;/admin" is "/admin" to them, while routes
//     and policy read a name. (The policy package refuses them already
//     in every mode but NONE.) Other path parameters pass: a path holding
//     ";" is read both ways, by the route check (routeUnambiguous), by
//     policy (a DENY applies when either reading matches, an ALLOW only
//     when both do), by the WAF and by OpenAPI validation. An encoded
//     "%3B" stays encoded in the normalized path and is decoded by those
//     servers only after the parameters are cut: it is data.
//   - percent-escapes or raw bytes that do not decode to valid UTF-8,
//     overlong forms included: "%C0%AE%C0%AE" is ".." to a decoder that
//     accepts overlong sequences (the IIS and early Java traversal), and
//     a replacement character to one that does not; either way not the
//     path policy matched.
func checkPathMeaning(path string) error {
	if strings.IndexByte(path, ';') >= 0 && dotSegmentWithParams(path) {
		return errDotParams
	}
	// Only bytes at and above 0x80 can make UTF-8 invalid; the normalized
	// path holds them percent-encoded (raw ones were encoded by the
	// normalization), so a path without "%8".."%F" escapes is ASCII.
	var buf [256]byte
	dec := buf[:0]
	high := false
	for i := 0; i < len(path); i++ {
		c := path[i]
		if c == '%' && i+2 < len(path) {
			c = unhexByte(path[i+1])<<4 | unhexByte(path[i+2])
			i += 2
		}
		high = high || c >= 0x80
		dec = append(dec, c)
	}
	if high && !utf8.Valid(dec) {
		return errPathUTF8
	}
	return nil
}

// unhexByte is the value of the hex digit c (the normalized path's
// escapes were checked by the policy package; anything else reads 0).
func unhexByte(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10
	}
	return 0
}

// dotSegmentWithParams reports whether a segment of p is "." or ".."
// once its path parameters are cut off, "%2E" read as "." (NONE leaves
// it encoded, and Tomcat decodes before it resolves).
func dotSegmentWithParams(p string) bool {
	for seg := range strings.SplitSeq(p, "/") {
		name, _, params := strings.Cut(seg, ";")
		if !params {
			continue
		}
		dots := 0
		for i := 0; i < len(name); i++ {
			switch {
			case name[i] == '.':
			case name[i] == '%' && i+2 < len(name) && name[i+1] == '2' && (name[i+2] == 'E' || name[i+2] == 'e'):
				i += 2
			default:
				dots = -1
			}
			if dots < 0 {
				break
			}
			dots++
		}
		if dots == 1 || dots == 2 {
			return true
		}
	}
	return false
}

// routeUnambiguous reports whether the route chosen for np (normalized
// with mode) is also the route of the path as apps that read it
// otherwise route it:
//
//   - Tomcat, Jetty and Spring cut path parameters off before they
//     route (paramFreePath): with routes /orders (WAF on) and /, the
//     route table reads "/orders;x/search" under / while such an app
//     serves /orders/search. A parameter that keeps the route
//     ("/orders;jsessionid=1/x") passes, and policy reads such a path
//     both ways.
//   - an app that decodes %2F and %5C before it routes (WSGI's
//     PATH_INFO, PHP front controllers, many Node and Ruby routers):
//     "/orders%2Fsearch" is one segment to the route table and falls to
//     /, while such an app serves /orders/search. Under
//     DECODE_AND_MERGE_SLASHES the path routed is already the decoded
//     one, and a path without an encoded slash has nothing to decode.
//   - Express and ASP.NET Core route ignoring case by default:
//     "/ORDERS/search" goes to / while they serve /orders/search.
//
// params is np's path without its parameters (policy.ParamFreePath), ""
// when it has none. Each reading, and the readings composed (parameters cut from the
// decoded path, case ignored in each), must select the chosen route; the
// WAF, the rate limits and the validation of a route are not stepped
// around by any of them.
func routeUnambiguous(t *routeTable, host string, chosen *route, np policy.RequestPath, params, target string, mode policy.PathNormalization) bool {
	same := func(p string) bool {
		return t.lookup(host, p) == chosen && t.lookupFold(host, p) == chosen
	}
	if t.lookupFold(host, np.Path()) != chosen || params != "" && !same(params) {
		return false
	}
	if mode == policy.NormalizeDecodeAndMergeSlashes || !hasEncodedSlash(np.Path()) {
		return true
	}
	alt, err := policy.NormalizeRequestPath(target, policy.NormalizeDecodeAndMergeSlashes)
	if err != nil || !same(alt.Path()) {
		return false
	}
	if p := policy.ParamFreePath(alt.Path()); p != "" && !same(p) {
		return false
	}
	if params == "" || !hasEncodedSlash(params) {
		return true
	}
	alt, err = policy.NormalizeRequestPath(params, policy.NormalizeDecodeAndMergeSlashes)
	return err == nil && same(alt.Path())
}

// hasEncodedSlash reports whether p holds %2F or %5C (the normalized path
// spells its escapes in upper case; lower case is checked too).
func hasEncodedSlash(p string) bool {
	for i := strings.IndexByte(p, '%'); i >= 0 && i+2 < len(p); {
		if e := p[i+1 : i+3]; strings.EqualFold(e, "2F") || strings.EqualFold(e, "5C") {
			return true
		}
		j := strings.IndexByte(p[i+1:], '%')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return false
}

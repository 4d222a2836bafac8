package gateway

import (
	"errors"
	"strings"
	"unicode/utf8"

	"github.com/moatless/moatless/internal/policy"
)

// Errors of checkPathMeaning: the reason in the 400's body.
var (
	errPathParams = errors.New("path parameters (\";\") are not accepted: servers read them differently")
	errPathUTF8   = errors.New("the decoded path is not valid UTF-8")
)

// checkPathMeaning refuses a normalized path (policy.RequestPath.Path)
// that the upstream may read as another path than the one routes and
// policy matched, so that what was decided is what is served:
//
//   - a ";" anywhere in it: Tomcat, Jetty and other servlet containers
//     cut a path parameter off every segment before they route, so
//     "/public/..;/admin" is "/admin" to them and "/admin;x/users" is
//     "/admin/users", while a policy on "/admin/*" matched neither (Spring
//     Security's StrictHttpFirewall refuses ";" by default for the same
//     reason). An encoded "%3B" stays encoded in the normalized path and
//     is decoded by those servers only after the parameters are cut: it
//     is data, and passes.
//   - percent-escapes or raw bytes that do not decode to valid UTF-8,
//     overlong forms included: "%C0%AE%C0%AE" is ".." to a decoder that
//     accepts overlong sequences (the IIS and early Java traversal), and
//     a replacement character to one that does not; either way not the
//     path policy matched.
func checkPathMeaning(path string) error {
	if strings.IndexByte(path, ';') >= 0 {
		return errPathParams
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

// routeUnambiguous reports whether the route chosen for np (normalized
// with mode) is also the route of the path as an app that decodes %2F
// and %5C before it routes reads it (WSGI's PATH_INFO, PHP front
// controllers, many Node and Ruby routers). With routes /orders (WAF on)
// and / (WAF off), "/orders%2Fsearch" is one segment to the route table
// and falls to /, while such an app serves /orders/search: the WAF, the
// rate limits and the validation of /orders would be stepped around.
// Under DECODE_AND_MERGE_SLASHES the path routed is already the decoded
// one, and a path without an encoded slash has nothing to decode.
//
// Likewise for case: with routes /orders (WAF on) and /, "/ORDERS/search"
// goes to / while Express and ASP.NET Core, which route ignoring case by
// default, serve it as /orders/search. A path whose route would differ
// under case-insensitive matching is refused too.
func routeUnambiguous(t *routeTable, host string, chosen *route, np policy.RequestPath, target string, mode policy.PathNormalization) bool {
	if t.lookupFold(host, np.Path()) != chosen {
		return false
	}
	if mode == policy.NormalizeDecodeAndMergeSlashes || !hasEncodedSlash(np.Path()) {
		return true
	}
	alt, err := policy.NormalizeRequestPath(target, policy.NormalizeDecodeAndMergeSlashes)
	if err != nil {
		return false
	}
	return t.lookup(host, alt.Path()) == chosen && t.lookupFold(host, alt.Path()) == chosen
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

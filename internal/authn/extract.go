package authn

import (
	"net/url"
	"strings"

	"github.com/moatless/moatless/internal/policy"
)

// found is one token occurrence: the text and where it was.
type found struct {
	token string
	loc   *location
}

// maxFound bounds occurrences kept per request before giving up: more
// than this many is certainly "more than one token".
const maxFound = 8

// extract collects the tokens at the given (distinct) locations. A
// location that holds more than one token (two Authorization headers, a
// repeated query parameter or cookie) is refused: such a request has no
// single meaning. An empty value is no token. The returned slice reuses
// dst.
func extract(locs []*location, req *policy.Request, dst []found) ([]found, error) {
	for _, l := range locs {
		n := 0
		var err error
		emit := func(tok string) bool {
			n++
			if n > 1 || len(dst) == maxFound {
				err = tokenErr(ErrMultipleTokens, "more than one token at "+l.describe())
				return false
			}
			dst = append(dst, found{token: tok, loc: l})
			return true
		}
		switch l.kind {
		case locHeader:
			for _, v := range req.Headers[l.name] {
				tok, ok := headerToken(v, l)
				if ok && !emit(tok) {
					break
				}
			}
		case locParam:
			scanQuery(req.Path, l.name, emit)
		case locCookie:
			for _, v := range req.Headers["Cookie"] {
				if !scanCookies(v, l.name, emit) {
					break
				}
			}
		}
		if err != nil {
			return nil, err
		}
	}
	return dst, nil
}

func (l *location) describe() string {
	switch l.kind {
	case locParam:
		return "query parameter " + quote(l.name)
	case locCookie:
		return "cookie " + quote(l.name)
	}
	return "header " + quote(l.name)
}

// headerToken takes the token out of one header value. With the default
// Authorization location the scheme "Bearer" is matched case-insensitively
// and must be followed by at least one ASCII space; any other scheme
// (Basic credentials for the application, say) is not a token. With a
// configured prefix the value must start with exactly that prefix, as
// Istio documents; a value without it carries no token for this location.
// Anything that is not a well-formed token after the prefix is caught by
// the parser and refused.
func headerToken(v string, l *location) (string, bool) {
	var rest string
	if l.bearer {
		const scheme = "Bearer"
		if len(v) <= len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) || v[len(scheme)] != ' ' {
			return "", false
		}
		rest = strings.TrimLeft(v[len(scheme):], " ")
	} else {
		var ok bool
		if rest, ok = strings.CutPrefix(v, l.prefix); !ok {
			return "", false
		}
	}
	return rest, rest != ""
}

// scanQuery calls emit with every value of parameter name in the query of
// path, decoding percent-escapes where present, until emit returns false.
// It allocates only for escaped names or values.
func scanQuery(path, name string, emit func(string) bool) {
	_, q, ok := strings.Cut(path, "?")
	if !ok {
		return
	}
	for q != "" {
		var pair string
		pair, q, _ = strings.Cut(q, "&")
		k, v, _ := strings.Cut(pair, "=")
		if strings.ContainsAny(k, "%+") {
			var err error
			if k, err = url.QueryUnescape(k); err != nil {
				continue
			}
		}
		if k != name {
			continue
		}
		if strings.ContainsAny(v, "%+") {
			dv, err := url.QueryUnescape(v)
			if err != nil {
				// Keep the raw text: the parser refuses it as malformed,
				// rather than the request passing as tokenless.
				dv = v
			}
			v = dv
		}
		if v != "" && !emit(v) {
			return
		}
	}
}

// scanCookies calls emit with every value of cookie name in one Cookie
// header value (RFC 6265 section 4.2.1), until emit returns false.
func scanCookies(header, name string, emit func(string) bool) bool {
	for header != "" {
		var part string
		part, header, _ = strings.Cut(header, ";")
		part = strings.Trim(part, " \t")
		k, v, ok := strings.Cut(part, "=")
		if !ok || k != name {
			continue
		}
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		if v != "" && !emit(v) {
			return false
		}
	}
	return true
}

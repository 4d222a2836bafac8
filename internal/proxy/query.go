package proxy

import (
	"strings"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/traffic"
)

// removeQueryParams returns q (a raw query, without "?") without the
// parameters whose name drop accepts, and whether it removed any. Names
// are decoded as an application decodes them (percent-escapes, "+" as a
// space) before drop sees them; "&" and ";" both separate parameters, as
// older Python and Java parsers split on either. The parameters kept are
// kept byte for byte, in order; q itself comes back when nothing matches.
func removeQueryParams(q string, drop func(name string) bool) (string, bool) {
	var out []byte
	removed := false
	start := 0
	for i := 0; i <= len(q); i++ {
		if i < len(q) && q[i] != '&' && q[i] != ';' {
			continue
		}
		seg := q[start:i]
		name, _, _ := strings.Cut(seg, "=")
		if seg != "" && drop(decodeQueryName(name)) {
			if !removed {
				out = append(out, q[:max(start-1, 0)]...)
				removed = true
			}
		} else if removed {
			if len(out) > 0 {
				out = append(out, q[start-1]) // the separator before seg
			}
			out = append(out, seg...)
		}
		start = i + 1
	}
	if !removed {
		return q, false
	}
	return string(out), true
}

// decodeQueryName decodes a query parameter name leniently: valid
// percent-escapes and "+" are decoded, anything else is kept.
func decodeQueryName(s string) string {
	if strings.IndexByte(s, '%') < 0 && strings.IndexByte(s, '+') < 0 {
		return s
	}
	return string(traffic.AppendQueryUnescaped(make([]byte, 0, len(s)), s))
}

func isHexDigit(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// Method overrides. Policy decides on the request's method; frameworks
// that honour an override act on another one (a POST that policy allowed
// becomes the DELETE it denies). The sidecar strips them rather than
// matching policy on the overridden method: which override an app honours,
// and when, is the app's configuration, unknown here, and a mesh caller
// can send any method it means anyway. An override carried in a form body
// (Rails', Laravel's and Spring's hidden _method field) is beyond any
// proxy's reach: such apps must write their policies for POST as for the
// methods it may stand for, or turn the override off.

// methodOverrideHeaders are dropped under every spelling (headerFilter).
var methodOverrideHeaders = []string{"X-Http-Method-Override", "X-Http-Method", "X-Method-Override"}

// isMethodOverrideParam reports whether a decoded query parameter name is
// _method as Symfony, Laravel and Express's method-override read it: the
// name itself, or the name PHP makes of it (phpParamName: leading spaces
// dropped, " " and "." turned into "_", cut at a NUL, an array named by
// what precedes a closed "["). " method" is dropped too, as before.
func isMethodOverrideParam(name string) bool {
	if len(name) == len("_method") && name[1:] == "method" {
		switch name[0] {
		case '_', ' ', '.':
			return true
		}
	}
	return strings.Contains(name, "method") && phpParamName(name) == "_method"
}

// phpParamName is the variable name PHP registers for a decoded query
// parameter name (main/php_variables.c, php_register_variable_ex): the
// C string ends at the first NUL, leading spaces are dropped, " " and "."
// become "_" up to the first "[", and a "[" closed by a later "]" starts
// an array index, so the name ends there. (An unclosed "[" becomes "_"
// with the rest kept, which can never give "_method".)
func phpParamName(name string) string {
	if i := strings.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	name = strings.TrimLeft(name, " ")
	if i := strings.IndexByte(name, '['); i >= 0 && strings.IndexByte(name[i:], ']') > 0 {
		name = name[:i]
	}
	return strings.Map(func(r rune) rune {
		if r == ' ' || r == '.' {
			return '_'
		}
		return r
	}, name)
}

// stripMethodOverride removes _method parameters from np's query,
// returning np re-normalized (the same path) when it did.
func stripMethodOverride(np policy.RequestPath) (policy.RequestPath, bool) {
	q, ok := np.Query()
	if !ok || strings.IndexByte(q, '%') < 0 && !strings.Contains(q, "method") {
		return np, false
	}
	q, removed := removeQueryParams(q, isMethodOverrideParam)
	if !removed {
		return np, false
	}
	out, err := policy.NormalizeRequestPath(np.Path()+"?"+q, np.Mode())
	if err != nil { // cannot happen: both parts were valid
		return np, false
	}
	return out, true
}

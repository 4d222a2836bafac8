package traffic

import (
	"strings"
)

// Bounds on a path template, so that a hostile caller cannot grow the
// sidecar's record table or the store with long or deep paths.
const (
	// MaxTemplateLen is the longest template kept; a longer path keeps
	// its first segments and ends in "/{**}".
	MaxTemplateLen = 256
	// MaxTemplateSegments is the deepest template kept, likewise.
	MaxTemplateSegments = 16
)

// AnySegment is the template of a path segment that varies: an ID, a
// hash, an e-mail address. It is Istio's one-segment path template
// operator, so a recommended AuthorizationPolicy can use a template as
// it is.
const AnySegment = "{*}"

// PathTemplate returns the template of a request path (no query; the
// sidecar passes the path its policy matched): each segment that looks
// like an identifier (all digits, a UUID, a long hex string, a long token
// mixing letters and digits, anything with an "@") becomes "{*}", so that
// /orders/42 and /orders/43 are one edge, and an e-mail address in a path
// never reaches the record. '{', '}' and '*' in a segment are
// percent-encoded, so no caller can make a literal segment read as a
// template operator. The result is bounded by MaxTemplateLen and
// MaxTemplateSegments; an empty path is "/".
//
// A path that needs no change is returned as is, without allocating: the
// sidecar calls this on every recorded request.
func PathTemplate(path string) string {
	if path == "" {
		return "/"
	}
	if len(path) <= MaxTemplateLen && !needsTemplate(path) {
		return path
	}
	var b strings.Builder
	b.Grow(min(len(path), MaxTemplateLen) + 8)
	rest := strings.TrimPrefix(path, "/")
	for segs := 1; ; segs++ {
		seg, tail, more := strings.Cut(rest, "/")
		out := seg
		if isIDSegment(seg) {
			out = AnySegment
		} else if strings.ContainsAny(seg, "{}*") {
			out = escapeOperators(seg)
		}
		if segs > MaxTemplateSegments || b.Len()+1+len(out) > MaxTemplateLen-len("/{**}") {
			b.WriteString("/{**}")
			return b.String()
		}
		b.WriteByte('/')
		b.WriteString(out)
		if !more {
			return b.String()
		}
		rest = tail
	}
}

// needsTemplate reports whether PathTemplate would change path (short
// enough already).
func needsTemplate(path string) bool {
	if path[0] != '/' {
		return true
	}
	rest := path[1:]
	for segs := 1; ; segs++ {
		seg, tail, more := strings.Cut(rest, "/")
		if segs > MaxTemplateSegments || isIDSegment(seg) || strings.ContainsAny(seg, "{}*") {
			return true
		}
		if !more {
			return false
		}
		rest = tail
	}
}

func escapeOperators(seg string) string {
	return strings.NewReplacer("{", "%7B", "}", "%7D", "*", "%2A").Replace(seg)
}

// isIDSegment reports whether a path segment looks like a value rather
// than a name.
func isIDSegment(s string) bool {
	if s == "" {
		return false
	}
	if strings.IndexByte(s, '@') >= 0 || strings.Contains(s, "%40") {
		return true // an e-mail address, or part of one
	}
	digits, letters, hex, other := 0, 0, 0, 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			digits++
			hex++
		case c >= 'a' && c <= 'f', c >= 'A' && c <= 'F':
			letters++
			hex++
		case c >= 'g' && c <= 'z', c >= 'G' && c <= 'Z':
			letters++
		case c == '-' || c == '_' || c == '.' || c == '~' || c == ':' || c == '=':
			other++
		default:
			other++
		}
	}
	switch {
	case digits == len(s):
		return true // 42, 2024
	case isUUID(s):
		return true
	case hex == len(s) && len(s) >= 16 && digits > 0:
		return true // object IDs, digests
	case len(s) >= 20 && digits > 0 && letters > 0 && other*4 <= len(s):
		return true // base64url tokens, ULIDs, prefixed IDs
	case len(s) >= 6 && digits*2 > len(s) && letters+digits+other == len(s):
		return true // ord-123456, 2024-06-01, inv_0042317
	}
	return false
}

// isUUID reports whether s is 8-4-4-4-12 hex digits.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < 36; i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
				return false
			}
		}
	}
	return true
}

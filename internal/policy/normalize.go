package policy

import (
	"errors"
	"fmt"
	"strings"
	"unsafe"
)

// PathNormalization is how request paths are normalized before paths and
// notPaths match, Istio's meshConfig.pathNormalization. The zero value is
// NormalizeBase, Istio's default.
type PathNormalization uint8

const (
	// NormalizeBase: decode percent-encoded unreserved characters
	// (ALPHA, DIGIT, "-", ".", "_", "~"), turn "\" into "/", resolve "."
	// and ".." segments as RFC 3986 section 5.2.4 says, upper-case the hex
	// digits of the escapes that remain, and percent-encode spaces and
	// bytes above 0x7F. %2F and %5C stay encoded.
	NormalizeBase PathNormalization = iota
	// NormalizeNone: only the query and fragment are removed. Istio
	// warns that this lets "/a/../admin" bypass a policy on "/admin".
	NormalizeNone
	// NormalizeMergeSlashes: BASE, then runs of "/" become one.
	NormalizeMergeSlashes
	// NormalizeDecodeAndMergeSlashes: %2F and %5C are decoded first (to
	// "/" and "\"), then MERGE_SLASHES. The strictest option.
	NormalizeDecodeAndMergeSlashes
)

func (n PathNormalization) String() string {
	switch n {
	case NormalizeNone:
		return "NONE"
	case NormalizeMergeSlashes:
		return "MERGE_SLASHES"
	case NormalizeDecodeAndMergeSlashes:
		return "DECODE_AND_MERGE_SLASHES"
	default:
		return "BASE"
	}
}

// ParsePathNormalization reads Istio's names: NONE, BASE, MERGE_SLASHES,
// DECODE_AND_MERGE_SLASHES ("" is BASE).
func ParsePathNormalization(s string) (PathNormalization, error) {
	switch strings.ToUpper(s) {
	case "", "BASE", "DEFAULT":
		return NormalizeBase, nil
	case "NONE":
		return NormalizeNone, nil
	case "MERGE_SLASHES":
		return NormalizeMergeSlashes, nil
	case "DECODE_AND_MERGE_SLASHES":
		return NormalizeDecodeAndMergeSlashes, nil
	}
	return 0, fmt.Errorf("policy: unknown path normalization %q: want NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES", s)
}

// ErrInvalidPath is a request path that Istio refuses outright with HTTP
// 400: one holding a NUL (raw or %00) or a control character, or not
// starting with "/".
var ErrInvalidPath = errors.New("invalid request path")

// maxPathBuffer is the stack buffer a decision normalizes into; longer
// paths still work but allocate.
const maxPathBuffer = 512

// NormalizePath returns path as authorization policies see it under mode:
// query and fragment removed, then normalized. The proxy should forward
// this same path to the application, as Istio does, so that what was
// authorized is what is served. Errors wrap ErrInvalidPath: answer 400.
func NormalizePath(path string, mode PathNormalization) (string, error) {
	var buf [maxPathBuffer]byte
	s, err := normalizePath(buf[:0], path, mode)
	if err != nil {
		return "", err
	}
	return strings.Clone(s), nil
}

// normalizePath normalizes into buf, returning a string that may alias buf
// (or path itself when nothing changes): the caller must not keep it past
// buf's life. It allocates only when the path outgrows buf.
func normalizePath(buf []byte, path string, mode PathNormalization) (string, error) {
	if path == "" || path[0] == '?' || path[0] == '#' {
		return "/", nil
	}
	if path[0] != '/' {
		return "", fmt.Errorf("%w: must start with \"/\"", ErrInvalidPath)
	}
	// One scan: cut the query and fragment, refuse what Istio refuses, and
	// see whether anything needs decoding, converting, resolving or merging.
	clean, pct := true, false
scan:
	for i := 1; i < len(path); i++ {
		c := path[i]
		switch {
		case c == '?' || c == '#':
			path = path[:i]
			break scan
		case c < 0x20 || c == 0x7f:
			return "", fmt.Errorf("%w: control character 0x%02x", ErrInvalidPath, c)
		case c == '%':
			clean, pct = false, true
		case c == '\\' || c == ' ' || c >= 0x80:
			clean = false
		case c == '.' && path[i-1] == '/':
			clean = false
		case c == '/' && path[i-1] == '/':
			clean = false
		}
	}
	if pct && strings.Contains(path, "%00") {
		return "", fmt.Errorf("%w: encoded NUL (%%00)", ErrInvalidPath)
	}
	if clean || mode == NormalizeNone {
		return path, nil
	}

	// Pass 1: decode and canonicalize characters into buf.
	b := buf[:0]
	for i := 0; i < len(path); i++ {
		c := path[i]
		switch {
		case c == '%' && i+2 < len(path) && isHex(path[i+1]) && isHex(path[i+2]):
			d := unhex(path[i+1])<<4 | unhex(path[i+2])
			switch {
			case isUnreserved(d):
				b = append(b, d)
			case mode == NormalizeDecodeAndMergeSlashes && d == '/':
				b = append(b, '/')
			case mode == NormalizeDecodeAndMergeSlashes && d == '\\':
				b = append(b, '/') // decoded, then converted as a raw backslash is
			default:
				b = append(b, '%', upperHex(path[i+1]), upperHex(path[i+2]))
			}
			i += 2
		case c == '\\':
			b = append(b, '/')
		case c == ' ' || c >= 0x80:
			b = append(b, '%', hexDigits[c>>4], hexDigits[c&0xf])
		default:
			b = append(b, c)
		}
	}
	// Pass 2: remove dot segments in place (the output never outgrows the input).
	b = removeDotSegments(b)
	// Pass 3: merge slashes.
	if mode == NormalizeMergeSlashes || mode == NormalizeDecodeAndMergeSlashes {
		w := 0
		for r := 0; r < len(b); r++ {
			if b[r] == '/' && w > 0 && b[w-1] == '/' {
				continue
			}
			b[w] = b[r]
			w++
		}
		b = b[:w]
	}
	if len(b) == 0 {
		return "/", nil
	}
	return unsafe.String(unsafe.SliceData(b), len(b)), nil
}

// removeDotSegments applies RFC 3986 section 5.2.4 to an absolute path.
func removeDotSegments(p []byte) []byte {
	w := 0
	for r := 0; r < len(p); {
		// p[r] == '/': the segment runs to the next '/'.
		end := r + 1
		for end < len(p) && p[end] != '/' {
			end++
		}
		seg := p[r+1 : end]
		last := end == len(p)
		switch {
		case len(seg) == 1 && seg[0] == '.':
			if last {
				p[w] = '/'
				w++
			}
		case len(seg) == 2 && seg[0] == '.' && seg[1] == '.':
			// Drop the last output segment.
			for w > 0 {
				w--
				if p[w] == '/' {
					break
				}
			}
			if last {
				p[w] = '/'
				w++
			}
		default:
			w += copy(p[w:], p[r:end])
		}
		r = end
	}
	return p[:w]
}

const hexDigits = "0123456789ABCDEF"

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

func upperHex(c byte) byte {
	if c >= 'a' && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

// isUnreserved: RFC 3986 unreserved characters, the ones Envoy's path
// normalization decodes.
func isUnreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// RequestPath is a request path normalized once for one mode: the path a
// proxy forwards and, set as Request.NormalizedPath, the path the engine
// matches, so that what was authorized is what is served and the path is
// normalized once per request. Build it with NormalizeRequestPath; the
// zero value holds no path.
type RequestPath struct {
	path    string // normalized; a substring of the raw path when unchanged
	mode    PathNormalization
	changed bool
	ok      bool
}

// NormalizeRequestPath is NormalizePath for a proxy's request target. When
// path (query and fragment aside) is already in normal form it does not
// allocate and Changed reports false: the proxy forwards the target
// untouched. Otherwise Path is the normalized path, which the proxy
// forwards in place of the original. Errors wrap ErrInvalidPath: answer
// 400.
func NormalizeRequestPath(path string, mode PathNormalization) (RequestPath, error) {
	var buf [maxPathBuffer]byte
	s, err := normalizePath(buf[:0], path, mode)
	if err != nil {
		return RequestPath{}, err
	}
	if len(s) <= len(path) && path[:len(s)] == s && (len(s) == len(path) || path[len(s)] == '?' || path[len(s)] == '#') {
		return RequestPath{path: path[:len(s)], mode: mode, ok: true}, nil
	}
	return RequestPath{path: strings.Clone(s), mode: mode, changed: true, ok: true}, nil
}

// Path is the normalized path, without query or fragment ("" for the zero
// RequestPath).
func (p RequestPath) Path() string { return p.path }

// Changed reports whether normalization changed the path, that is whether
// a proxy must forward Path in place of the request target.
func (p RequestPath) Changed() bool { return p.changed }

// Mode is the normalization the path went through.
func (p RequestPath) Mode() PathNormalization { return p.mode }

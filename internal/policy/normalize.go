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

// ErrInvalidPath is a request target that is refused outright with HTTP
// 400 rather than decided on: one holding a fragment ("#", which a request
// target never has, RFC 9112 §3.2), a NUL (raw or %00), a control
// character or a malformed percent-escape, or not starting with "/".
var ErrInvalidPath = errors.New("invalid request path")

// maxPathBuffer is the stack buffer a decision normalizes into; longer
// paths still work but allocate.
const maxPathBuffer = 512

// NormalizePath returns path as authorization policies see it under mode:
// query removed, then normalized. The proxy forwards this same path to the
// application (see NormalizeRequestPath), so that what was authorized is
// what is served. Errors wrap ErrInvalidPath: answer 400.
func NormalizePath(path string, mode PathNormalization) (string, error) {
	var buf [maxPathBuffer]byte
	s, err := normalizePath(buf[:0], path, mode)
	if err != nil {
		return "", err
	}
	return strings.Clone(s), nil
}

// pathRaw marks the bytes that may stand unescaped in a normalized path:
// RFC 3986 pchar (unreserved, sub-delims, ":" and "@") and "/". Every
// other byte is percent-encoded, in every mode, so that the path policy
// matches is a valid request target that any client forwards byte for
// byte ('%' introduces an escape and is handled apart).
var pathRaw = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "0123456789-._~!$&'()*+,;=:@/" {
		t[c] = true
	}
	return t
}()

// normalizePath normalizes into buf, returning a string that may alias buf
// (or path itself when nothing changes): the caller must not keep it past
// buf's life. It allocates only when the path outgrows buf. The query, if
// any, is checked (no fragment, no control character) but not returned.
func normalizePath(buf []byte, path string, mode PathNormalization) (string, error) {
	if path == "" || path[0] == '?' {
		return "/", checkQuery(path)
	}
	if path[0] != '/' {
		return "", fmt.Errorf("%w: must start with \"/\"", ErrInvalidPath)
	}
	// One scan: find the query, refuse what is refused, and see whether
	// anything needs encoding, decoding, converting, resolving or merging.
	clean := true
	for i := 1; i < len(path); i++ {
		c := path[i]
		if pathRaw[c] {
			if c == '.' && path[i-1] == '/' || c == '/' && path[i-1] == '/' {
				clean = false
			}
			continue
		}
		switch {
		case c == '?':
			if err := checkQuery(path[i:]); err != nil {
				return "", err
			}
			path = path[:i]
		case c == '#':
			return "", errFragment
		case c < 0x20 || c == 0x7f:
			return "", fmt.Errorf("%w: control character 0x%02x", ErrInvalidPath, c)
		case c == '%':
			if i+2 >= len(path) || !isHex(path[i+1]) || !isHex(path[i+2]) {
				return "", fmt.Errorf("%w: malformed percent-escape", ErrInvalidPath)
			}
			if path[i+1] == '0' && path[i+2] == '0' {
				return "", fmt.Errorf("%w: encoded NUL (%%00)", ErrInvalidPath)
			}
			clean = false
			i += 2
			continue
		default: // a byte that must be escaped: space, '\', '"', 0x80 and up, ...
			clean = false
			continue
		}
		break
	}
	if clean || mode == NormalizeNone && !needsEscape(path) {
		return path, nil
	}

	// Pass 1: decode and canonicalize characters into buf.
	b := buf[:0]
	for i := 0; i < len(path); i++ {
		c := path[i]
		switch {
		case c == '%': // a valid escape: checked above
			if mode == NormalizeNone {
				b = append(b, path[i:i+3]...)
				i += 2
				continue
			}
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
		case c == '\\' && mode != NormalizeNone:
			b = append(b, '/')
		case !pathRaw[c]:
			b = append(b, '%', hexDigits[c>>4], hexDigits[c&0xf])
		default:
			b = append(b, c)
		}
	}
	if mode != NormalizeNone {
		// Pass 2: remove dot segments in place (the output never outgrows the input).
		b = removeDotSegments(b)
	}
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
	out := unsafe.String(unsafe.SliceData(b), len(b))
	if (mode == NormalizeBase || mode == NormalizeMergeSlashes) && dotSegmentBehindEscapedSlash(out) {
		return "", errEscapedSlashDots
	}
	if mode != NormalizeNone && dotSegmentWithParams(out) {
		return "", errDotSegmentParams
	}
	return out, nil
}

var errDotSegmentParams = fmt.Errorf("%w: a \".\" or \"..\" segment with path parameters (\"..;\"), which Tomcat, Jetty and Spring resolve as a dot segment", ErrInvalidPath)

var errEscapedSlashDots = fmt.Errorf("%w: a dot segment next to an encoded slash (%%2F or %%5C); use DECODE_AND_MERGE_SLASHES to have such paths decoded and resolved", ErrInvalidPath)

var errFragment = fmt.Errorf("%w: a request target has no fragment (\"#\", RFC 9112 section 3.2)", ErrInvalidPath)

// needsEscape reports whether a path (already checked by normalizePath)
// holds a byte that must be percent-encoded.
func needsEscape(path string) bool {
	for i := 0; i < len(path); i++ {
		if c := path[i]; !pathRaw[c] && c != '%' {
			return true
		}
	}
	return false
}

// checkQuery refuses a query ("?..." or "") holding a fragment or a
// control character: the query is forwarded, never matched, but it is
// part of the request target all the same.
func checkQuery(q string) error {
	for i := 0; i < len(q); i++ {
		switch c := q[i]; {
		case c == '#':
			return errFragment
		case c < 0x20 || c == 0x7f:
			return fmt.Errorf("%w: control character 0x%02x in the query", ErrInvalidPath, c)
		}
	}
	return nil
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

// RequestPath is a request target normalized once for one mode: the
// path the engine matches (set as Request.NormalizedPath) and the target
// a proxy forwards, from one computation, so that what was authorized is
// what is served: Target is Path, then the query when the request has
// one. Build it with NormalizeRequestPath; the zero value holds no path.
type RequestPath struct {
	target  string // what to forward; the raw target itself when unchanged
	pathLen int    // target[:pathLen] is the normalized path
	mode    PathNormalization
	changed bool
	ok      bool
}

// NormalizeRequestPath normalizes a proxy's request target (origin-form,
// RFC 9112 §3.2.1: "/path?query"). The path is normalized as NormalizePath
// does; the query is forwarded with the same meaning but never matched,
// its bytes that may not appear in a request target (space, '"', '<',
// '\', 0x80 and up, ...) percent-encoded. When the target is already in
// that form it does not allocate, Target is the target itself and Changed
// reports false. Errors wrap ErrInvalidPath: answer 400 — among them a
// target holding "#", which NormalizePath refuses too.
func NormalizeRequestPath(target string, mode PathNormalization) (RequestPath, error) {
	if target == "" || target[0] != '/' {
		return RequestPath{}, fmt.Errorf("%w: must start with \"/\"", ErrInvalidPath)
	}
	var buf [maxPathBuffer]byte
	p, err := normalizePath(buf[:0], target, mode)
	if err != nil {
		return RequestPath{}, err
	}
	rawPath, query, hasQuery := target, "", false
	if i := strings.IndexByte(target, '?'); i >= 0 {
		rawPath, query, hasQuery = target[:i], target[i+1:], true
	}
	qs := queryEscapes(query)
	if p == rawPath && qs == 0 {
		return RequestPath{target: target, pathLen: len(p), mode: mode, ok: true}, nil
	}
	n := len(p)
	if hasQuery {
		n += 1 + len(query) + 2*qs
	}
	b := make([]byte, 0, n)
	b = append(b, p...)
	if hasQuery {
		b = append(b, '?')
		for i := 0; i < len(query); i++ {
			if c := query[i]; !queryRaw(c) {
				b = append(b, '%', hexDigits[c>>4], hexDigits[c&0xf])
			} else {
				b = append(b, c)
			}
		}
	}
	return RequestPath{target: unsafe.String(unsafe.SliceData(b), len(b)), pathLen: len(p), mode: mode, changed: true, ok: true}, nil
}

// queryRaw: the bytes that stand unescaped in a forwarded query, RFC 3986
// query characters plus '%' (a malformed escape in a query is the app's to
// judge, and harmless to carry).
func queryRaw(c byte) bool { return pathRaw[c] || c == '?' || c == '%' }

// queryEscapes counts the bytes of q that queryRaw refuses.
func queryEscapes(q string) int {
	n := 0
	for i := 0; i < len(q); i++ {
		if !queryRaw(q[i]) {
			n++
		}
	}
	return n
}

// Path is the normalized path, without query ("" for the zero
// RequestPath).
func (p RequestPath) Path() string { return p.target[:p.pathLen] }

// Target is the request target to forward: Path, then "?" and the query
// when the request had one.
func (p RequestPath) Target() string { return p.target }

// Query is the query to forward, without the "?", and whether the target
// has one (an empty query after "?" is kept).
func (p RequestPath) Query() (string, bool) {
	if len(p.target) == p.pathLen {
		return "", false
	}
	return p.target[p.pathLen+1:], true
}

// Changed reports whether Target differs from the received target, that
// is whether a proxy must forward Target in place of it.
func (p RequestPath) Changed() bool { return p.changed }

// Mode is the normalization the path went through.
func (p RequestPath) Mode() PathNormalization { return p.mode }

// dotSegmentBehindEscapedSlash reports whether p, a path BASE or
// MERGE_SLASHES normalized, holds a "." or ".." segment once %2F and %5C
// are read as separators. These modes keep %2F and %5C encoded, as Istio
// does, so "/api/x%2F..%2F..%2Finternal" is one segment to the policy; an
// app that decodes before it resolves dot segments (Python's http.server,
// many static-file handlers) serves /internal. The dot segments between
// real slashes are already resolved, so any found here sits against an
// encoded separator: the request is refused (400), since no policy
// decision can be sure which path the app will serve. A %2F elsewhere
// ("/files/a%2Fb") is left alone.
func dotSegmentBehindEscapedSlash(p string) bool {
	if strings.IndexByte(p, '%') < 0 {
		return false
	}
	return dotSegment(p, false)
}

// dotSegment reports whether p has a "." or ".." segment (withParams: one
// carrying path parameters, "..;x"), with "/", %2F and %5C (either case)
// all read as separators. (A plain function, not one taking a callback:
// p may alias normalizePath's stack buffer, which must not escape.)
func dotSegment(p string, withParams bool) bool {
	start := 0
	for i := 0; i <= len(p); i++ {
		sep := 0
		switch {
		case i == len(p) || p[i] == '/':
			sep = 1
		case p[i] == '%' && i+2 < len(p) && (p[i+1] == '2' && (p[i+2] == 'F' || p[i+2] == 'f') || p[i+1] == '5' && (p[i+2] == 'C' || p[i+2] == 'c')):
			sep = 3
		default:
			continue
		}
		seg := p[start:i]
		if withParams {
			name, _, params := strings.Cut(seg, ";")
			if params && (name == "." || name == "..") {
				return true
			}
		} else if seg == "." || seg == ".." {
			return true
		}
		start = i + sep
		i += sep - 1
	}
	return false
}

// dotSegmentWithParams reports whether p holds a "." or ".." segment
// carrying path parameters ("..;", "..;x=1", ".;"), with %2F and %5C read
// as separators too. RFC 3986 (and so the policy) reads "..;" as a name;
// Tomcat, Jetty and Spring strip a segment's parameters before they
// resolve dot segments, so "/public/..;/admin" is /admin to them: the
// request is refused (400), as a dot segment against an encoded slash is.
// Parameters on other segments ("/cart;jsessionid=1") are left alone.
func dotSegmentWithParams(p string) bool {
	if strings.IndexByte(p, ';') < 0 {
		return false
	}
	return dotSegment(p, true)
}

// ParamFreePath is paramFreePath for the gateway's route table, which
// must read a path with ";" the way policy does.
func ParamFreePath(p string) string { return paramFreePath(p) }

// paramFreePath is a normalized path as Tomcat, Jetty and Spring route
// it: the path parameters of every segment (";jsessionid=1", ";") removed
// and the slashes left side by side merged, so "/admin;x" and "/;x/admin"
// are /admin. It is "" when p has no ";" (the common case: nothing is
// allocated) or reads the same. Dot segments with parameters never get
// here: normalizePath refuses them.
func paramFreePath(p string) string {
	if strings.IndexByte(p, ';') < 0 {
		return ""
	}
	var buf [maxPathBuffer]byte
	b := buf[:0] // one allocation, the result's, for usual lengths
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == ';':
			for i+1 < len(p) && p[i+1] != '/' {
				i++
			}
		case c == '/' && len(b) > 0 && b[len(b)-1] == '/':
		default:
			b = append(b, c)
		}
	}
	if len(b) == 0 {
		b = append(b, '/')
	}
	if string(b) == p {
		return ""
	}
	return string(b)
}

// decodedSlashPath is a path BASE or MERGE_SLASHES normalized as an app
// that decodes %2F and %5C before it routes reads it (WSGI's PATH_INFO,
// PHP front controllers): the path a proxy forwards, normalized again
// as DECODE_AND_MERGE_SLASHES would, so "/admin%2Fusers" and
// "/admin%5C%2Fusers" are /admin/users. These modes refuse a dot segment
// next to an encoded slash, so decoding reveals none. It is "" when p
// holds no %2F or %5C (nothing is allocated), or under NONE and
// DECODE_AND_MERGE_SLASHES (the one has no normalization to follow, the
// other decoded them already).
func decodedSlashPath(p string, mode PathNormalization) (string, error) {
	if mode != NormalizeBase && mode != NormalizeMergeSlashes || strings.IndexByte(p, '%') < 0 ||
		!strings.Contains(p, "%2F") && !strings.Contains(p, "%5C") {
		return "", nil
	}
	var buf [maxPathBuffer]byte
	d, err := normalizePath(buf[:0], p, NormalizeDecodeAndMergeSlashes)
	if err != nil || d == p {
		return "", err
	}
	// A copy: d may alias buf (or, to the compiler, p, which may alias
	// authorize's stack buffer).
	return strings.Clone(d), nil
}

// mergedSlashPath is a path normalized under a mode that keeps runs of
// "/" (BASE, NONE) as an app that merges them reads it: Express, Gin,
// Spring, nginx's merge_slashes and most routers serve "//admin" as
// /admin, which a rule on "/admin*" does not match. It is "" when p has
// no "//" (nothing is allocated). paramFreePath and decodedSlashPath
// merge slashes already.
func mergedSlashPath(p string) string {
	i := strings.Index(p, "//")
	if i < 0 {
		return ""
	}
	var buf [maxPathBuffer]byte
	b := append(buf[:0], p[:i+1]...) // one allocation, the result's, for usual lengths
	for j := i + 1; j < len(p); j++ {
		if p[j] == '/' && b[len(b)-1] == '/' {
			continue
		}
		b = append(b, p[j])
	}
	return string(b)
}

// Reading kinds: how an alternate reading of a path was made from it.
const (
	readParams  uint8 = 1 << iota // path parameters dropped (paramFreePath)
	readSlashes                   // %2F and %5C decoded (decodedSlashPath)
	readMerged                    // runs of "/" merged (mergedSlashPath)
)

// maxReadings bounds the alternate readings of a path: parameters
// dropped, slashes decoded, both in either order, and slashes merged.
const maxReadings = 5

// pathReadings sets alts to the readings of p, normalized under mode,
// that differ from it, each distinct, with how each was made in kinds,
// and returns how many: p as Tomcat, Jetty and Spring route it
// (paramFreePath), as apps that decode %2F and %5C route it
// (decodedSlashPath), both ways composed in either order (an app may
// cut path parameters before or after decoding: "/admin;x%2Fusers" is
// /admin or /admin/users), and as apps that merge slashes route it
// (mergedSlashPath: "//admin" is /admin; the others merge slashes
// too). A path without ";", without %2F or %5C and without "//" has
// none, and nothing is allocated.
func pathReadings(p string, mode PathNormalization, alts *[maxReadings]string, kinds *[maxReadings]uint8) (int, error) {
	n := 0
	add := func(r string, kind uint8) {
		if r == "" || r == p {
			return
		}
		for _, a := range alts[:n] {
			if a == r {
				return
			}
		}
		alts[n], kinds[n] = r, kind
		n++
	}
	params := paramFreePath(p)
	slashes, err := decodedSlashPath(p, mode)
	if err != nil {
		return 0, err
	}
	add(params, readParams)
	add(slashes, readSlashes)
	add(mergedSlashPath(p), readMerged)
	if params != "" && slashes != "" {
		add(paramFreePath(slashes), readParams|readSlashes)
		ps, err := decodedSlashPath(params, mode)
		if err != nil {
			return 0, err
		}
		add(ps, readParams|readSlashes)
	}
	return n, nil
}

// hasUpper reports whether s holds an ASCII upper-case letter.
func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return true
		}
	}
	return false
}

// upperLetter reports whether the path p holds an ASCII upper-case
// letter outside its percent-escapes (whose hex digits are upper case
// after normalization, and mean the same in either case).
func upperLetter(p string) bool {
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c == '%':
			i += 2
		case 'A' <= c && c <= 'Z':
			return true
		}
	}
	return false
}

// asciiEqualFold reports whether a and b are equal ignoring ASCII case
// (not Unicode's folding: "K" is not the Kelvin sign here).
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if x, y := a[i], b[i]; x != y && asciiLower(x) != asciiLower(y) {
			return false
		}
	}
	return true
}

func asciiLower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// asciiToLower is s with its ASCII upper-case letters lower-cased.
func asciiToLower(s string) string {
	if !hasUpper(s) {
		return s
	}
	b := []byte(s)
	for i, c := range b {
		b[i] = asciiLower(c)
	}
	return string(b)
}

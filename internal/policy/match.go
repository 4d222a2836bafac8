package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// patKind is Istio's four string matches.
type patKind uint8

const (
	patExact    patKind = iota // "abc" matches "abc"
	patPrefix                  // "abc*" matches "abc" and "abcd"
	patSuffix                  // "*abc" matches "abc" and "xabc"
	patPresence                // "*" matches any non-empty value
)

type strPat struct {
	kind patKind
	s    string
}

// parsePattern reads an Istio string match. The rules are Istio's
// (StringMatcherWithPrefix): "*" alone is presence, a leading "*" makes a
// suffix match, a trailing "*" a prefix match; a "*" anywhere else is a
// literal character.
func parsePattern(v string) strPat {
	switch {
	case v == "*":
		return strPat{kind: patPresence}
	case strings.HasPrefix(v, "*"):
		return strPat{kind: patSuffix, s: v[1:]}
	case strings.HasSuffix(v, "*"):
		return strPat{kind: patPrefix, s: v[:len(v)-1]}
	}
	return strPat{kind: patExact, s: v}
}

func (p strPat) match(v string) bool {
	switch p.kind {
	case patExact:
		return v == p.s
	case patPrefix:
		return strings.HasPrefix(v, p.s)
	case patSuffix:
		return strings.HasSuffix(v, p.s)
	default:
		return v != ""
	}
}

func (p strPat) matchFold(v string) bool {
	switch p.kind {
	case patExact:
		return strings.EqualFold(v, p.s)
	case patPrefix:
		return len(v) >= len(p.s) && strings.EqualFold(v[:len(p.s)], p.s)
	case patSuffix:
		return len(v) >= len(p.s) && strings.EqualFold(v[len(v)-len(p.s):], p.s)
	default:
		return v != ""
	}
}

// matchASCIIFold is match ignoring ASCII case, for paths.
func (p strPat) matchASCIIFold(v string) bool {
	switch p.kind {
	case patExact:
		return asciiEqualFold(v, p.s)
	case patPrefix:
		return len(v) >= len(p.s) && asciiEqualFold(v[:len(p.s)], p.s)
	case patSuffix:
		return len(v) >= len(p.s) && asciiEqualFold(v[len(v)-len(p.s):], p.s)
	default:
		return v != ""
	}
}

// exactMapMin is the list length from which exact values go in a map.
const exactMapMin = 8

// strSet is a compiled list of values: it matches when any value does.
// Long lists of exact values are looked up in a map, so a policy naming a
// thousand principals costs one lookup. Matching is case-sensitive (hosts,
// the one case-insensitive attribute, have hostSet).
type strSet struct {
	pats  []strPat            // non-exact patterns, and exact ones when few
	exact map[string]struct{} // exact values when many
	n     int                 // number of values
}

func newStrSet(values []string) strSet {
	s := strSet{n: len(values)}
	exacts := 0
	for _, v := range values {
		if parsePattern(v).kind == patExact {
			exacts++
		}
	}
	for _, v := range values {
		p := parsePattern(v)
		if p.kind == patExact && exacts >= exactMapMin {
			if s.exact == nil {
				s.exact = make(map[string]struct{}, exacts)
			}
			s.exact[p.s] = struct{}{}
			continue
		}
		s.pats = append(s.pats, p)
	}
	return s
}

func (s *strSet) match(v string) bool {
	if s.exact != nil {
		if _, ok := s.exact[v]; ok {
			return true
		}
	}
	for i := range s.pats {
		if s.pats[i].match(v) {
			return true
		}
	}
	return false
}

// matchASCIIFold is match ignoring ASCII case: a :path condition's
// values against the path as an app that routes ignoring case reads it.
// Exact values in the map are compared one by one: only that reading of
// a long exact list pays for it.
func (s *strSet) matchASCIIFold(v string) bool {
	for k := range s.exact {
		if asciiEqualFold(v, k) {
			return true
		}
	}
	for i := range s.pats {
		if s.pats[i].matchASCIIFold(v) {
			return true
		}
	}
	return false
}

// hasUpper reports whether a value holds an ASCII upper-case letter.
func (s *strSet) hasUpper() bool {
	for k := range s.exact {
		if hasUpper(k) {
			return true
		}
	}
	for i := range s.pats {
		if hasUpper(s.pats[i].s) {
			return true
		}
	}
	return false
}

// lookupFold looks v up lower-cased without allocating for usual lengths.
func lookupFold(m map[string]struct{}, v string) bool {
	var buf [256]byte
	if len(v) > len(buf) {
		_, ok := m[strings.ToLower(v)]
		return ok
	}
	b := buf[:len(v)]
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[i] = c
	}
	_, ok := m[string(b)] // the compiler does not allocate for this conversion
	return ok
}

// ipSet is a compiled list of IPs and CIDRs.
type ipSet struct {
	prefixes []netip.Prefix
}

// parseIPOrCIDR reads "10.1.2.3", "10.1.0.0/16" or IPv6 forms, as Istio's
// ValidateIPs does. A CIDR with host bits set is accepted and masked, as
// Envoy treats it.
func parseIPOrCIDR(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("bad CIDR range %q", v)
		}
		if p.Addr().Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("bad CIDR range %q: zones are not allowed", v)
		}
		return netip.PrefixFrom(p.Addr().Unmap(), unmappedBits(p)).Masked(), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("bad IP address %q", v)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func unmappedBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return max(p.Bits()-96, 0)
	}
	return p.Bits()
}

func (s *ipSet) match(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	a = a.Unmap()
	for _, p := range s.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// portSet is a compiled list of ports.
type portSet struct {
	ports []uint16
}

func parsePort(v string) (uint16, error) {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n > 65535 {
		return 0, fmt.Errorf("bad port %q: want a number from 0 to 65535", v)
	}
	return uint16(n), nil
}

func (s *portSet) match(port int) bool {
	if port < 0 || port > 65535 {
		return false
	}
	for _, p := range s.ports {
		if int(p) == port {
			return true
		}
	}
	return false
}

// pathTemplate is an Istio path template ("/foo/{*}/bar/{**}"), matched as
// Envoy's uri_template matcher does: "{*}" is one non-empty path segment
// of RFC 3986 pchar characters without "*" (templateChar), "{**}" zero or more
// such characters and "/"; "{**}" is the last operator, and only literals
// may follow it.
type pathTemplate struct {
	raw    string
	before []tmplSeg // segments before {**}, or all segments when !hasAny
	hasAny bool
	after  string // the text after "{**}", starting with "/" (or "")
}

type tmplSeg struct {
	one bool   // "{*}"
	lit string // literal segment otherwise ("" only as the trailing empty segment)
}

func isPathTemplate(v string) bool {
	return strings.Contains(v, "{*}") || strings.Contains(v, "{**}")
}

// templateChar: the characters Envoy's uri_template matcher lets "{*}"
// and "{**}" match and a literal segment hold (kLiteral in Envoy's
// uri_template_internal.cc, and Istio's IsValidLiteral): RFC 3986 pchar
// without "*", with "=". Matching fewer than Envoy would let a path such
// as "/admin/k=v" past a DENY rule on "/admin/{*}" that Istio enforces.
func templateChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("-._~%!$&'()+,;:@=", c) >= 0
}

// IsTemplateLiteral reports whether seg may be a literal segment of a
// path template (the characters of Istio's IsValidLiteral, nothing
// else), so that a generated template such as "/orders/{*}/items"
// compiles.
func IsTemplateLiteral(seg string) bool {
	for i := 0; i < len(seg); i++ {
		if !templateChar(seg[i]) {
			return false
		}
	}
	return true
}

func parsePathTemplate(v string) (*pathTemplate, error) {
	if !strings.HasPrefix(v, "/") {
		return nil, fmt.Errorf("invalid path template %q: must start with \"/\"", v)
	}
	t := &pathTemplate{raw: v}
	segs := strings.Split(v[1:], "/")
	anyAt := -1
	for i, s := range segs {
		last := i == len(segs)-1
		switch {
		case s == "{*}":
			if anyAt >= 0 {
				return nil, fmt.Errorf("invalid path template %q: {**} must be the last operator", v)
			}
			t.before = append(t.before, tmplSeg{one: true})
		case s == "{**}":
			if anyAt >= 0 {
				return nil, fmt.Errorf("invalid path template %q: {**} must be the last operator", v)
			}
			anyAt = i
		case s == "" && last && i > 0:
			// A trailing "/": the path must end with "/".
			if anyAt < 0 {
				t.before = append(t.before, tmplSeg{})
			}
		case s == "":
			return nil, fmt.Errorf("invalid path template %q: empty path segment", v)
		default:
			for j := 0; j < len(s); j++ {
				if !templateChar(s[j]) {
					return nil, fmt.Errorf("invalid path template %q: %q is not allowed in a template segment (only {*} or {**} alone, or letters, digits and -._~%%!$&'()+,;:@=)", v, s[j])
				}
			}
			if anyAt < 0 {
				t.before = append(t.before, tmplSeg{lit: s})
			}
		}
	}
	if anyAt >= 0 {
		t.hasAny = true
		if anyAt+1 < len(segs) {
			t.after = "/" + strings.Join(segs[anyAt+1:], "/")
		}
	}
	return t, nil
}

// match reports whether path matches the template; fold: ignoring ASCII
// case in its literal parts.
func (t *pathTemplate) match(path string, fold bool) bool {
	if len(path) == 0 || path[0] != '/' {
		return false
	}
	rest := path[1:]
	for i, seg := range t.before {
		// Take one segment from rest.
		end := strings.IndexByte(rest, '/')
		cur, more := rest, false
		if end >= 0 {
			cur, more = rest[:end], true
		}
		lastSeg := i == len(t.before)-1
		switch {
		case seg.one:
			if cur == "" {
				return false
			}
			for j := 0; j < len(cur); j++ {
				if !templateChar(cur[j]) {
					return false
				}
			}
		default:
			if cur != seg.lit && (!fold || !asciiEqualFold(cur, seg.lit)) {
				return false
			}
		}
		if lastSeg && !t.hasAny {
			return !more
		}
		if !more {
			// The pattern wants more: another segment, or "/" before {**}.
			return false
		}
		rest = rest[end+1:]
	}
	if !t.hasAny {
		// Only reachable with no segments at all, which parse never builds.
		return rest == ""
	}
	// rest is what {**} and the literal tail must cover.
	if len(rest) < len(t.after) {
		return false
	}
	if tail := rest[len(rest)-len(t.after):]; tail != t.after && (!fold || !asciiEqualFold(tail, t.after)) {
		return false
	}
	mid := rest[:len(rest)-len(t.after)]
	for j := 0; j < len(mid); j++ {
		if c := mid[j]; c != '/' && !templateChar(c) {
			return false
		}
	}
	return true
}

// pathSet matches paths: string patterns and templates.
type pathSet struct {
	strs      strSet
	templates []*pathTemplate
	// lower holds strs.exact's values lower-cased (ASCII), for matching
	// ignoring case; nil when strs.exact is.
	lower map[string]struct{}
	upper bool // some value holds an upper-case letter
}

func newPathSet(plain []string, templates []*pathTemplate) pathSet {
	s := pathSet{strs: newStrSet(plain), templates: templates}
	if s.strs.exact != nil {
		s.lower = make(map[string]struct{}, len(s.strs.exact))
		for v := range s.strs.exact {
			s.lower[asciiToLower(v)] = struct{}{}
		}
	}
	for _, v := range plain {
		s.upper = s.upper || hasUpper(v)
	}
	for _, t := range templates {
		s.upper = s.upper || hasUpper(t.raw)
	}
	return s
}

// match reports whether path matches a value; fold: ignoring ASCII case,
// as Express, ASP.NET Core and IIS route.
func (s *pathSet) match(path string, fold bool) bool {
	if !fold {
		if s.strs.match(path) {
			return true
		}
	} else {
		if s.lower != nil && lookupFold(s.lower, path) {
			return true
		}
		for i := range s.strs.pats {
			if s.strs.pats[i].matchASCIIFold(path) {
				return true
			}
		}
	}
	for _, t := range s.templates {
		if t.match(path, fold) {
			return true
		}
	}
	return false
}

// nsRegexMeta are the characters Istio's namespace regular expression
// would read as operators. "*" is the supported wildcard; a value with
// any of these is refused rather than matched differently from Istio.
const nsRegexMeta = `\.+?()[]{}|^$`

// nsSet is a compiled namespaces list (from.source.namespaces, or the
// values of a source.namespace condition), matched exactly as Istio does
// (pilot/pkg/security/authz/model, srcNamespaceGenerator): value v
// becomes the regular expression .*/ns/<v>/.* with every "*" in v read
// as .*, and it must match the whole peer principal, "spiffe://"
// included. Two consequences a first-"/ns/"-segment reading gets wrong:
// a value matches any "/ns/<v>/" of the principal, not only the first
// ("td/ns/dev/sa/x/ns/prod/y" is in prod, so a DENY on prod applies),
// and the namespace must be followed by "/" ("td/ns/prod" with nothing
// after is in no namespace, so an ALLOW on prod does not admit it).
//
// Values without "*" or "/" (namespace names) are whole segments: the
// principal matches when a segment after some "/ns/" and before the next
// "/" equals one (looked up in a map when there are many). The others are
// globs: their pieces between "*"s must be found in order. No regular
// expression runs and nothing allocates.
type nsSet struct {
	segs  strSet     // exact namespace names
	globs [][]string // pieces of "/ns/<v>/" split at "*", in order
}

func newNSSet(values []string) nsSet {
	var s nsSet
	var segs []string
	for _, v := range values {
		if !strings.ContainsAny(v, "*/") {
			segs = append(segs, v)
			continue
		}
		var pieces []string
		for i, pc := range strings.Split("/ns/"+v+"/", "*") {
			if pc != "" || i == 0 {
				pieces = append(pieces, pc)
			}
		}
		s.globs = append(s.globs, pieces)
	}
	s.segs = newStrSet(segs)
	return s
}

// match reports whether principal p (with or without "spiffe://") is in
// one of the namespaces. "" (plaintext) is in none.
func (s *nsSet) match(p string) bool {
	p = strings.TrimPrefix(p, "spiffe://")
	if p == "" {
		return false
	}
	if s.segs.n > 0 {
		// Walk every "/ns/" of "/"+p: the scheme's last "/" precedes p,
		// so "ns/" at the very start counts.
		rest, atSlash := p, true
		for {
			if atSlash && strings.HasPrefix(rest, "ns/") {
				rest = rest[3:]
			} else if i := strings.Index(rest, "/ns/"); i >= 0 {
				rest = rest[i+4:]
			} else {
				break
			}
			// rest follows a "/": "ns/" at its start is the next candidate.
			atSlash = true
			if seg, _, ok := strings.Cut(rest, "/"); ok && s.segs.match(seg) {
				return true
			}
		}
	}
	for _, g := range s.globs {
		if globIn(p, g) {
			return true
		}
	}
	return false
}

// globIn reports whether "/"+p contains pieces in order, without overlap:
// the regular expression .*<piece0>.*<piece1>...<pieceN>.* matching all
// of it. Taking each piece at its earliest position leaves the most room
// for the rest, so the first failure is final. pieces[0] starts with "/".
func globIn(p string, pieces []string) bool {
	first := pieces[0]
	var end int
	if strings.HasPrefix(p, first[1:]) {
		end = len(first) - 1
	} else if i := strings.Index(p, first); i >= 0 {
		end = i + len(first)
	} else {
		return false
	}
	for _, pc := range pieces[1:] {
		i := strings.Index(p[end:], pc)
		if i < 0 {
			return false
		}
		end += i + len(pc)
	}
	return true
}

// saSet is a compiled serviceAccounts list (from.source.serviceAccounts,
// or the values of a source.serviceAccount condition), matched exactly as
// Istio does (pilot/pkg/security/authz/model, srcServiceAccountGenerator):
// value ns/name becomes the regular expression
//
//	spiffe://.+/ns/<ns>/(.+/|)sa/<name>(/.+)?
//
// which must match the whole peer principal, "spiffe://" included. Read
// as text, the principal after "spiffe://" is
//
//	X "/ns/" ns "/" Y "sa/" name Z
//
// with X at least one character, Y empty or at least one character and a
// "/", and Z empty or "/" and at least one character, none of X, Y, Z
// holding a newline (the regex's "." does not match one). So the account
// counts wherever the principal has it, not only in its first /ns/ and
// /sa/ segments ("td/ns/prod/sa/web/ns/tools/sa/scanner" is
// tools/scanner as well as prod/web, so a DENY on tools/scanner applies),
// and shapes the regex refuses are no account: a trailing "/"
// ("td/ns/prod/sa/web/"), a single empty segment before "sa"
// ("td/ns/prod//sa/web"), a name that only starts with the value
// ("web-admin").
//
// Values are literal (the loader refuses regular-expression characters),
// so no regular expression runs and nothing allocates.
type saSet struct {
	accts []saPattern
}

// saPattern is one account as the pieces of its regular expression.
type saPattern struct {
	nsSeg   string // "/ns/<ns>/"
	sa      string // "sa/<name>", directly after nsSeg (Y empty)
	slashSA string // "/sa/<name>", after more text (Y = ".+/")
}

func newSASet(accts []serviceAccount) saSet {
	s := saSet{accts: make([]saPattern, len(accts))}
	for i, a := range accts {
		s.accts[i] = saPattern{nsSeg: "/ns/" + a.ns + "/", sa: "sa/" + a.name, slashSA: "/sa/" + a.name}
	}
	return s
}

// match reports whether principal p (with or without "spiffe://") is one
// of the accounts. "" (plaintext) is none.
func (s *saSet) match(p string) bool {
	p = strings.TrimPrefix(p, "spiffe://")
	// Values hold no newline (the loader refuses control characters), so
	// a newline anywhere would have to be inside X, Y or Z, where the
	// regex's "." cannot match it.
	if p == "" || strings.IndexByte(p, '\n') >= 0 {
		return false
	}
	for i := range s.accts {
		if s.accts[i].match(p) {
			return true
		}
	}
	return false
}

// match reports whether p (without "spiffe://", not empty, no newline)
// matches the account's regular expression.
func (a *saPattern) match(p string) bool {
	// X is at least one character: look from p[1:]. The earliest
	// "/ns/<ns>/" is the only one to try: a later one ends at least three
	// bytes further on, just after a "/", so every "sa/<name>" that could
	// follow it (Y empty or not) can follow the earliest one with Y not
	// empty.
	i := strings.Index(p[1:], a.nsSeg)
	if i < 0 {
		return false
	}
	rest := p[1+i+len(a.nsSeg):]
	if strings.HasPrefix(rest, a.sa) && saTail(rest[len(a.sa):]) {
		return true // Y empty
	}
	// Y = ".+/": "/sa/<name>" at rest[1:] or later. Occurrences may
	// overlap ("/sa/sa/sa"), so step one byte past each.
	for off := 1; off < len(rest); {
		j := strings.Index(rest[off:], a.slashSA)
		if j < 0 {
			return false
		}
		if saTail(rest[off+j+len(a.slashSA):]) {
			return true
		}
		off += j + 1
	}
	return false
}

// saTail reports whether z is a valid Z: empty, or "/" and at least one
// more character.
func saTail(z string) bool {
	return z == "" || (len(z) >= 2 && z[0] == '/')
}

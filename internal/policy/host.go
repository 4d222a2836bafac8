package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Host matching (to.operation.hosts and notHosts).
//
// Istio turns each value into a case-insensitive string match on the raw
// :authority header, so a policy on "admin.example.com" does not see
// "admin.example.com:8080" or "admin.example.com." — names that every
// router, Istio's own VirtualService included, treats as that host. Its
// security bulletin ISTIO-SECURITY-2021-008 calls this out and asks users
// to list "host" and "host:*" both. Moatless matches the name a Host
// designates instead, so the short form is safe in a DENY and works in an
// ALLOW:
//
//   - the request's Host is parsed as an RFC 3986 authority: a name (a
//     reg-name or an IPv4 address, one trailing dot removed) or an IPv6
//     literal in brackets, and an optional port (digits, leading zeros
//     allowed, at most 65535; "host:" is "host"). Anything else is not an
//     authority and the request is refused as a bad request, whatever the
//     policies say, as a path Istio refuses outright is (ErrInvalidHost);
//   - a value without a port ("admin.example.com", "*.example.com",
//     "api.*") matches the name on any port or none; "host:8443" only
//     that port; "host:*" any port that is present (Istio's documented
//     form keeps its meaning); "*" any Host at all;
//   - names compare case-insensitively; a trailing dot in a value is the
//     same name without it; IPv6 literals compare as addresses
//     ("[0:0::1]" is "[::1]"); a wildcard is a leading or trailing "*" of
//     the name, as in Istio, and not allowed in an IPv6 literal.

// ErrInvalidHost is a request Host that is not an RFC 3986 authority
// (host and optional port). Decide denies such a request as a bad request
// and a proxy should answer it with 400.
var ErrInvalidHost = errors.New("invalid request host")

var (
	errHostEmptyName  = fmt.Errorf("%w: no host name", ErrInvalidHost)
	errHostPort       = fmt.Errorf("%w: the port is not a number from 0 to 65535", ErrInvalidHost)
	errHostChar       = fmt.Errorf("%w: a character that no host name holds (percent-encoding, a space, a control character or a non-ASCII byte included)", ErrInvalidHost)
	errHostEmptyLabel = fmt.Errorf("%w: an empty label (a leading dot, \"..\", or more than one trailing dot)", ErrInvalidHost)
	errHostIPv6       = fmt.Errorf("%w: not an IPv6 address in brackets", ErrInvalidHost)
	errHostBareIPv6   = fmt.Errorf("%w: an IPv6 address must be in brackets, as in [::1]:8080", ErrInvalidHost)
)

// Port specifications of a host value besides a port number.
const (
	portAny     = -1 // no port in the value: the name on any port, or none
	portPresent = -2 // "host:*": the name on any port that is present
)

// requestHost is a request's Host read as an authority.
type requestHost struct {
	// name is the host name with one trailing dot removed, in the case it
	// was sent (matching folds case); for an IPv6 literal, the bracketed
	// text as sent.
	name string
	ip   netip.Addr // an IPv6 literal's address, else invalid
	port int32      // -1 without a port
}

// CheckRequestHost reports whether h, a Host header or :authority, is an
// authority Decide can match; its errors wrap ErrInvalidHost. "" (no Host)
// is valid: the request has no host. A proxy calls it to answer 400 before
// deciding, as it does for paths with NormalizeRequestPath.
func CheckRequestHost(h string) error {
	if h == "" {
		return nil
	}
	_, err := parseRequestHost(h)
	return err
}

// parseRequestHost reads a Host ("" is an error: the caller treats no
// Host as absent). It does not allocate. A name (the common case) is read
// in one pass: it runs on every request.
func parseRequestHost(h string) (requestHost, error) {
	if h == "" {
		return requestHost{}, errHostEmptyName
	}
	if h[0] == '[' {
		name, port, err := splitAuthority(h)
		if err != nil {
			return requestHost{}, err
		}
		ip, err := parseIPv6Literal(name)
		if err != nil {
			return requestHost{}, err
		}
		return requestHost{name: name, ip: ip, port: port}, nil
	}
	name, port := h, int32(-1)
	prev := byte(0)
	for i := 0; i < len(h); i++ {
		c := h[i]
		if c == ':' {
			if strings.IndexByte(h[i+1:], ':') >= 0 {
				return requestHost{}, errHostBareIPv6
			}
			var err error
			if port, err = parseHostPort(h[i+1:]); err != nil {
				return requestHost{}, err
			}
			name = h[:i]
			break
		}
		if !hostNameChars[c] {
			return requestHost{}, errHostChar
		}
		if c == '.' && prev == '.' {
			return requestHost{}, errHostEmptyLabel
		}
		prev = c
	}
	// Now only a leading dot and the trailing one are left to check.
	switch {
	case name == "" || name == ".":
		return requestHost{}, errHostEmptyName
	case name[0] == '.':
		return requestHost{}, errHostEmptyLabel
	}
	return requestHost{name: strings.TrimSuffix(name, "."), port: port}, nil
}

// splitAuthority cuts "name[:port]" (name possibly an IPv6 literal in
// brackets) at its port. The port is -1 when absent or empty (RFC 3986
// §6.2.3: "host:" is "host"). The name is not validated beyond being
// non-empty and, when bracketed, closed.
func splitAuthority(s string) (name string, port int32, err error) {
	name, port = s, -1
	var rest string
	if s != "" && s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", 0, errHostIPv6
		}
		name, rest = s[:end+1], s[end+1:]
		if rest != "" && rest[0] != ':' {
			return "", 0, errHostIPv6
		}
	} else if i := strings.IndexByte(s, ':'); i >= 0 {
		if strings.IndexByte(s[i+1:], ':') >= 0 {
			return "", 0, errHostBareIPv6
		}
		name, rest = s[:i], s[i:]
	}
	if rest != "" {
		if port, err = parseHostPort(rest[1:]); err != nil {
			return "", 0, err
		}
	}
	if name == "" {
		return "", 0, errHostEmptyName
	}
	return name, port, nil
}

// parseHostPort reads a port of any number of digits (RFC 3986's *DIGIT;
// leading zeros do not change the number), -1 for "".
func parseHostPort(p string) (int32, error) {
	if p == "" {
		return -1, nil
	}
	n := int32(0)
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c < '0' || c > '9' {
			return 0, errHostPort
		}
		n = n*10 + int32(c-'0')
		if n > 65535 {
			return 0, errHostPort
		}
	}
	return n, nil
}

// parseIPv6Literal reads "[address]": an IPv6 address without a zone
// (RFC 3986's IP-literal; IPvFuture is refused).
func parseIPv6Literal(s string) (netip.Addr, error) {
	if len(s) < 2 || s[0] != '[' || s[len(s)-1] != ']' {
		return netip.Addr{}, errHostIPv6
	}
	a, err := netip.ParseAddr(s[1 : len(s)-1])
	if err != nil || !a.Is6() || a.Zone() != "" {
		return netip.Addr{}, errHostIPv6
	}
	return a, nil
}

// hostNameChars is RFC 3986's reg-name alphabet (unreserved and
// sub-delims) without pct-encoded: a percent-encoded name could be decoded
// into another name behind the proxy, and no client sends one. A table:
// every request's Host is checked byte by byte.
var hostNameChars = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range []byte("-._~!$&'()*+,;=") {
		t[c] = true
	}
	return t
}()

// checkHostName validates a name whose trailing dot, if any, is already
// removed: not empty, only reg-name characters, and no empty label (so no
// leading dot, no "..", no second trailing dot), which a lenient server
// could read as the name without it.
func checkHostName(name string) error {
	if name == "" {
		return errHostEmptyName
	}
	prev := byte('.')
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !hostNameChars[c] {
			return errHostChar
		}
		if c == '.' && prev == '.' {
			return errHostEmptyLabel
		}
		prev = c
	}
	if prev == '.' {
		return errHostEmptyLabel
	}
	return nil
}

// hostPat is one compiled hosts value.
type hostPat struct {
	name strPat     // lower-cased; patPresence for "*"; unused when ip is valid
	ip   netip.Addr // an IPv6 literal, matched exactly
	port int32      // portAny, portPresent or a port number
}

// parseHostValue compiles one hosts or notHosts value (see the comment at
// the top of this file).
func parseHostValue(v string) (hostPat, error) {
	if v == "*" {
		return hostPat{name: strPat{kind: patPresence}, port: portAny}, nil
	}
	s := strings.ToLower(v)
	p := hostPat{port: portAny}
	if strings.HasSuffix(s, ":*") {
		s, p.port = s[:len(s)-2], portPresent
		if strings.HasSuffix(s, ":*") || s == "" {
			return hostPat{}, fmt.Errorf("%q is not a host: write the name, then :* for any port", v)
		}
	}
	name, port, err := splitAuthority(s)
	if err != nil {
		return hostPat{}, fmt.Errorf("%q is not a host: %s", v, strings.TrimPrefix(err.Error(), ErrInvalidHost.Error()+": "))
	}
	if port >= 0 {
		if p.port == portPresent {
			return hostPat{}, fmt.Errorf("%q is not a host: two ports", v)
		}
		p.port = port
	} else if s != name && p.port == portAny {
		// "host:" names no port; say so rather than guess.
		return hostPat{}, fmt.Errorf("%q has an empty port: leave out the \":\" to match every port, or write host:* or host:PORT", v)
	}
	bad := func(why string) (hostPat, error) {
		return hostPat{}, fmt.Errorf("%q is not a host name: %s; a value is a host name, optionally with :PORT or :*, with * only as its first or last character (*.example.com, api.*)", v, why)
	}
	if name[0] == '[' {
		if strings.Contains(name, "*") {
			return bad("wildcards are not supported in an IPv6 address")
		}
		ip, err := parseIPv6Literal(name)
		if err != nil {
			return bad("not an IPv6 address in brackets")
		}
		p.ip = ip
		return p, nil
	}
	// The part that must be a name, with the wildcard replaced by a label
	// so that the checks below see what a matching request would hold.
	var sample string
	switch {
	case name == "*":
		p.name = strPat{kind: patPresence}
		return p, nil
	case strings.HasPrefix(name, "*"):
		p.name = strPat{kind: patSuffix, s: strings.TrimSuffix(name[1:], ".")}
		sample = "x" + p.name.s
	case strings.HasSuffix(name, "*"):
		p.name = strPat{kind: patPrefix, s: name[:len(name)-1]}
		sample = p.name.s + "x"
	default:
		p.name = strPat{kind: patExact, s: strings.TrimSuffix(name, ".")}
		sample = p.name.s
	}
	if strings.Contains(sample, "*") {
		return bad("* is a wildcard only as the first or last character")
	}
	if err := checkHostName(sample); err != nil {
		if errors.Is(err, errHostEmptyLabel) {
			return bad("an empty label")
		}
		return bad("a character that is not allowed in a host name (percent-encoding, \"/\", \"@\", spaces included)")
	}
	return p, nil
}

func (p *hostPat) match(h *requestHost) bool {
	switch p.port {
	case portAny:
	case portPresent:
		if h.port < 0 {
			return false
		}
	default:
		if h.port != p.port {
			return false
		}
	}
	if p.ip.IsValid() {
		return h.ip == p.ip
	}
	return p.name.matchFold(h.name)
}

// hostSet is a compiled hosts or notHosts list: it matches when any value
// does. Many exact names without a port are looked up in a map.
type hostSet struct {
	pats  []hostPat
	exact map[string]struct{} // lower-cased names of values without a port
}

func newHostSet(values []string, at fieldPath) (hostSet, *fieldError) {
	var s hostSet
	pats := make([]hostPat, 0, len(values))
	exacts := 0
	for i, v := range values {
		p, err := parseHostValue(v)
		if err != nil {
			return hostSet{}, errAt(at.index(i), "%v", err)
		}
		if p.name.kind == patExact && !p.ip.IsValid() && p.port == portAny {
			exacts++
		}
		pats = append(pats, p)
	}
	for _, p := range pats {
		if exacts >= exactMapMin && p.name.kind == patExact && !p.ip.IsValid() && p.port == portAny {
			if s.exact == nil {
				s.exact = make(map[string]struct{}, exacts)
			}
			s.exact[p.name.s] = struct{}{}
			continue
		}
		s.pats = append(s.pats, p)
	}
	return s, nil
}

func (s *hostSet) match(h *requestHost) bool {
	if s.exact != nil && !h.ip.IsValid() && lookupFold(s.exact, h.name) {
		return true
	}
	for i := range s.pats {
		if s.pats[i].match(h) {
			return true
		}
	}
	return false
}

package gateway

import (
	"net/http"
	"net/netip"
	"strings"
)

// spoofable are the request headers that carry identity, routing or
// method decisions downstream. A caller's copy of any of them is removed
// before anything else reads the request: only the gateway (and, past it,
// the sidecars) may set them.
var spoofable = map[string]bool{
	"X-Forwarded-Client-Cert":  true, // the mesh's caller identity
	"X-Forwarded-For":          true, // rebuilt from the client address
	"Forwarded":                true,
	"X-Real-Ip":                true,
	"X-Client-Ip":              true,
	"True-Client-Ip":           true,
	"X-Cluster-Client-Ip":      true,
	"X-Original-Forwarded-For": true,
	"X-Original-Url":           true, // path overrides some frameworks honour
	"X-Rewrite-Url":            true,
	"X-Original-Uri":           true,
	"X-Http-Method-Override":   true, // method overrides: POST read as DELETE
	"X-Http-Method":            true,
	"X-Method-Override":        true,
	"X-Request-Id":             true, // replaced by the gateway's own
	"X-B3-Traceid":             false,
}

// reservedPrefixes are header-name prefixes a caller may never send, in
// any letter case: the mesh's own headers and the forwarding family.
var reservedPrefixes = []string{"x-moatless-", "x-forwarded-", "x-envoy-", "x-istio-"}

// shapeHeaders removes from h what a client must not send: headers whose
// name holds '_' (their '-' twin may be the one an app trusts; nginx
// drops them too), spoofable identity and override headers, reserved
// prefixes, and the claim headers RequestAuthentication writes (strip).
// Hop-by-hop headers are removed by the caller first.
func shapeHeaders(h http.Header, strip []string) {
	for k := range h {
		// Compared canonically: net/http canonicalizes the names it
		// parses, but a name it leaves alone must not slip by on case.
		if spoofable[http.CanonicalHeaderKey(k)] || strings.IndexByte(k, '_') >= 0 {
			delete(h, k)
			continue
		}
		for _, p := range reservedPrefixes {
			if len(k) >= len(p) && strings.EqualFold(k[:len(p)], p) {
				delete(h, k)
				break
			}
		}
	}
	for _, k := range strip {
		h.Del(k)
		delete(h, k)
	}
}

// maxForwardedHops bounds how many X-Forwarded-For entries are read.
const maxForwardedHops = 32

// clientAddr is the address every check uses. A peer outside trusted is
// the client. A trusted peer (a load balancer in front) is believed about
// the hops before it: X-Forwarded-For is read right to left, skipping
// trusted addresses, and the first untrusted one is the client. A
// malformed entry ends the walk at the last good hop: what comes before
// it was written by nobody we trust.
func clientAddr(peer netip.Addr, xff []string, trusted []netip.Prefix) netip.Addr {
	if !inPrefixes(peer, trusted) || len(xff) == 0 {
		return peer
	}
	var entries []string
	for _, v := range xff {
		entries = append(entries, strings.Split(v, ",")...)
	}
	ip := peer
	for i, n := len(entries)-1, 0; i >= 0 && n < maxForwardedHops; i, n = i-1, n+1 {
		a, ok := parseHop(strings.TrimSpace(entries[i]))
		if !ok {
			return ip
		}
		ip = a
		if !inPrefixes(a, trusted) {
			return a
		}
	}
	return ip
}

// parseHop reads one X-Forwarded-For entry: an address, optionally with a
// port ("1.2.3.4:80", "[::1]:80").
func parseHop(s string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		return a.Unmap(), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil && ap.Addr().Zone() == "" {
		return ap.Addr().Unmap(), true
	}
	return netip.Addr{}, false
}

func inPrefixes(a netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ipAllowed applies the IP rules: deny wins; an empty allow list allows
// every address not denied.
func ipAllowed(a netip.Addr, allow, deny []netip.Prefix) bool {
	if inPrefixes(a, deny) {
		return false
	}
	return len(allow) == 0 || inPrefixes(a, allow)
}

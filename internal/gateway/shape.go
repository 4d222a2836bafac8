package gateway

import (
	"net/netip"
	"strings"
)

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

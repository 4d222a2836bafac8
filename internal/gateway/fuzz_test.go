package gateway

import (
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/proxy"
)

// FuzzClientAddr: whatever X-Forwarded-For says, the client address is
// the peer or an address a trusted hop vouched for, never one from before
// an untrusted hop, and never a trusted hop while a well-formed entry
// left of it remains within the hop limit.
func FuzzClientAddr(f *testing.F) {
	for _, s := range []string{"203.0.113.7", "203.0.113.7, 10.0.0.1", "garbage, 10.0.0.1", "[::1]:80, 10.1.1.1", ",,,", "::ffff:10.0.0.1", "fe80::1%eth0",
		"198.51.100.9, 203.0.113.7, 10.0.0.1", "10.0.0.2, 10.0.0.1", "203.0.113.7, garbage, 127.0.0.1", strings.Repeat("10.0.0.3, ", 40) + "10.0.0.1"} {
		f.Add(s, true)
		f.Add(s, false)
	}
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.0/8")}
	f.Fuzz(func(t *testing.T, xff string, peerTrusted bool) {
		peer := netip.MustParseAddr("198.51.100.1")
		if peerTrusted {
			peer = netip.MustParseAddr("127.0.0.1")
		}
		got := clientAddr(peer, []string{xff}, trusted)
		if !peerTrusted && got != peer {
			t.Fatalf("untrusted peer: client %s from XFF %q", got, xff)
		}
		if !peerTrusted {
			return
		}
		// The walk stopped at some position: the peer (len(entries)) or an
		// entry equal to the client. Every entry right of it is a
		// well-formed trusted hop, it is within the hop limit, and it
		// stopped there because the client is untrusted, or the next entry
		// left is malformed or missing, or the limit was reached.
		entries := strings.Split(xff, ",")
		stoppedAt := func(at int) bool {
			for _, e := range entries[at+min(1, len(entries)-at):] {
				if a, ok := parseHop(strings.TrimSpace(e)); !ok || !inPrefixes(a, trusted) {
					return false
				}
			}
			if len(entries)-at > maxForwardedHops {
				return false
			}
			if inPrefixes(got, trusted) && at > 0 && len(entries)-at < maxForwardedHops {
				_, ok := parseHop(strings.TrimSpace(entries[at-1]))
				return !ok
			}
			return true
		}
		if got == peer && stoppedAt(len(entries)) {
			return
		}
		for i, e := range entries {
			if a, ok := parseHop(strings.TrimSpace(e)); ok && a == got && stoppedAt(i) {
				return
			}
		}
		t.Fatalf("client %s: not the peer nor an entry of XFF %q where a right-to-left walk over trusted hops stops", got, xff)
	})
}

// FuzzShapeHeaders: no header a caller may not send survives the edge's
// filter, whatever its spelling.
func FuzzShapeHeaders(f *testing.F) {
	for _, s := range []string{"X-Forwarded-Client-Cert", "x_forwarded_client_cert", "X-MOATLESS-User", "x-http-method-override", "X-Forwarded-Host", "Forwarded", "X-Envoy-Peer", "X-Custom", "X-Original-Url", "X-Request-Id"} {
		f.Add(s)
	}
	refused := []string{"x-forwarded-client-cert", "forwarded", "x-real-ip", "x-client-ip", "true-client-ip", "x-cluster-client-ip",
		"x-original-forwarded-for", "x-original-url", "x-rewrite-url", "x-original-uri", "x-http-method-override", "x-http-method",
		"x-method-override", "x-request-id", "x-user"}
	prefixes := []string{"x-moatless-", "x-forwarded-", "x-envoy-", "x-istio-"}
	filter := proxy.NewEdgeHeaderFilter([]string{"X-User"}, []string{"Authorization"}, nil)
	f.Fuzz(func(t *testing.T, name string) {
		h := http.Header{}
		// Names as net/http's parsers hand them over: canonical.
		h[http.CanonicalHeaderKey(name)] = []string{"v"}
		filter.Strip(h)
		for k := range h {
			l := strings.ToLower(k)
			if strings.Contains(k, "_") || slices.Contains(refused, l) {
				t.Fatalf("%q survived", k)
			}
			for _, p := range prefixes {
				if strings.HasPrefix(l, p) {
					t.Fatalf("%q survived", k)
				}
			}
		}
	})
}

// FuzzCheckPathMeaning: a path the check accepts holds no dot segment
// with path parameters (a servlet container would resolve it) and
// decodes to valid UTF-8, so a servlet container or a lax decoder reads
// the path policy matched; its parameter-free reading (what such a
// container routes, and what routes and policy read too) holds no ";"
// and is already normalized, so nothing in it resolves further. A
// normalized path the policy package produces from any target, under
// MERGE_SLASHES or NONE, is either refused by it or by the check, or is
// such a path.
func FuzzCheckPathMeaning(f *testing.F) {
	for _, s := range []string{"/orders/1", "/orders/..;/admin", "/a;b", "/a%3Bb", "/caf%C3%A9", "/%C0%AE%C0%AE/x", "/\xff", "/%E2%82", "/%F0%9F%98%80", "/x?y=;",
		"/orders;jsessionid=1/x", "/;x/admin", "/a/.;/b", "/a/%2e%2E;x/b", "/a/...;/b", "/a;b/..", "/a/;/../b"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, target string, none bool) {
		mode := policy.NormalizeMergeSlashes
		if none {
			mode = policy.NormalizeNone
		}
		np, err := policy.NormalizeRequestPath(target, mode)
		if err != nil {
			return
		}
		p := np.Path()
		if checkPathMeaning(p) != nil {
			return
		}
		for seg := range strings.SplitSeq(p, "/") {
			if name, _, ok := strings.Cut(seg, ";"); ok {
				if d, _ := url.PathUnescape(name); d == "." || d == ".." {
					t.Fatalf("%q accepted with the dot segment %q", p, seg)
				}
			}
		}
		dec, err := url.PathUnescape(p)
		if err != nil {
			t.Fatalf("normalized path %q does not unescape: %v", p, err)
		}
		if !utf8.ValidString(dec) {
			t.Fatalf("%q accepted, decodes to invalid UTF-8 %q", p, dec)
		}
		pf := policy.ParamFreePath(p)
		if pf == "" {
			return
		}
		if strings.Contains(pf, ";") || !strings.HasPrefix(pf, "/") || strings.Contains(pf, "//") {
			t.Fatalf("%q reads as %q without its parameters", p, pf)
		}
		if again, err := policy.NormalizePath(pf, mode); !none && (err != nil || again != pf) {
			t.Fatalf("%q reads as %q without its parameters, which normalizes to %q (%v)", p, pf, again, err)
		}
	})
}

func TestHasEncodedSlash(t *testing.T) {
	for _, tt := range []struct {
		p    string
		want bool
	}{
		{"/orders/1", false}, {"/a%2Fb", true}, {"/a%2fb", true}, {"/a%5Cb", true}, {"/a%20b%2F", true},
		{"/a%252F", false}, {"/a%2", false}, {"/%", false}, {"/a%20b%41", false}, {"/%2%2F", true},
	} {
		if got := hasEncodedSlash(tt.p); got != tt.want {
			t.Errorf("hasEncodedSlash(%q) = %v, want %v", tt.p, got, tt.want)
		}
	}
}

// TestRouteLookupFold: the case-insensitive reading of the route table
// picks the route an app routing without case would, whole segments only,
// longest prefix first, and agrees with lookup on paths that differ only
// in case from a prefix spelled in upper case.
func TestRouteLookupFold(t *testing.T) {
	mk := func(name, host, prefix string) *route { return &route{name: name, host: host, prefix: prefix} }
	tab := newRouteTable([]*route{mk("all", "", "/"), mk("orders", "", "/orders"), mk("api", "", "/API"), mk("admin", "", "/orders/admin/"), mk("h", "api.example.com", "/v1")})
	for _, tt := range []struct{ host, path, exact, fold string }{
		{"", "/orders/1", "orders", "orders"},
		{"", "/ORDERS/1", "all", "orders"},
		{"", "/Orders", "all", "orders"},
		{"", "/ordersX", "all", "all"},
		{"", "/orders;jsessionid=1/x", "orders", "orders"},
		{"", "/ORDERS;x", "all", "orders"},
		{"", "/orders/admin;x/1", "orders", "orders"}, // /orders/admin/1 without its parameter: a 400 (routeUnambiguous)
		{"", "/API/x", "api", "api"},
		{"", "/api/x", "all", "api"},
		{"", "/orders/ADMIN/x", "orders", "admin"},
		{"api.example.com", "/V1/x", "", "h"},
		{"api.example.com", "/v2", "", ""},
	} {
		name := func(r *route) string {
			if r == nil {
				return ""
			}
			return r.name
		}
		if got := name(tab.lookup(tt.host, tt.path)); got != tt.exact {
			t.Errorf("lookup(%q, %q) = %q, want %q", tt.host, tt.path, got, tt.exact)
		}
		if got := name(tab.lookupFold(tt.host, tt.path)); got != tt.fold {
			t.Errorf("lookupFold(%q, %q) = %q, want %q", tt.host, tt.path, got, tt.fold)
		}
	}
}

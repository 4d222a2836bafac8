package gateway

import (
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/gateway/ratelimit/redistest"
	"github.com/moatless/moatless/internal/testpki"
	"github.com/moatless/moatless/internal/wire"
)

func TestGatewayRateLimitMemory(t *testing.T) {
	tg := startGateway(t, func(c *config.Gateway) {
		c.RateLimits = []config.GatewayRateLimit{
			{Name: "per-ip", Key: "ip", Limit: 3, Window: wire.Duration(time.Hour)},
			{Name: "per-key", Key: "header:X-API-Key", Limit: 2, Window: wire.Duration(time.Hour)},
		}
		c.Routes[0].RateLimits = []string{"per-ip"}
		c.Routes = append(c.Routes, config.GatewayRoute{Name: "public", PathPrefix: "/public", Upstreams: c.Routes[0].Upstreams, SPIFFEID: ordersID, RateLimits: []string{"per-key"}})
	})
	for i := range 3 {
		resp, _ := tg.do(t, "GET", "/orders/1", nil, nil)
		if resp.StatusCode != 200 || resp.Header.Get("RateLimit-Limit") != "3" || resp.Header.Get("RateLimit-Remaining") != strconv.Itoa(2-i) {
			t.Fatalf("request %d: %d %v", i, resp.StatusCode, resp.Header)
		}
	}
	resp, _ := tg.do(t, "GET", "/orders/1", nil, nil)
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("fourth request: %d", resp.StatusCode)
	}
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 7200 {
		t.Errorf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
	if resp.Header.Get("RateLimit-Remaining") != "0" || resp.Header.Get("RateLimit-Reset") == "" {
		t.Errorf("429 headers %v", resp.Header)
	}
	checkSecurityHeaders(t, resp.Header)
	// Keyed by API key: each key has its own budget; a spoofed
	// X-Forwarded-For does not give the client a fresh one.
	for _, key := range []string{"a", "a", "b", "b"} {
		if resp, _ := tg.do(t, "GET", "/public/x", nil, map[string]string{"X-API-Key": key, "X-Forwarded-For": "198.51.100." + key}); resp.StatusCode != 200 {
			t.Fatalf("key %s: %d", key, resp.StatusCode)
		}
	}
	if resp, _ := tg.do(t, "GET", "/public/x", nil, map[string]string{"X-API-Key": "a"}); resp.StatusCode != 429 {
		t.Fatalf("third request with key a: %d", resp.StatusCode)
	}
}

func TestGatewayRateLimitSharedThroughRedis(t *testing.T) {
	srv := redistest.Start(t)
	ca := testpki.NewCA(t, td)
	up := startUpstream(t, ca, ordersID, echoApp(t))
	edit := func(onErr string) func(c *config.Gateway) {
		return func(c *config.Gateway) {
			c.RateLimits = []config.GatewayRateLimit{{Name: "shared", Key: "route", Limit: 6, Window: wire.Duration(time.Hour), Store: srv.URL(), OnStoreError: onErr}}
			c.Routes[0].RateLimits = []string{"shared"}
		}
	}
	a := startGatewayWith(t, ca, up, edit("allow"))
	b := startGatewayWith(t, ca, up, edit("deny"))
	ok := 0
	for i := range 10 {
		g := a
		if i%2 == 1 {
			g = b
		}
		if resp, _ := g.do(t, "GET", "/orders/1", nil, nil); resp.StatusCode == 200 {
			ok++
		} else if resp.StatusCode != 429 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	if ok != 6 {
		t.Fatalf("%d of 10 requests through two gateways allowed, want the shared 6", ok)
	}
	srv.Kill()
	if resp, _ := a.do(t, "GET", "/orders/1", nil, nil); resp.StatusCode != 200 {
		t.Errorf("fail-open gateway with Redis down: %d", resp.StatusCode)
	}
	if resp, _ := b.do(t, "GET", "/orders/1", nil, nil); resp.StatusCode != 429 {
		t.Errorf("fail-closed gateway with Redis down: %d", resp.StatusCode)
	}
	for _, g := range []*testGateway{a, b} {
		if got := g.logs.String(); !strings.Contains(got, "rate-limit store unreachable") {
			t.Errorf("no log line about the store:\n%s", got)
		}
	}
}

// TestGatewayRateLimitKeysClientsCannotVary: the keys a client controls
// do not buy it fresh budgets. Clients are named by X-Forwarded-For from
// the trusted loopback peer, as a load balancer in front would.
func TestGatewayRateLimitKeysClientsCannotVary(t *testing.T) {
	tg := startGateway(t, func(c *config.Gateway) {
		c.TrustedProxies = []string{"127.0.0.0/8"}
		c.RateLimits = []config.GatewayRateLimit{
			{Name: "per-ip", Key: "ip", Limit: 2, Window: wire.Duration(time.Hour)},
			{Name: "per-key", Key: "header:X-API-Key", Limit: 2, Window: wire.Duration(time.Hour)},
		}
		c.Routes[0].RateLimits = []string{"per-ip"}
		c.Routes = append(c.Routes, config.GatewayRoute{Name: "public", PathPrefix: "/public", Upstreams: c.Routes[0].Upstreams, SPIFFEID: ordersID, RateLimits: []string{"per-key"}})
	})
	get := func(path string, hdr string) string {
		got := tg.raw(t, "GET "+path+" HTTP/1.1\r\nHost: localhost\r\n"+hdr+"Connection: close\r\n\r\n")
		return firstLine(got)
	}
	tests := []struct {
		name  string
		path  string
		heads []string // one request each
		want  []string // status lines, in order
	}{
		// Every address of one /64 is one client: the third is limited.
		{"ipv6_same_64", "/orders/1", []string{
			"X-Forwarded-For: 2001:db8:1:2::1\r\n", "X-Forwarded-For: 2001:db8:1:2::2\r\n", "X-Forwarded-For: 2001:db8:1:2:ffff:1:2:3\r\n",
		}, []string{"HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 429 Too Many Requests"}},
		// Another /64 is another client.
		{"ipv6_other_64", "/orders/1", []string{"X-Forwarded-For: 2001:db8:1:3::1\r\n"}, []string{"HTTP/1.1 200 OK"}},
		// An IPv4-mapped address is the IPv4 client.
		{"ipv4_mapped", "/orders/1", []string{
			"X-Forwarded-For: 203.0.113.5\r\n", "X-Forwarded-For: ::ffff:203.0.113.5\r\n", "X-Forwarded-For: 203.0.113.5\r\n",
		}, []string{"HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 429 Too Many Requests"}},
		// The keyed header twice: the gateway cannot know which one the
		// app reads, so it counts neither and refuses the request.
		{"header_twice", "/public/x", []string{
			"X-API-Key: spent\r\n", "X-API-Key: spent\r\n", "X-API-Key: fresh-1\r\nX-API-Key: spent\r\n", "X-API-Key: spent\r\nX-API-Key: fresh-2\r\n",
		}, []string{"HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 400 Bad Request", "HTTP/1.1 400 Bad Request"}},
		// The header's name in another case or with "_" is the same
		// header, or no header at all (dropped): never a fresh key.
		{"header_spellings", "/public/x", []string{
			"x-api-key: spent\r\n", "X_API_Key: other\r\nX-Api-Key: spent\r\n",
		}, []string{"HTTP/1.1 429 Too Many Requests", "HTTP/1.1 429 Too Many Requests"}},
		// Whitespace around the value is not part of it (RFC 9112 section
		// 5.1), on both HTTP/1.1 server paths; HTTP/2 in h2_test.go.
		{"header_value_padding", "/public/x", []string{
			"X-API-Key:  spent \r\n", "X-API-Key:\tspent\t\r\n",
		}, []string{"HTTP/1.1 429 Too Many Requests", "HTTP/1.1 429 Too Many Requests"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i, h := range tt.heads {
				if got := get(tt.path, h); got != tt.want[i] {
					t.Fatalf("request %d (%q): %q, want %q", i, h, got, tt.want[i])
				}
			}
		})
	}
}

// addrConn is a connection that only knows its remote address.
type addrConn struct {
	net.Conn
	remote net.Addr
}

func (c addrConn) RemoteAddr() net.Addr { return c.remote }

// TestConnCounterIPv6Block: max_conns_per_ip counts an IPv6 peer by its
// /64, so a host cannot open the cap's worth of connections from each of
// its addresses; IPv4 peers are counted one by one.
func TestConnCounterIPv6Block(t *testing.T) {
	cc := newConnCounter(100, 2)
	conn := func(s string) net.Conn {
		return addrConn{remote: net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s))}
	}
	tests := []struct {
		name, remote, want string
	}{
		{"first_v6", "[2001:db8:1:2::1]:1000", ""},
		{"same_64_other_address", "[2001:db8:1:2::2]:1000", ""},
		{"same_64_over_cap", "[2001:db8:1:2:abcd::9]:1000", "max_conns_per_ip"},
		{"other_64", "[2001:db8:1:3::1]:1000", ""},
		{"v4", "203.0.113.5:1000", ""},
		{"v4_neighbour", "203.0.113.6:1000", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := cc.acquire(conn(tt.remote)); got != tt.want {
				t.Fatalf("acquire(%s) = %q, want %q", tt.remote, got, tt.want)
			}
		})
	}
	cc.release(conn("[2001:db8:1:2::1]:1000"))
	if got := cc.acquire(conn("[2001:db8:1:2::7]:1001")); got != "" {
		t.Fatalf("after a release the /64 is still full: %q", got)
	}
}

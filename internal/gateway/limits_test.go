package gateway

import (
	"net/http"
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

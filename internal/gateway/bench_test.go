package gateway

import (
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/policy"
)

// cpuTime is the process's user and system CPU time (getrusage).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkGatewayJSON1K sends the 1 KB JSON order through a gateway, an
// upstream sidecar and the echo app, all in this process, with the WAF
// off and on: the difference is what the WAF adds in place. The client
// speaks HTTP/2 to the gateway, except in waf_off_http1: HTTP/1.1 on
// kept-alive connections, as wrk in bench/gateway.sh does (_fast: on the
// gateway's HTTP/1.1 fast path).
func BenchmarkGatewayJSON1K(b *testing.B) {
	body := `{"customer":{"id":"c-1029","name":"Ada Lovelace","email":"ada@example.com"},"items":[` +
		strings.Repeat(`{"sku":"BK-1001","title":"Notes on the Analytical Engine","qty":1,"price":19.99},`, 9) +
		`{"sku":"BK-1002","title":"Sketch","qty":1,"price":9.5}],"note":"deliver after 5pm"}`
	for _, tc := range []struct {
		name             string
		waf, http1, fast bool
	}{
		{"waf_off", false, false, false},
		{"waf_on", true, false, false},
		{"waf_off_http1", false, true, false},
		{"waf_off_http1_fast", false, true, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			tg := startGateway(b, func(c *config.Gateway) {
				c.Routes[0].WAF = &config.GatewayRouteWAF{Enabled: tc.waf}
				f := false
				c.AccessLog = &f
				c.DisableHTTP1FastPath = !tc.fast
			})
			if tc.http1 {
				tr := tg.client.Transport.(*http.Transport)
				tr.ForceAttemptHTTP2 = false
				tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
			}
			hdr := map[string]string{"Content-Type": "application/json", "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0", "Accept": "application/json"}
			b.ReportAllocs()
			start, n := cpuTime(), 0
			for b.Loop() {
				if resp, got := tg.do(b, "POST", "/orders", strings.NewReader(body), hdr); resp.StatusCode != 200 {
					b.Fatalf("status %d: %s", resp.StatusCode, got)
				}
				n++
			}
			b.ReportMetric(float64(cpuTime()-start)/float64(n), "cpu-ns/op")
		})
	}
}

// BenchmarkReviewChecks is what the review's checks add to every request
// (2026-12-07): the method's case, the normalized path's ';' and UTF-8,
// the case-insensitive second reading of the route table (five routes)
// and the encoded-slash test, on a typical API path.
func BenchmarkReviewChecks(b *testing.B) {
	mk := func(name, prefix string) *route { return &route{name: name, prefix: prefix} }
	tab := newRouteTable([]*route{mk("all", "/"), mk("orders", "/orders"), mk("users", "/api/users"), mk("search", "/search"), mk("admin", "/admin")})
	for _, path := range []string{"/orders/1029/items", "/api/users/c-1029/Orders", "/search/caf%C3%A9"} {
		b.Run(strings.Trim(strings.ReplaceAll(path[:min(len(path), 16)], "/", "_"), "_"), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if policy.CheckMethod("GET") != nil || checkPathMeaning(path) != nil || hasEncodedSlash(path) {
					b.Fatal("refused")
				}
				if tab.lookupFold("", path) != tab.lookup("", path) {
					b.Fatal("ambiguous")
				}
			}
		})
	}
}

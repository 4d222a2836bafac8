package gateway

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
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
// off and on: the difference is what the WAF adds in place.
func BenchmarkGatewayJSON1K(b *testing.B) {
	body := `{"customer":{"id":"c-1029","name":"Ada Lovelace","email":"ada@example.com"},"items":[` +
		strings.Repeat(`{"sku":"BK-1001","title":"Notes on the Analytical Engine","qty":1,"price":19.99},`, 9) +
		`{"sku":"BK-1002","title":"Sketch","qty":1,"price":9.5}],"note":"deliver after 5pm"}`
	for _, waf := range []bool{false, true} {
		name := "waf_off"
		if waf {
			name = "waf_on"
		}
		b.Run(name, func(b *testing.B) {
			tg := startGateway(b, func(c *config.Gateway) {
				c.Routes[0].WAF = &config.GatewayRouteWAF{Enabled: waf}
				f := false
				c.AccessLog = &f
			})
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

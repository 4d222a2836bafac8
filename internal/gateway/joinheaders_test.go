package gateway

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/wire"
)

// TestGatewayJoinsRepeatedPolicyHeaders: a header a policy reads, sent
// twice, reaches the upstream as the one value the policy decided on
// (joined with ",", as policy reads it), as through a sidecar. Before,
// "X-Debug: 1" and "X-Debug: 0" passed a DENY on x-debug "1" (the policy
// read "1,0") and the app, reading the first, saw "1". Headers no policy
// reads keep their fields. Fails on the parent.
func TestGatewayJoinsRepeatedPolicyHeaders(t *testing.T) {
	tg := startGateway(t, nil)
	tg.g.SetAuthorizer(2, compile(t, gatewayPolicy+`---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-debug, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules: [{when: [{key: "request.headers[x-debug]", values: ["1"]}]}]
`))
	tests := []struct {
		name   string
		debug  []string
		extra  http.Header // more fields the caller sends
		status int
		app    []string // X-Debug as the app received it
	}{
		{"one_denied", []string{"1"}, nil, 403, nil},
		{"one_allowed", []string{"0"}, nil, 200, []string{"0"}},
		{"repeated_reach_the_app_as_the_policy_read_them", []string{"1", "0"}, nil, 200, []string{"1,0"}},
		{"repeated_other_order", []string{"0", "1"}, nil, 200, []string{"0,1"}},
		// The "_" twin is dropped at the edge: an app that folds "_"
		// into "-" does not get a second X-Debug the policy never read.
		{"underscore_twin_dropped", []string{"0"}, http.Header{"X_debug": {"1"}}, 200, []string{"0"}},
		// A Connection nomination (HTTP/1.1: HTTP/2 has no Connection
		// field) is not honoured: the field the policy read reaches the
		// app, and a denied one stays denied.
		{"nominated_still_denied", []string{"1"}, http.Header{"Connection": {"X-Debug"}}, 403, nil},
		{"nominated_reaches_the_app_as_read", []string{"0"}, http.Header{"Connection": {"X-Debug"}}, 200, []string{"0"}},
	}
	// An HTTP/1.1 client, whichever of its server paths the gateway
	// runs: the nominations are sent over it.
	tr := tg.client.Transport.(*http.Transport).Clone()
	tr.ForceAttemptHTTP2, tr.TLSClientConfig.NextProtos = false, []string{"http/1.1"}
	h1 := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	defer tr.CloseIdleConnections()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", tg.url("/orders/1"), nil)
			req.Header["X-Debug"] = tc.debug
			req.Header["X-Other"] = []string{"a", "b"}
			for k, v := range tc.extra {
				req.Header[k] = v
			}
			client := tg.client
			if tc.extra.Get("Connection") != "" {
				client = h1
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.status != 200 {
				return
			}
			var s seen
			if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
				t.Fatal(err)
			}
			if got := s.Headers["X-Debug"]; !slices.Equal(got, tc.app) {
				t.Errorf("the app got X-Debug %q, want %q", got, tc.app)
			}
			if got := s.Headers["X_debug"]; got != nil {
				t.Errorf("the app got the _ twin: %q", got)
			}
			if got := s.Headers["X-Other"]; !slices.Equal(got, []string{"a", "b"}) {
				t.Errorf("a header no policy reads: %q", got)
			}
		})
	}
}

// TestGatewayRepeatedLimitHeaderReadByPolicy: a header rate limit's
// header sent twice is refused (400) also when a policy reads that header
// and the header filter joins its fields into one: "fresh-1,spent" would
// otherwise be a fresh key per request for an app that reads "spent".
// Fails without the check before the filter.
func TestGatewayRepeatedLimitHeaderReadByPolicy(t *testing.T) {
	tg := startGateway(t, func(c *config.Gateway) {
		c.RateLimits = []config.GatewayRateLimit{{Name: "per-key", Key: "header:X-API-Key", Limit: 2, Window: wire.Duration(time.Hour)}}
		c.Routes[0].RateLimits = []string{"per-key"}
	})
	tg.g.SetAuthorizer(2, compile(t, gatewayPolicy+`---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: blocked-key, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules: [{when: [{key: "request.headers[x-api-key]", values: ["blocked"]}]}]
`))
	for i, tc := range []struct{ head, want string }{
		{"X-API-Key: spent\r\n", "HTTP/1.1 200 OK"},
		{"X-API-Key: spent\r\n", "HTTP/1.1 200 OK"},
		{"X-API-Key: spent\r\n", "HTTP/1.1 429 Too Many Requests"},
		{"X-API-Key: fresh-1\r\nX-API-Key: spent\r\n", "HTTP/1.1 400 Bad Request"},
		{"X-API-Key: spent\r\nX-API-Key: fresh-2\r\n", "HTTP/1.1 400 Bad Request"},
	} {
		if got := firstLine(tg.raw(t, "GET /orders/1 HTTP/1.1\r\nHost: localhost\r\n"+tc.head+"Connection: close\r\n\r\n")); got != tc.want {
			t.Fatalf("request %d (%q): %q, want %q", i, tc.head, got, tc.want)
		}
	}
}

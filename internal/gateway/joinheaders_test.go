package gateway

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"
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
		status int
		app    []string // X-Debug as the app received it
	}{
		{"one_denied", []string{"1"}, 403, nil},
		{"one_allowed", []string{"0"}, 200, []string{"0"}},
		{"repeated_reach_the_app_as_the_policy_read_them", []string{"1", "0"}, 200, []string{"1,0"}},
		{"repeated_other_order", []string{"0", "1"}, 200, []string{"0,1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", tg.url("/orders/1"), nil)
			req.Header["X-Debug"] = tc.debug
			req.Header["X-Other"] = []string{"a", "b"}
			resp, err := tg.client.Do(req)
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
			if got := s.Headers["X-Other"]; !slices.Equal(got, []string{"a", "b"}) {
				t.Errorf("a header no policy reads: %q", got)
			}
		})
	}
}

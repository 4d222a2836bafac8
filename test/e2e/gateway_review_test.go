package e2e

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestGatewayReadsRequestsAsTheAppMight: the built gateway, in front of a
// sidecar in front of an app, refuses requests the app could read as
// something policy, the route or the WAF did not see (the review of
// 2026-12-07): a path parameter that makes "..;" a dot segment to a
// servlet container, an overlong UTF-8 "..", a lower-case method, an
// attack padded past what the WAF inspects, a JSON body labeled XML, a
// multipart part after the close delimiter. An encoded slash or a case
// that changes nothing passes.
func TestGatewayReadsRequestsAsTheAppMight(t *testing.T) {
	g, _, _ := startGatewayMesh(t, "")
	sqli := url.QueryEscape("1' or 1=1-- ")
	tests := []struct {
		name, method, path, ctype, body string
		want                            int
	}{
		{"path_parameter_dot_segment", "GET", "/api/..;/admin", "", "", 400},
		{"overlong_utf8_dots", "GET", "/api/%C0%AE%C0%AE/admin", "", "", 400},
		{"method_lower_case", "get", "/api/orders/1", "", "", 400},
		{"attack_padded_past_waf", "POST", "/api/orders", "application/x-www-form-urlencoded", "pad=" + strings.Repeat("a", 140<<10) + "&q=" + sqli, 413},
		{"json_attack_labeled_xml", "POST", "/api/orders", "application/xml", `{"q":"1\u0027 or 1=1-- "}`, 403},
		{"multipart_part_after_close", "POST", "/api/orders", "multipart/form-data; boundary=b",
			"--b\r\nContent-Disposition: form-data; name=\"ok\"\r\n\r\nfine\r\n--b--\r\n--b\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\n1' or 1=1-- \r\n--b--\r\n", 403},
		{"path_case_and_encoded_slash_as_data", "GET", "/api/Files/a%2Fb", "", "", 200},
		{"encoded_slash_as_data", "GET", "/api/files/a%2Fb", "", "", 200},
		{"benign", "POST", "/api/orders", "application/json", `{"item":"book","qty":1}`, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, "https://"+g.addr+tt.path, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if tt.ctype != "" {
				req.Header.Set("Content-Type", tt.ctype)
			}
			resp, err := g.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Fatalf("%s %s: status %d, want %d", tt.method, tt.path, resp.StatusCode, tt.want)
			}
			if resp.Header.Get("Strict-Transport-Security") == "" || resp.Header.Get("X-Request-Id") == "" {
				t.Errorf("answer without the security headers: %v", resp.Header)
			}
		})
	}
}

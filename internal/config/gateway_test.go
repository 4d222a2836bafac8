package config

import (
	"strings"
	"testing"
)

const gatewayOK = `listen: "0.0.0.0:8443"
tls: {cert: gw.pem, key: gw-key.pem}
identity: {files: {cert: svid.pem, key: key.pem, bundle: bundle.pem}}
trusted_proxies: ["10.0.0.0/8"]
ip: {deny: ["203.0.113.0/24"]}
rate_limits:
  - {name: per-ip, key: ip, limit: 100, window: 1m}
  - {name: per-user, key: "jwt:sub", limit: 1000, window: 1h, store: "redis://127.0.0.1:6379/0"}
routes:
  - name: orders
    host: api.example.com
    path_prefix: /orders
    upstreams: ["127.0.0.1:15006"]
    spiffe_id: "spiffe://moatless.local/ns/prod/sa/orders"
    cors: {origins: ["https://app.example.com"]}
    rate_limits: [per-ip, per-user]
policy: {files: [policies/]}
`

func TestParseGateway(t *testing.T) {
	c, err := ParseGateway(strings.NewReader(gatewayOK))
	if err != nil {
		t.Fatal(err)
	}
	if c.Limits.MaxBodyBytes != DefaultMaxBodyBytes || c.Namespace != DefaultGatewayNamespace || c.Labels["istio"] != "ingressgateway" || c.WAF.Mode != "block" || c.Routes[0].Retries != 2 {
		t.Errorf("defaults not filled: %+v", c)
	}
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown_top_key_with_line", gatewayOK + "lisen: x\n", `line 18: unknown key "lisen" in top level`},
		{"unknown_nested_key_with_line", strings.Replace(gatewayOK, "cors: {origins:", "cors: {orgins:", 1), `line 15: unknown key "orgins" in routes[0].cors`},
		{"no_routes", strings.Split(gatewayOK, "routes:")[0], "routes: at least one route"},
		{"bad_cidr", strings.Replace(gatewayOK, "10.0.0.0/8", "10.0.0.0/33", 1), "trusted_proxies[0]"},
		{"unknown_limit_ref", strings.Replace(gatewayOK, "[per-ip, per-user]", "[per-ip, nope]", 1), `no rate limit named "nope"`},
		{"bad_rate_key", strings.Replace(gatewayOK, "key: ip", "key: cookie", 1), "rate_limits[0].key"},
		{"bad_store", strings.Replace(gatewayOK, "redis://127.0.0.1:6379/0", "memcache://x", 1), "rate_limits[1].store"},
		{"path_prefix_dot_segment", strings.Replace(gatewayOK, "path_prefix: /orders", "path_prefix: /a/../orders", 1), "routes[0].path_prefix"},
		{"bad_spiffe_id", strings.Replace(gatewayOK, "spiffe://moatless.local/ns/prod/sa/orders", "https://x", 1), "routes[0].spiffe_id"},
		{"wildcard_cors_with_credentials", strings.Replace(gatewayOK, `cors: {origins: ["https://app.example.com"]}`, `cors: {origins: ["*"], credentials: true}`, 1), "cannot be used with credentials"},
		{"origin_with_path", strings.Replace(gatewayOK, `"https://app.example.com"`, `"https://app.example.com/x"`, 1), "is not an origin"},
		{"no_tls", strings.Replace(gatewayOK, "tls: {cert: gw.pem, key: gw-key.pem}", "", 1), "tls: cert and key are required"},
		{"tls10", strings.Replace(gatewayOK, "key: gw-key.pem}", "key: gw-key.pem, min_version: \"1.0\"}", 1), "tls.min_version"},
		{"two_identities", strings.Replace(gatewayOK, "identity: {", "identity: {workload_api: \"unix:///x\", ", 1), "set only one"},
		{"public_admin", gatewayOK + "admin: \"0.0.0.0:15200\"\n", "not a loopback"},
		{"bad_waf_mode", gatewayOK + "waf: {mode: learn}\n", "waf.mode"},
		{"retired_http1_fast_path", gatewayOK + "http1_fast_path: true\n", `line 18: key "http1_fast_path" in top level is no longer accepted: the HTTP/1.1 fast path is on by default; write "disable_http1_fast_path: true"`},
		{"paranoia_5", gatewayOK + "waf: {paranoia_level: 5}\n", "waf.paranoia_level"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseGateway(strings.NewReader(tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// FuzzParseGateway: any input is refused with an error or yields a
// config that validates; nothing panics.
func FuzzParseGateway(f *testing.F) {
	f.Add(gatewayOK)
	f.Add("routes: [{name: a, path_prefix: /, upstreams: [\"a:1\"], spiffe_id: \"spiffe://x/y\", cors: {origins: [\"*\"]}}]")
	f.Add("{}")
	f.Add("- a\n- b")
	f.Add("listen: &a x\nadmin: *a\n")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseGateway(strings.NewReader(s))
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("parsed config does not validate: %v", err)
		}
	})
}

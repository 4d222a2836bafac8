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
	if l := c.Limits; l.LingerTimeout.Std() != DefaultLingerTimeout || l.LingerTime.Std() != DefaultLingerTime || l.LingerBytes != DefaultLingerBytes {
		t.Errorf("lingering defaults not filled: %+v", l)
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
		{"linger_timeout_negative", gatewayOK + "limits: {linger_timeout: -1s}\n", "limits.linger_timeout: -1s is not between 10ms and 1m0s"},
		{"linger_timeout_tiny", gatewayOK + "limits: {linger_timeout: 1ms}\n", "limits.linger_timeout: 1ms is not between"},
		{"linger_timeout_over_cap", gatewayOK + "limits: {linger_timeout: 2m, linger_time: 3m}\n", "limits.linger_timeout: 2m0s is not between"},
		{"linger_timeout_over_time", gatewayOK + "limits: {linger_timeout: 10s}\n", "limits.linger_timeout: 10s is longer than limits.linger_time 5s"},
		{"linger_time_negative", gatewayOK + "limits: {linger_time: -5s}\n", "limits.linger_time: -5s is not between 10ms and 5m0s"},
		{"linger_time_over_cap", gatewayOK + "limits: {linger_time: 1h}\n", "limits.linger_time: 1h0m0s is not between"},
		{"linger_bytes_negative", gatewayOK + "limits: {linger_bytes: -1}\n", "limits.linger_bytes: -1 is less than limits.max_body_bytes 10485760"},
		{"linger_bytes_under_body_limit", gatewayOK + "limits: {max_body_bytes: 2097152, linger_bytes: 1048576}\n", "limits.linger_bytes: 1048576 is less than limits.max_body_bytes 2097152"},
		{"linger_bytes_over_cap", gatewayOK + "limits: {linger_bytes: 2147483648}\n", "limits.linger_bytes: 2147483648 is more than 1073741824"},
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

// The lingering close's settings: the byte cap defaults to the body
// limit when that is larger than 10 MiB, and values within the bounds are
// taken as written.
func TestParseGatewayLinger(t *testing.T) {
	tests := []struct {
		name, limits   string
		timeout, total string
		bytes          int64
	}{
		{"defaults", "{}", "2s", "5s", 10 << 20},
		{"body_limit_larger", "{max_body_bytes: 67108864}", "2s", "5s", 64 << 20},
		{"set", "{linger_timeout: 500ms, linger_time: 30s, linger_bytes: 20971520}", "500ms", "30s", 20 << 20},
		{"timeout_equals_time", "{linger_timeout: 1s, linger_time: 1s}", "1s", "1s", 10 << 20},
		{"large_body_limit_over_cap", "{max_body_bytes: 4294967296}", "2s", "5s", 4 << 30},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseGateway(strings.NewReader(gatewayOK + "limits: " + tt.limits + "\n"))
			if err != nil {
				t.Fatal(err)
			}
			l := c.Limits
			if l.LingerTimeout.Std().String() != tt.timeout || l.LingerTime.Std().String() != tt.total || l.LingerBytes != tt.bytes {
				t.Fatalf("linger_timeout %s, linger_time %s, linger_bytes %d; want %s, %s, %d", l.LingerTimeout.Std(), l.LingerTime.Std(), l.LingerBytes, tt.timeout, tt.total, tt.bytes)
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

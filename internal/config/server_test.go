package config

import (
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParseServerDefaults(t *testing.T) {
	c, err := ParseServer(strings.NewReader(""), env(map[string]string{"MOATLESS_DATA_DIR": "/d"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Store != "/d/moatless.db" || c.KEKFile != "/d/kek" || c.Listen != DefaultListen ||
		c.AdminIDs[0] != "spiffe://moatless.local/moatless/admin" || c.X509SVIDTTL.Std() != time.Hour ||
		c.AuditReportRate != DefaultAuditReportRate || c.AuditReportBurst != DefaultAuditReportBurst ||
		c.Dashboard.Disabled || c.Dashboard.AdminRole != DefaultDashboardAdminRole || c.Dashboard.SessionTTL.Std() != 30*time.Minute || c.Dashboard.HSTSMaxAge != 0 {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestParseServerRejects(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown_key", "listen_addr: x", "listen_addr"},
		{"bad_trust_domain", "trust_domain: Example.ORG", "trust_domain"},
		{"trust_domain_as_id", "trust_domain: spiffe://x", "trust_domain"},
		{"bad_listen", "listen: nohostport", "listen"},
		{"bad_port", "listen: 127.0.0.1:http99", "listen"},
		{"admin_id_other_domain", "admin_ids: [spiffe://other/admin]", "admin_ids[0]"},
		{"admin_id_bare_domain", "admin_ids: [spiffe://moatless.local]", "admin_ids[0]"},
		{"admin_id_garbage", "admin_ids: [admin]", "admin_ids[0]"},
		{"server_name_bad", "server_names: [bad_name]", "server_names[0]"},
		{"ttl_too_long", "x509_svid_ttl: 48h", "x509_svid_ttl"},
		{"ttl_bad_string", "jwt_svid_ttl: soon", "duration"},
		{"token_ttl_zero_max", "max_join_token_ttl: 1ms", "max_join_token_ttl"},
		{"upstream_partial", "upstream_ca: {cert: a.pem}", "upstream_ca"},
		{"log_level", "log_level: loud", "log_level"},
		{"poll_too_fast", "poll_interval: 1ms", "poll_interval"},
		{"ca_ttl_shorter_than_six_svids", "ca_ttl: 5h", "ca_ttl"},
		{"audit_report_rate_negative", "audit_report_rate: -1", "audit_report_rate"},
		{"audit_report_rate_huge", "audit_report_rate: 1e9", "audit_report_rate"},
		{"audit_report_burst_below_one_report", "audit_report_burst: 499", "audit_report_burst"},
		{"audit_report_burst_string", "audit_report_burst: lots", "audit_report_burst"},
		{"dashboard_session_too_short", "dashboard: {session_ttl: 30s}", "dashboard.session_ttl"},
		{"dashboard_session_too_long", "dashboard: {session_ttl: 13h}", "dashboard.session_ttl"},
		{"dashboard_unknown_key", "dashboard: {enabled: true}", "enabled"},
		{"dashboard_role_too_long", "dashboard: {admin_role: " + strings.Repeat("r", 129) + "}", "dashboard"},
		{"dashboard_hsts_negative", "dashboard: {hsts_max_age: -1s}", "dashboard.hsts_max_age"},
		{"dashboard_hsts_fraction", "dashboard: {hsts_max_age: 1500ms}", "dashboard.hsts_max_age"},
		{"dashboard_hsts_too_long", "dashboard: {hsts_max_age: 17521h}", "dashboard.hsts_max_age"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseServer(strings.NewReader(tc.yaml), env(map[string]string{"HOME": "/h"}))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

func FuzzParseServer(f *testing.F) {
	f.Add("trust_domain: a.b\nlisten: 127.0.0.1:1\n")
	f.Add("admin_ids: [spiffe://moatless.local/x]\nx509_svid_ttl: 30m\n")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseServer(strings.NewReader(s), env(map[string]string{"HOME": "/h"}))
		if err == nil {
			if err := c.Validate(); err != nil {
				t.Fatalf("parsed config does not validate: %v", err)
			}
		}
	})
}

// The detect section's per-service thresholds embed DetectThresholds:
// their keys sit inline (encoding/json promotes them), and the key check
// must see them there, and still refuse a typo among them.
func TestParseServerDetectServices(t *testing.T) {
	c, err := ParseServer(strings.NewReader("detect:\n  services:\n  - match: \"spiffe://moatless.local/ns/prod/sa/reports\"\n    bytes_per_minute: 4194304\n"), env(map[string]string{"MOATLESS_DATA_DIR": "/d"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Detect.Services) != 1 || c.Detect.Services[0].BytesPerMinute != 4194304 {
		t.Fatalf("services: %+v", c.Detect.Services)
	}
	_, err = ParseServer(strings.NewReader("detect:\n  services:\n  - match: \"spiffe://moatless.local/ns/prod/sa/reports\"\n    bytes_per_minuet: 4194304\n"), env(map[string]string{"MOATLESS_DATA_DIR": "/d"}))
	if err == nil || !strings.Contains(err.Error(), `line 4: unknown key "bytes_per_minuet" in detect.services[0]`) || !strings.Contains(err.Error(), "bytes_per_minute") {
		t.Fatalf("typo: %v", err)
	}
}

// detect.relays are SPIFFE IDs or patterns, like services' match.
func TestParseServerDetectRelays(t *testing.T) {
	c, err := ParseServer(strings.NewReader("detect:\n  relays: [\"spiffe://moatless.local/ns/edge/sa/gateway\", \"spiffe://moatless.local/ns/ingress/*\"]\n"), env(map[string]string{"MOATLESS_DATA_DIR": "/d"}))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Detect.IsRelay("spiffe://moatless.local/ns/edge/sa/gateway") || !c.Detect.IsRelay("spiffe://moatless.local/ns/ingress/sa/nginx") || c.Detect.IsRelay("spiffe://moatless.local/ns/edge/sa/other") {
		t.Fatalf("relays: %+v", c.Detect.Relays)
	}
	_, err = ParseServer(strings.NewReader("detect:\n  relays: [\"gateway\"]\n"), env(map[string]string{"MOATLESS_DATA_DIR": "/d"}))
	if err == nil || !strings.Contains(err.Error(), "detect.relays[0]") {
		t.Fatalf("a relay that is no SPIFFE ID: %v", err)
	}
}

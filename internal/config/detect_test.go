package config

import (
	"strings"
	"testing"
)

func TestAlertSettingsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		w    Webhook
		want string
	}{
		{"http_to_a_remote_host", Webhook{Name: "a", URL: "http://hooks.example.org/x", SecretFile: "/s"}, "plain http only to a loopback"},
		{"credentials_in_url", Webhook{Name: "a", URL: "https://u:p@hooks.example.org/x", SecretFile: "/s"}, "without credentials"},
		{"no_secret", Webhook{Name: "a", URL: "https://hooks.example.org/x"}, "secret_file"},
		{"bad_format", Webhook{Name: "a", URL: "https://hooks.example.org/x", Format: "slack"}, "format"},
		{"bad_name", Webhook{Name: "A B", URL: "https://hooks.example.org/x", Format: "alertmanager"}, "name"},
		{"ftp", Webhook{Name: "a", URL: "ftp://hooks.example.org/x", Format: "alertmanager"}, "https"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := AlertSettings{Webhooks: []Webhook{tc.w}}.validate("alerts")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
	ok := AlertSettings{Webhooks: []Webhook{{Name: "am", URL: "http://127.0.0.1:9093/api/v2/alerts", Format: "alertmanager"},
		{Name: "soc", URL: "https://hooks.example.org/x", SecretFile: "/etc/s"}}}
	if err := ok.validate("alerts"); err != nil {
		t.Fatal(err)
	}
}

func TestMatchIdentityPattern(t *testing.T) {
	for _, tc := range []struct {
		pattern, id string
		want        bool
	}{
		{"spiffe://td/ns/prod/sa/a", "spiffe://td/ns/prod/sa/a", true},
		{"spiffe://td/ns/prod/sa/a", "spiffe://td/ns/prod/sa/ab", false},
		{"spiffe://td/ns/prod/*", "spiffe://td/ns/prod/sa/a", true},
		{"spiffe://td/ns/prod/*", "spiffe://td/ns/production/sa/a", false},
		{"spiffe://td/ns/*/sa/reports", "spiffe://td/ns/dev/sa/reports", true},
		{"spiffe://td/ns/*/sa/reports", "spiffe://td/ns/dev/sa/reports2", false},
		{"spiffe://td/*", "spiffe://other/ns/x", false},
		{"spiffe://*/ns/*/sa/*", "spiffe://td/ns/a/sa/b", true},
	} {
		if got := MatchIdentityPattern(tc.pattern, tc.id); got != tc.want {
			t.Errorf("MatchIdentityPattern(%q, %q) = %v, want %v", tc.pattern, tc.id, got, tc.want)
		}
	}
}

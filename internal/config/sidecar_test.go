package config

import (
	"io/fs"
	"strings"
	"testing"
	"time"
)

const sidecarOK = `identity:
  files: {cert: c.pem, key: k.pem, bundle: b.pem}
namespace: prod
labels: {app: orders}
inbound:
  - {listen: "0.0.0.0:15006", app: "127.0.0.1:8080"}
outbound:
  - {listen: "127.0.0.1:15001", upstream: "10.0.0.7:15006", spiffe_id: "spiffe://td/ns/prod/sa/payments"}
`

func TestParseSidecarDefaults(t *testing.T) {
	c, err := ParseSidecar(strings.NewReader(sidecarOK))
	if err != nil {
		t.Fatal(err)
	}
	if c.Admin != DefaultSidecarAdmin || c.ReloadInterval.Std() != DefaultSidecarReload ||
		c.Policy.RootNamespace != DefaultRootNamespace || c.HandshakeTimeout.Std() != 10*time.Second ||
		c.Policy.PathNormalization != "BASE" {
		t.Fatalf("defaults not applied: %+v", c)
	}
}

func TestParseSidecarRejects(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{"unknown_key", sidecarOK + "bogus: 1\n", "bogus"},
		{"unknown_nested_key", strings.Replace(sidecarOK, "app: \"127.0.0.1:8080\"", "app: \"127.0.0.1:8080\", prot: tcp", 1), "prot"},
		{"no_identity", strings.Replace(sidecarOK, "  files: {cert: c.pem, key: k.pem, bundle: b.pem}\n", "  {}\n", 1), "identity: set one of"},
		{"two_identities", strings.Replace(sidecarOK, "identity:\n", "identity:\n  workload_api: unix:///tmp/a.sock\n", 1), "only one"},
		{"files_missing_key", strings.Replace(sidecarOK, "key: k.pem, ", "", 1), "identity.files"},
		{"workload_api_not_unix", strings.Replace(sidecarOK, "  files: {cert: c.pem, key: k.pem, bundle: b.pem}\n", "  workload_api: /tmp/a.sock\n", 1), "identity.workload_api"},
		{"outbound_not_loopback", strings.Replace(sidecarOK, "127.0.0.1:15001", "0.0.0.0:15001", 1), "outbound[0].listen"},
		{"outbound_bad_spiffe_id", strings.Replace(sidecarOK, "spiffe://td/ns/prod/sa/payments", "https://payments", 1), "outbound[0].spiffe_id"},
		{"inbound_bad_protocol", strings.Replace(sidecarOK, "app: \"127.0.0.1:8080\"", "app: \"127.0.0.1:8080\", protocol: udp", 1), "inbound[0].protocol"},
		{"inbound_no_port", strings.Replace(sidecarOK, "0.0.0.0:15006", "0.0.0.0", 1), "inbound[0].listen"},
		{"no_namespace_with_inbound", strings.Replace(sidecarOK, "namespace: prod\n", "", 1), "namespace"},
		{"admin_not_loopback", sidecarOK + "admin: 0.0.0.0:15000\n", "admin"},
		{"sample_rate_above_one", sidecarOK + "decision_log: {allow_sample_rate: 1.5}\n", "allow_sample_rate"},
		{"bad_duration", sidecarOK + "reload_interval: soon\n", "duration"},
		{"duplicate_names", strings.Replace(strings.Replace(sidecarOK, "- {listen: \"0.0.0.0", "- {name: a, listen: \"0.0.0.0", 1), "- {listen: \"127", "- {name: a, listen: \"127", 1), "already used"},
		{"join_with_policy_files", "identity: {join: {server: \"127.0.0.1:8443\", token_file: t, server_bundle: b}}\noutbound: [{listen: \"127.0.0.1:1\", upstream: \"127.0.0.1:2\", spiffe_id: \"spiffe://td/x\"}]\npolicy: {files: [p]}\n", "policy.files"},
		{"no_listener", "identity: {workload_api: \"unix:///tmp/a.sock\"}\n", "at least one listener"},
		{"unknown_path_normalization", sidecarOK + "policy: {path_normalization: FULL}\n", "policy.path_normalization: \"FULL\""},
		{"path_normalization_not_a_string", sidecarOK + "policy: {path_normalization: [BASE]}\n", "path_normalization"},
		{"inbound_upgrade_h2c", strings.Replace(sidecarOK, "app: \"127.0.0.1:8080\"", "app: \"127.0.0.1:8080\", upgrades: [websocket, h2c]", 1), "inbound[0].upgrades[1]: \"h2c\""},
		{"outbound_upgrade_unknown", strings.Replace(sidecarOK, "spiffe_id: \"spiffe://td/ns/prod/sa/payments\"", "spiffe_id: \"spiffe://td/ns/prod/sa/payments\", upgrades: [tls]", 1), "outbound[0].upgrades[0]"},
		{"upgrades_on_tcp", strings.Replace(sidecarOK, "app: \"127.0.0.1:8080\"", "app: \"127.0.0.1:8080\", protocol: tcp, upgrades: [websocket]", 1), "inbound[0].upgrades: only for http"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseSidecar(strings.NewReader(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestParseSidecarAccepts(t *testing.T) {
	tests := []struct {
		name string
		yaml string
	}{
		{"files", sidecarOK},
		{"workload_api_default", strings.Replace(sidecarOK, "  files: {cert: c.pem, key: k.pem, bundle: b.pem}\n", "  workload_api: default\n", 1)},
		{"join", strings.Replace(sidecarOK, "  files: {cert: c.pem, key: k.pem, bundle: b.pem}\n", "  join: {server: \"127.0.0.1:8443\", token_file: t, server_bundle: b.pem}\n", 1)},
		{"unix_app_and_grpc", strings.Replace(sidecarOK, "app: \"127.0.0.1:8080\"", "app: \"unix:/run/app.sock\", protocol: grpc, port: 9090", 1)},
		{"json", `{"identity": {"workload_api": "unix:///tmp/a.sock"}, "outbound": [{"listen": "[::1]:1", "upstream": "127.0.0.1:2", "spiffe_id": "spiffe://td/x", "protocol": "tcp"}]}`},
		{"admin_off", sidecarOK + "admin: \"off\"\n"},
		{"path_normalization_none", sidecarOK + "policy: {path_normalization: NONE}\n"},
		{"path_normalization_merge_slashes", sidecarOK + "policy: {path_normalization: MERGE_SLASHES}\n"},
		{"path_normalization_decode_and_merge_slashes_lower_case", sidecarOK + "policy: {path_normalization: decode_and_merge_slashes}\n"},
		{"path_normalization_istio_default_alias", sidecarOK + "policy: {path_normalization: DEFAULT}\n"},
		{"upgrades_websocket", strings.Replace(sidecarOK, "app: \"127.0.0.1:8080\"", "app: \"127.0.0.1:8080\", upgrades: [WebSocket]", 1)},
		{"upgrades_none", strings.Replace(sidecarOK, "app: \"127.0.0.1:8080\"", "app: \"127.0.0.1:8080\", upgrades: []", 1)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseSidecar(strings.NewReader(tc.yaml)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// FuzzParseSidecar: any input either parses into a config that validates
// or is refused with an error; it never panics.
func FuzzParseSidecar(f *testing.F) {
	f.Add(sidecarOK)
	f.Add(`{"identity": {"workload_api": "unix:///tmp/a.sock"}, "outbound": [{"listen": "[::1]:1", "upstream": "127.0.0.1:2", "spiffe_id": "spiffe://td/x"}]}`)
	f.Add("identity: {join: {server: a, token_file: b, server_bundle: c}}\nreload_interval: 5\n")
	f.Add(sidecarOK + "policy: {path_normalization: MERGE_SLASHES}\n")
	f.Add(strings.Replace(sidecarOK, `listen: "127.0.0.1:15001"`, `listen: "unix:/run/p.sock", socket_mode: "0660", socket_gid: 10`, 1) + "outbound_allowed_gids: [10]\n")
	f.Add(sidecarOK + "outbound_allowed_uids: [1000, 0]\noutbound_allow_any_local_user: false\n")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseSidecar(strings.NewReader(s))
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("parsed config does not validate: %v", err)
		}
	})
}

func TestSidecarOutboundCallers(t *testing.T) {
	unixOut := strings.Replace(sidecarOK, `listen: "127.0.0.1:15001"`, `listen: "unix:/run/moatless/payments.sock"`, 1)
	tests := []struct {
		name string
		yaml string
		want string // "" when accepted
	}{
		{"default", sidecarOK, ""},
		{"uids", sidecarOK + "outbound_allowed_uids: [1000, 1001]\n", ""},
		{"any_local_user", sidecarOK + "outbound_allow_any_local_user: true\n", ""},
		{"unix_listener_with_gids_mode_and_group", strings.Replace(unixOut, `upstream:`, `socket_mode: "0660", socket_gid: 1500, upstream:`, 1) + "outbound_allowed_gids: [1500]\n", ""},
		{"unix_listener_three_digit_mode", strings.Replace(unixOut, `upstream:`, `socket_mode: "600", upstream:`, 1), ""},
		{"gids_with_a_tcp_listener", sidecarOK + "outbound_allowed_gids: [1500]\n", "outbound_allowed_gids: a TCP outbound listener cannot learn the caller's group"},
		{"any_local_user_and_uids", sidecarOK + "outbound_allow_any_local_user: true\noutbound_allowed_uids: [1000]\n", "outbound_allow_any_local_user: set it or"},
		{"uid_minus_one", sidecarOK + "outbound_allowed_uids: [4294967295]\n", "outbound_allowed_uids: 4294967295"},
		{"gid_minus_one", unixOut + "outbound_allowed_gids: [4294967295]\n", "outbound_allowed_gids: 4294967295"},
		{"negative_uid", sidecarOK + "outbound_allowed_uids: [-1]\n", "outbound_allowed_uids"},
		{"uid_beyond_32_bits", sidecarOK + "outbound_allowed_uids: [4294967296]\n", "outbound_allowed_uids"},
		{"uid_by_name", sidecarOK + "outbound_allowed_uids: [frontend]\n", "outbound_allowed_uids"},
		{"relative_socket_path", strings.Replace(sidecarOK, `listen: "127.0.0.1:15001"`, `listen: "unix:run/p.sock"`, 1), "outbound[0].listen"},
		{"socket_path_with_dot_dot", strings.Replace(sidecarOK, `listen: "127.0.0.1:15001"`, `listen: "unix:/run/../p.sock"`, 1), "outbound[0].listen"},
		{"socket_path_too_long", strings.Replace(sidecarOK, `listen: "127.0.0.1:15001"`, `listen: "unix:/`+strings.Repeat("a", 107)+`"`, 1), "outbound[0].listen"},
		{"socket_mode_on_tcp", strings.Replace(sidecarOK, `upstream:`, `socket_mode: "0600", upstream:`, 1), "outbound[0].socket_mode, socket_gid: only for a unix socket"},
		{"socket_gid_on_tcp", strings.Replace(sidecarOK, `upstream:`, `socket_gid: 10, upstream:`, 1), "outbound[0].socket_mode, socket_gid: only for a unix socket"},
		{"socket_mode_not_octal", strings.Replace(unixOut, `upstream:`, `socket_mode: "0980", upstream:`, 1), "outbound[0].socket_mode"},
		{"socket_mode_setuid", strings.Replace(unixOut, `upstream:`, `socket_mode: "4660", upstream:`, 1), "outbound[0].socket_mode"},
		{"socket_mode_zero", strings.Replace(unixOut, `upstream:`, `socket_mode: "000", upstream:`, 1), "outbound[0].socket_mode"},
		{"socket_mode_as_yaml_number", strings.Replace(unixOut, `upstream:`, `socket_mode: 0660, upstream:`, 1), "socket_mode"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseSidecar(strings.NewReader(tc.yaml))
			switch {
			case tc.want == "" && err != nil:
				t.Fatal(err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestParseSocketMode(t *testing.T) {
	tests := []struct {
		in   string
		want fs.FileMode
		ok   bool
	}{
		{"", 0, true}, {"0600", 0o600, true}, {"660", 0o660, true}, {"0777", 0o777, true},
		{"0", 0, false}, {"00", 0, false}, {"0000", 0, false}, {"1777", 0, false}, {"00600", 0, false},
		{"0o600", 0, false}, {"-600", 0, false}, {"rw-", 0, false}, {"0x1f", 0, false},
	}
	for _, tc := range tests {
		got, err := ParseSocketMode(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseSocketMode(%q) = %v, %v; want %v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

package config

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

func TestParseAgent(t *testing.T) {
	env := func(k string) string {
		if k == "HOME" {
			return "/home/u"
		}
		return ""
	}
	tests := []struct {
		name    string
		in      string
		wantErr string
		check   func(Agent) bool
	}{
		{"empty_is_defaults", "", "", func(a Agent) bool {
			return a.Server.String() == DefaultListen && a.Socket == DefaultAgentSocket(env, os.Geteuid()) && a.HealthListen == DefaultAgentHealthListen && a.DataDir == "/home/u/.local/share/moatless/agent"
		}},
		{"full", "server: s.example.org:443\ntrust_bundle: /b.pem\njoin_token_file: /t\nsocket: /run/m/a.sock\ndata_dir: /var/lib/m\nhealth_listen: '[::1]:9000'\nlog_level: debug\n", "", func(a Agent) bool {
			return a.Server.String() == "s.example.org:443" && a.HealthListen == "[::1]:9000" && a.LogLevel == "debug"
		}},
		{"health_off", "health_listen: \"off\"\n", "", func(a Agent) bool { return a.HealthListen == "off" }},
		{"unknown_key", "sever: x:1\n", "sever", nil},
		{"server_without_port", "server: example.org\n", "server", nil},
		{"server_bad_port", "server: example.org:http2x\n", "server", nil},
		{"server_list", "server: [a.example.org:8443, 'https://b.example.org:8443', '[::1]:8443']\n", "", func(a Agent) bool {
			return fmt.Sprint(a.Server.Addrs()) == "[a.example.org:8443 b.example.org:8443 [::1]:8443]"
		}},
		{"server_list_bad_entry", "server: [a.example.org:8443, b.example.org]\n", "server[1]", nil},
		{"server_list_duplicate", "server: [a:1, A:1]\n", "server[1]", nil},
		{"server_list_empty", "server: []\n", "server", nil},
		{"server_not_a_string", "server: {a: 1}\n", "server", nil},
		{"server_url_with_path", "server: https://a:1/x\n", "server", nil},
		{"server_url_http", "server: http://a:1\n", "server", nil},
		{"server_list_too_long", "server: [" + strings.Repeat("a:1,", 32) + "b:1]\n", "at most", nil},
		{"relative_socket", "socket: agent.sock\n", "socket", nil},
		{"socket_too_long", "socket: /" + strings.Repeat("a", 120) + "\n", "socket", nil},
		{"health_public", "health_listen: 0.0.0.0:8089\n", "health_listen", nil},
		{"health_hostname", "health_listen: example.org:8089\n", "health_listen", nil},
		{"token_and_file", "join_token: a\njoin_token_file: /b\n", "join_token", nil},
		{"bad_log_level", "log_level: loud\n", "log_level", nil},
		{"empty_data_dir", "data_dir: \"\"\n", "data_dir", nil},
		{"workload_bounds", "workload_max_conns_per_uid: 64\nworkload_max_streams_per_uid: 65536\n", "", func(a Agent) bool {
			return a.WorkloadMaxConnsPerUID == 64 && a.WorkloadMaxStreamsPerUID == 65536
		}},
		{"workload_bounds_default", "", "", func(a Agent) bool { return a.WorkloadMaxConnsPerUID == 0 && a.WorkloadMaxStreamsPerUID == 0 }},
		{"workload_conns_negative", "workload_max_conns_per_uid: -1\n", "workload_max_conns_per_uid", nil},
		{"workload_conns_too_many", "workload_max_conns_per_uid: 65537\n", "workload_max_conns_per_uid", nil},
		{"workload_streams_too_many", "workload_max_streams_per_uid: 100000000\n", "workload_max_streams_per_uid", nil},
		{"workload_streams_not_a_number", "workload_max_streams_per_uid: many\n", "workload_max_streams_per_uid", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := ParseAgent(strings.NewReader(tt.in), env)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one naming %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(a) {
				t.Fatalf("unexpected config %+v", a)
			}
		})
	}
}

func FuzzParseAgent(f *testing.F) {
	f.Add("server: a:1\nsocket: /x\n")
	f.Add("health_listen: 127.0.0.1:0\n")
	f.Add("server: [a:1, 'https://b:2']\n")
	f.Fuzz(func(t *testing.T, in string) {
		a, err := ParseAgent(strings.NewReader(in), func(string) string { return "" })
		if err == nil {
			if err := a.Validate(); err != nil {
				t.Fatalf("parsed config does not validate: %v", err)
			}
		}
	})
}

// TestDefaultAgentSocket: root's agent listens in /run, another user's in
// its own runtime directory; a user without one gets no default (never a
// directory such as /tmp that other users can write).
func TestDefaultAgentSocket(t *testing.T) {
	tests := []struct {
		name string
		euid int
		xdg  string
		want string
	}{
		{"root", 0, "/run/user/0", "/run/moatless/agent.sock"},
		{"user_with_runtime_dir", 1000, "/run/user/1000", "/run/user/1000/moatless/agent.sock"},
		{"user_without_runtime_dir", 1000, "", ""},
		{"user_with_relative_runtime_dir", 1000, "run/user", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := func(k string) string {
				if k == "XDG_RUNTIME_DIR" {
					return tt.xdg
				}
				return ""
			}
			if got := DefaultAgentSocket(env, tt.euid); got != tt.want {
				t.Fatalf("DefaultAgentSocket = %q, want %q", got, tt.want)
			}
		})
	}
}

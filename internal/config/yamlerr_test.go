package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigErrorsSpeakYAML: sidecar and agent config errors name the
// file, the line and the field path (with list indexes), suggest the key
// a typo meant, and call YAML YAML (not "error unmarshaling JSON: ...
// Go struct field").
func TestConfigErrorsSpeakYAML(t *testing.T) {
	const sidecarHead = "identity:\n  files: {cert: a.pem, key: b.pem, bundle: c.pem}\nnamespace: prod\n"
	tests := []struct {
		name    string
		role    string // sidecar or agent
		content string
		want    string
		wantNot []string
	}{
		{"typo_suggests_the_key", "sidecar", sidecarHead + "inbound:\n  - listen: \"127.0.0.1:15006\"\n    app: \"127.0.0.1:8080\"\n    protcol: http\n",
			`config: line 7: unknown key "protcol" in inbound[0]; did you mean "protocol"?`, nil},
		{"camel_case_of_a_snake_key", "sidecar", sidecarHead + "inbound: [{listen: \"127.0.0.1:1\", app: \"127.0.0.1:2\"}]\nreloadInterval: 5s\n",
			`line 5: unknown key "reloadInterval" in top level; did you mean "reload_interval"?`, nil},
		{"far_off_key_no_guess", "agent", "server: 127.0.0.1:8443\nwhatever: 1\n",
			`config: line 2: unknown key "whatever" in top level (known keys:`, []string{"did you mean"}},
		{"list_where_a_mapping_is", "sidecar", sidecarHead + "inbound: {listen: x}\n",
			`config: line 4: inbound: want a list, not a YAML mapping`, []string{"JSON", "Go struct"}},
		{"mapping_where_a_string_is", "sidecar", sidecarHead + "inbound:\n  - listen: \"127.0.0.1:1\"\n    app: \"127.0.0.1:2\"\n  - listen: {host: x}\n",
			`config: line 7: inbound[1].listen: want a string, not a YAML mapping`, []string{"JSON", "Go struct"}},
		{"bool_where_a_number_is", "sidecar", sidecarHead + "inbound: [{listen: \"127.0.0.1:1\", app: \"127.0.0.1:2\"}]\nmax_connections: yes\n",
			`config: line 5: max_connections: want a whole number, not a YAML boolean`, []string{"JSON"}},
		{"malformed_yaml", "sidecar", "namespace: [prod\n",
			`config: YAML: line 1: did not find expected ',' or ']'`, []string{"JSON"}},
		{"validation_error_gets_its_line", "sidecar", sidecarHead + "inbound:\n  - listen: \"127.0.0.1:1\"\n    app: \"127.0.0.1:2\"\n  - listen: \"127.0.0.1\"\n    app: \"127.0.0.1:3\"\n",
			`config: line 7: inbound[1].listen: "127.0.0.1" is not host:port`, nil},
		{"agent_validation_error_gets_its_line", "agent", "server: 127.0.0.1:8443\njoin_token: a\njoin_token_file: /x\n",
			`join_token and join_token_file: set one, not both`, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), tc.role+".yaml")
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			var err error
			if tc.role == "sidecar" {
				_, err = LoadSidecar(path)
			} else {
				_, err = LoadAgent(path, func(string) string { return "" })
			}
			if err == nil {
				t.Fatal("accepted")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, path+": ") || !strings.Contains(msg, tc.want) {
				t.Fatalf("error %q\nwant %q after the file name", msg, tc.want)
			}
			for _, bad := range tc.wantNot {
				if strings.Contains(msg, bad) {
					t.Fatalf("error %q has %q", msg, bad)
				}
			}
		})
	}
}

// FuzzLineOfPath: any field path against any YAML: no panic, and a line
// found is a line of the input.
func FuzzLineOfPath(f *testing.F) {
	f.Add([]byte("inbound:\n  - listen: x\n"), "inbound[0].listen")
	f.Add([]byte("a: {b: [1, {c: 2}]}\n"), `a.b[1].c`)
	f.Add([]byte("m: {\"k\": {x: 1}}\n"), `m["k"].x`)
	f.Add([]byte("a: &x {b: 1}\nc: *x\n"), "c.b")
	f.Add([]byte("a: 1\n"), "a[")
	f.Add([]byte("a: 1\n"), `["`)
	f.Fuzz(func(t *testing.T, b []byte, path string) {
		if len(b) > 4096 {
			return
		}
		err := withLines(b, &testErr{"config: " + path + ": bad"})
		if err == nil {
			t.Fatal("error lost")
		}
		lines := strings.Count(string(b), "\n") + 1
		if le, ok := err.(*lineError); ok && (le.line < 1 || le.line > lines) {
			t.Fatalf("line %d of a %d-line input", le.line, lines)
		}
	})
}

type testErr struct{ s string }

func (e *testErr) Error() string { return e.s }

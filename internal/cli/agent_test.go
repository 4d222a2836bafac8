package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: func(k string) string { return env[k] }}
	code := e.main(context.Background(), args)
	return code, out.String(), errb.String()
}

// mustCLI is runCLI for a command that must succeed: it returns stdout.
func mustCLI(t *testing.T, env map[string]string, args ...string) string {
	t.Helper()
	code, out, stderr := runCLI(t, env, args...)
	if code != ExitOK {
		t.Fatalf("%v: exit %d: %s %s", args, code, out, stderr)
	}
	return out
}

func TestAgentCommandRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)
	cfg := filepath.Join(dir, "agent.yaml")
	os.WriteFile(cfg, []byte("sockt: /x\n"), 0o600)
	env := map[string]string{"HOME": dir}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown_flag", []string{"agent", "--nope"}, "flag provided but not defined"},
		{"bad_server", []string{"agent", "--server", "nohost", "--socket", dir + "/a.sock"}, "server"},
		{"public_health_listener", []string{"agent", "--health-listen", "0.0.0.0:1", "--socket", dir + "/a.sock"}, "loopback"},
		{"token_without_bundle", []string{"agent", "--join-token", "x", "--socket", dir + "/a.sock"}, "--trust-bundle is required"},
		{"bundle_not_pem", []string{"agent", "--join-token", "x", "--trust-bundle", notPEM, "--socket", dir + "/a.sock"}, "no PEM certificate"},
		{"missing_token_file", []string{"agent", "--join-token-file", dir + "/none", "--socket", dir + "/a.sock"}, "read join token"},
		{"config_unknown_key", []string{"agent", "--config", cfg}, "sockt"},
		{"no_credential", []string{"agent", "--socket", dir + "/a.sock", "--data-dir", dir + "/d", "--health-listen", "off"}, "no join token"},
		{"workload_conns_zero", []string{"agent", "--workload-max-conns-per-uid", "0", "--socket", dir + "/a.sock"}, "--workload-max-conns-per-uid 0: want 1 to 65536"},
		{"workload_conns_negative", []string{"agent", "--workload-max-conns-per-uid", "-3", "--socket", dir + "/a.sock"}, "--workload-max-conns-per-uid -3"},
		{"workload_streams_too_many", []string{"agent", "--workload-max-streams-per-uid", "70000", "--socket", dir + "/a.sock"}, "--workload-max-streams-per-uid 70000: want 1 to 65536"},
		{"workload_streams_not_a_number", []string{"agent", "--workload-max-streams-per-uid", "lots", "--socket", dir + "/a.sock"}, "invalid value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, env, tt.args...)
			if code != ExitUsage || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, stderr, ExitUsage, tt.want)
			}
		})
	}
}

func TestSVIDCommandErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown_subcommand", []string{"svid", "nope"}, ExitUsage, "unknown subcommand"},
		{"bad_output", []string{"svid", "fetch", "-o", "yaml"}, ExitUsage, "-o must be"},
		{"jwt_without_audience", []string{"svid", "jwt", "--socket", dir + "/s"}, ExitUsage, "--audience is required"},
		{"jwt_bad_spiffe_id", []string{"svid", "jwt", "--audience", "a", "--spiffe-id", "http://x"}, ExitUsage, "--spiffe-id"},
		{"validate_without_token", []string{"svid", "validate", "--audience", "a"}, ExitUsage, "no token"},
		{"no_agent", []string{"svid", "fetch", "--socket", dir + "/none.sock", "--timeout", "2s"}, ExitFailure, "is \"moatless agent\" running"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, nil, tt.args...)
			if code != tt.code || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, stderr, tt.code, tt.want)
			}
		})
	}
}

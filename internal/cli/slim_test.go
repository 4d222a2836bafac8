package cli

import (
	"bytes"
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/cli/dataplane"
	"github.com/moatless/moatless/internal/testpki"
)

// runSlim runs moatless-sidecar's Main in-process, as runCLI runs moatless.
func runSlim(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &dataplane.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: func(k string) string { return env[k] }}
	code := e.Main(context.Background(), args)
	return code, out.String(), errb.String()
}

// logTime is the time of a JSON or text log line: the one thing two runs
// of the same command do not share.
var logTime = regexp.MustCompile(`"time":"[^"]*"|time=\S+`)

// TestSlimTakesTheSameFlags: moatless-sidecar takes exactly what "moatless
// sidecar" takes — its flags as they are, or after "sidecar" — and answers
// the same, byte for byte: help, -check of a good and a bad config, bad
// flags; so does "version". One config, three command lines.
func TestSlimTakesTheSameFlags(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "example.org")
	f := ca.WriteFiles(t, dir, "orders", ca.SVID(t, "spiffe://example.org/ns/prod/sa/orders", time.Hour))
	pol := writeFile(t, dir, "policies.yaml", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow, namespace: prod}\nspec:\n  action: ALLOW\n  rules:\n  - to: [{operation: {methods: [GET]}}]\n")
	badPol := writeFile(t, dir, "bad.yaml", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: prod}\nspec: {action: MAYBE}\n")
	conf := func(name, policy string) string {
		return writeFile(t, dir, name, "identity:\n  files: {cert: "+f.Cert+", key: "+f.Key+", bundle: "+f.Bundle+"}\nnamespace: prod\ninbound:\n  - {listen: \"127.0.0.1:0\", app: \"127.0.0.1:1\"}\npolicy:\n  files: ["+policy+"]\n")
	}
	good, bad := conf("good.yaml", pol), conf("bad-policy.yaml", badPol)
	unknownKey := writeFile(t, dir, "unknown.yaml", "namespace: prod\nlisten_everywhere: true\n")

	tests := []struct {
		name     string
		args     []string // after "moatless sidecar"
		wantCode int
		want     string // in stdout or stderr
	}{
		{"help", []string{"-h"}, ExitOK, "-config file"},
		{"check_good_config", []string{"-config", good, "-check"}, ExitOK, "config OK"},
		{"check_text_logs", []string{"-config", good, "-check", "-log-format", "text", "-log-level", "debug"}, ExitOK, "config OK"},
		{"check_bad_policy", []string{"-config", bad, "-check"}, ExitUsage, "MAYBE"},
		{"check_unknown_config_key", []string{"-config", unknownKey, "-check"}, ExitUsage, "listen_everywhere"},
		{"missing_config", []string{"-check"}, ExitUsage, "-config is required"},
		{"unknown_flag", []string{"-config", good, "-listen", "0.0.0.0:80"}, ExitUsage, "flag provided but not defined: -listen"},
		{"bad_log_format", []string{"-config", good, "-check", "-log-format", "xml"}, ExitUsage, "-log-format must be json or text"},
		{"positional_argument", []string{"-config", good, "-check", "extra"}, ExitUsage, `unexpected argument "extra"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := runCLI(t, nil, append([]string{"sidecar"}, tc.args...)...)
			stderr = logTime.ReplaceAllString(stderr, "TIME")
			if code != tc.wantCode || !strings.Contains(out+stderr, tc.want) {
				t.Fatalf("moatless sidecar: exit %d, stdout %q, stderr %q; want exit %d with %q", code, out, stderr, tc.wantCode, tc.want)
			}
			for _, slim := range [][]string{tc.args, append([]string{"sidecar"}, tc.args...)} {
				sc, sout, serr := runSlim(t, nil, slim...)
				serr = logTime.ReplaceAllString(serr, "TIME")
				if sc != code || sout != out || serr != stderr {
					t.Errorf("moatless-sidecar %q: exit %d, stdout %q, stderr %q; moatless sidecar: exit %d, stdout %q, stderr %q",
						slim, sc, sout, serr, code, out, stderr)
				}
			}
		})
	}

	// version: the same function behind both.
	for _, args := range [][]string{{"version", "-o", "json"}, {"version", "-o", "yaml"}, {"version", "-nope"}} {
		code, out, stderr := runCLI(t, nil, args...)
		sc, sout, serr := runSlim(t, nil, args...)
		if sc != code || sout != out || serr != stderr {
			t.Errorf("%q: moatless-sidecar exit %d, stdout %q, stderr %q; moatless exit %d, stdout %q, stderr %q", args, sc, sout, serr, code, out, stderr)
		}
	}
}

// TestSlimCommands: what moatless-sidecar answers that is its own: the
// overview, and a command it does not carry (it names moatless).
func TestSlimCommands(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
		wantErr  string
	}{
		{"no_arguments_print_the_overview", nil, ExitUsage, "", "Usage: moatless-sidecar -config FILE"},
		{"help", []string{"help"}, ExitOK, "sidecar  run the mTLS sidecar", ""},
		{"version_flag", []string{"--version"}, ExitOK, "moatless ", ""},
		{"server_is_not_here", []string{"server"}, ExitUsage, "", `unknown command "server"; moatless-sidecar runs sidecar and version`},
		{"gateway_is_not_here", []string{"gateway", "-config", filepath.Join(t.TempDir(), "gw.yaml")}, ExitUsage, "", `unknown command "gateway"`},
		{"agent_is_not_here", []string{"agent", "-h"}, ExitUsage, "", `unknown command "agent"; moatless-sidecar runs sidecar and version (run "moatless-sidecar help"); the other commands, the agent among them, are in moatless`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := runSlim(t, nil, tc.args...)
			if code != tc.wantCode || !strings.Contains(out, tc.wantOut) || !strings.Contains(stderr, tc.wantErr) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d, stdout with %q, stderr with %q", code, out, stderr, tc.wantCode, tc.wantOut, tc.wantErr)
			}
		})
	}
}

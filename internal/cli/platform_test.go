package cli

import (
	"strings"
	"testing"

	"github.com/moatless/moatless/internal/cli/dataplane"
)

// TestLinuxOnlyCommands: outside Linux the long-running commands say at
// start that they run on Linux only, and exit 1 before touching anything;
// their -h and "sidecar -check" still work, and so do the admin commands
// (here: one that fails later, on the missing credential, not on the
// system).
func TestLinuxOnlyCommands(t *testing.T) {
	defer func(g string) { dataplane.GOOS = g }(dataplane.GOOS)
	dataplane.GOOS = "darwin"
	dir := t.TempDir()
	env := map[string]string{"HOME": dir, "MOATLESS_DATA_DIR": dir}
	for _, cmd := range []string{"server", "agent", "sidecar", "authz", "demo"} {
		t.Run(cmd, func(t *testing.T) {
			args := []string{cmd}
			switch cmd {
			case "sidecar":
				cfg := writeFile(t, dir, "sidecar.yaml", "identity:\n  workload_api: unix:///nonexistent.sock\nnamespace: prod\ninbound:\n  - {listen: \"127.0.0.1:0\", app: \"127.0.0.1:1\"}\n")
				args = append(args, "-config", cfg)
			case "authz":
				args = append(args, "-f", dir)
			}
			code, out, stderr := runCLI(t, env, args...)
			if code != ExitFailure || !strings.Contains(stderr, "moatless "+cmd+" runs on Linux only (this is darwin/") || out != "" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 saying Linux only", code, out, stderr)
			}
			if code, _, stderr := runCLI(t, env, cmd, "-h"); code != ExitOK || strings.Contains(stderr, "Linux only") {
				t.Fatalf("%s -h: exit %d, stderr %q", cmd, code, stderr)
			}
		})
	}
	t.Run("sidecar_check", func(t *testing.T) {
		cfg := writeFile(t, dir, "check.yaml", "identity:\n  workload_api: unix:///nonexistent.sock\nnamespace: prod\ninbound:\n  - {listen: \"127.0.0.1:0\", app: \"127.0.0.1:1\"}\n")
		if code, out, stderr := runCLI(t, env, "sidecar", "-config", cfg, "-check"); code != ExitOK || !strings.Contains(out, "config OK") {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out, stderr)
		}
	})
	t.Run("admin_command", func(t *testing.T) {
		code, _, stderr := runCLI(t, env, "entry", "list")
		if code != ExitUsage || strings.Contains(stderr, "Linux only") {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
	})
}

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSharedHostDefaults: what two instances on one host would share, or
// what another local user could control, is refused with a message that
// names the setting: a socket or data directory another user can write
// or owns, a second agent on the same socket, health address or data directory,
// and a second sidecar on the default admin address.
func TestSharedHostDefaults(t *testing.T) {
	p := startPlane(t)
	bundle := filepath.Join(p.dataDir, "bundle.pem")
	agentArgs := func(sock, health, data string) []string {
		return []string{"agent", "--server", p.addr, "--trust-bundle", bundle, "--socket", sock, "--data-dir", data, "--health-listen", health}
	}
	first := p.startAgent(p.joinToken(agentID), t.TempDir())

	// A directory of its own others may write is refused sticky or not;
	// one above it only when it is not sticky (/tmp is fine).
	worldWritableSticky := shortTempDir(t)
	if err := os.Chmod(worldWritableSticky, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	worldWritable := shortTempDir(t)
	if err := os.Chmod(worldWritable, 0o777); err != nil {
		t.Fatal(err)
	}
	otherUsers := shortTempDir(t)
	if os.Geteuid() == 0 {
		os.Chown(otherUsers, 4242, 4242)
	}
	usedData := filepath.Join(p.dataDir, "agent-used")
	held := start(t, "agent-holding-data", append(p.env, "MOATLESS_JOIN_TOKEN="+p.joinToken("spiffe://e2e.test/agent/node3")),
		agentArgs(filepath.Join(shortTempDir(t), "a.sock"), "off", usedData)...)
	waitFor(t, 20*time.Second, "the data directory to be held", func() bool {
		_, err := os.Stat(filepath.Join(usedData, "node-svid.pem"))
		return err == nil || held.exited()
	})

	tests := []struct {
		name string
		args []string
		want []string
		root bool
	}{
		{"world_writable_socket_dir", agentArgs(filepath.Join(worldWritableSticky, "a.sock"), "off", t.TempDir()),
			[]string{"socket directory " + worldWritableSticky + " is writable by others", "--socket"}, false},
		{"socket_dir_of_another_user", agentArgs(filepath.Join(otherUsers, "a.sock"), "off", t.TempDir()),
			[]string{"socket directory " + otherUsers + " belongs to uid 4242", "--socket"}, true},
		{"second_agent_same_socket", agentArgs(first.sock, "off", t.TempDir()),
			[]string{"another process is serving " + first.sock, "--socket"}, false},
		{"second_agent_same_health", agentArgs(filepath.Join(shortTempDir(t), "a.sock"), first.health, t.TempDir()),
			[]string{"address already in use", "--health-listen"}, false},
		{"world_writable_data_dir", agentArgs(filepath.Join(shortTempDir(t), "a.sock"), "off", worldWritableSticky),
			[]string{"data directory " + worldWritableSticky + " is writable by others", "--data-dir"}, false},
		{"data_dir_of_another_user", agentArgs(filepath.Join(shortTempDir(t), "a.sock"), "off", otherUsers),
			[]string{"data directory " + otherUsers + " belongs to uid 4242", "--data-dir"}, true},
		{"second_agent_same_data_dir", agentArgs(filepath.Join(shortTempDir(t), "a.sock"), "off", usedData),
			[]string{"uses " + usedData, "--data-dir"}, false},
		// Whoever may rename entries of a directory above could move the
		// agent's directory away and put one of their own in its place.
		{"socket_dir_inside_a_dir_of_another_user", agentArgs(filepath.Join(otherUsers, "moatless", "a.sock"), "off", t.TempDir()),
			[]string{"inside " + otherUsers + ", which belongs to uid 4242", "--socket"}, true},
		{"data_dir_inside_a_writable_dir", agentArgs(filepath.Join(shortTempDir(t), "a.sock"), "off", filepath.Join(worldWritable, "data")),
			[]string{"inside " + worldWritable + ", which others may write", "--data-dir"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.root && os.Geteuid() != 0 {
				t.Skip("needs root to give a directory to another uid")
			}
			a := start(t, "agent-"+tt.name, append(p.env, "MOATLESS_JOIN_TOKEN="+p.joinToken("spiffe://e2e.test/agent/"+tt.name)), tt.args...)
			code := a.exitCode(t, 30*time.Second)
			if code == 0 {
				t.Fatalf("exit 0, want a refusal\n%s", a.out.String())
			}
			// A data directory the agent will not use is a setting to
			// change, not a failure to retry: exit 2, as for one in use.
			if strings.Contains(tt.name, "data_dir") && code != 2 {
				t.Fatalf("exit %d, want 2\n%s", code, a.out.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(a.out.String(), w) {
					t.Fatalf("the refusal does not say %q:\n%s", w, a.out.String())
				}
			}
		})
	}

	t.Run("second_sidecar_default_admin", func(t *testing.T) {
		cfg := func(name string) string {
			path := filepath.Join(t.TempDir(), name+".yaml")
			writeTestFile(t, filepath.Dir(path), name+".yaml", fmt.Sprintf(
				"identity:\n  join: {server: %q, token_file: %s, server_bundle: %s}\noutbound:\n  - {listen: %q, upstream: \"127.0.0.1:1\", spiffe_id: %q}\n",
				p.addr, p.joinTokenFile("spiffe://e2e.test/ns/prod/sa/"+name), bundle, freeAddr(t), scOrdersID))
			return path
		}
		one := start(t, "sidecar-one", nil, "sidecar", "-config", cfg("one"))
		waitFor(t, 20*time.Second, "the first sidecar's default admin listener", func() bool {
			return strings.Contains(one.out.String(), `"admin listening"`) || one.exited()
		})
		if one.exited() {
			t.Skipf("the default admin address 127.0.0.1:15000 is taken on this host:\n%s", one.out.String())
		}
		two := start(t, "sidecar-two", nil, "sidecar", "-config", cfg("two"))
		if code := two.exitCode(t, 30*time.Second); code != 2 {
			t.Fatalf("second sidecar on the default admin address: exit %d, want 2\n%s", code, two.out.String())
		}
		// The reason is in the JSON log line "stopped" (quotes escaped).
		if out := strings.ReplaceAll(two.out.String(), `\"`, `"`); !strings.Contains(out, "set admin: to a free loopback address") || !strings.Contains(out, `admin: "off"`) {
			t.Fatalf("no hint to set admin:\n%s", out)
		}
	})
}

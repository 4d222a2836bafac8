package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNodeRefusesDataDirOthersControl: a data directory that another
// local user may write, owns, or that is a symbolic link is refused before
// anything in it is opened, read or written. Whoever controls it could
// otherwise plant a node SVID with the trust bundle the next start
// authenticates the server with, or point "lock" at a file the agent
// (often root) would truncate and write its pid into.
func TestNodeRefusesDataDirOthersControl(t *testing.T) {
	f := newFakeServer(t)
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string) string // returns the --data-dir
		root  bool
		want  string
	}{
		{"world_writable", func(t *testing.T, dir string) string {
			os.Chmod(dir, 0o777)
			return dir
		}, false, "is writable by others (mode 0777)"},
		{"world_writable_sticky", func(t *testing.T, dir string) string {
			os.Chmod(dir, 0o777|os.ModeSticky)
			return dir
		}, false, "is writable by others"},
		{"group_writable", func(t *testing.T, dir string) string {
			os.Chmod(dir, 0o770)
			return dir
		}, false, "is writable by others (mode 0770)"},
		{"symlink_to_a_private_dir", func(t *testing.T, dir string) string {
			link := filepath.Join(t.TempDir(), "link")
			if err := os.Symlink(dir, link); err != nil {
				t.Fatal(err)
			}
			return link
		}, false, "is a symbolic link"},
		{"owned_by_another_user", func(t *testing.T, dir string) string {
			if err := os.Chown(dir, 4242, 4242); err != nil {
				t.Fatal(err)
			}
			return dir
		}, true, "belongs to uid 4242"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.root && os.Geteuid() != 0 {
				t.Skip("needs root to give a directory to another uid")
			}
			dir := t.TempDir()
			victim := filepath.Join(t.TempDir(), "victim")
			if err := os.WriteFile(victim, []byte("precious\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(victim, filepath.Join(dir, "lock")); err != nil {
				t.Fatal(err)
			}
			f.mu.Lock()
			f.tokens["tok-"+tt.name] = nodeID
			f.mu.Unlock()
			n, err := NewNode(f.nodeConfig(t, "tok-"+tt.name, tt.setup(t, dir)))
			if err != nil {
				t.Fatal(err)
			}
			defer n.Close()
			err = n.Attest(context.Background())
			if !errors.Is(err, ErrDataDirUnsafe) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "--data-dir") {
				t.Fatalf("Attest = %v, want ErrDataDirUnsafe saying %q and naming --data-dir", err, tt.want)
			}
			if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
				t.Fatalf("the file behind the planted lock link now holds %q", b)
			}
			f.mu.Lock()
			unspent := f.tokens["tok-"+tt.name] != ""
			f.mu.Unlock()
			if !unspent {
				t.Fatal("the join token was spent on a refused data directory")
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 1 {
				t.Fatalf("the refused directory holds %d entries, want only the planted link", len(entries))
			}
		})
	}
}

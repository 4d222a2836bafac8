package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadSecretFileModes: a secret file is 0600 (or 0400); group or
// other access is refused, except the Kubernetes Secret volume shape
// (root-owned 0440 on a read-only mount), which a writable temp
// directory can never be.
func TestReadSecretFileModes(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		mode os.FileMode
		ok   bool
	}{
		{"owner_only", 0o600, true},
		{"owner_read_only", 0o400, true},
		{"group_readable_on_a_writable_fs", 0o440, false},
		{"group_readable_0640", 0o640, false},
		{"other_readable", 0o604, false},
		{"group_writable", 0o620, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name)
			if err := os.WriteFile(p, []byte("k"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, tc.mode); err != nil {
				t.Fatal(err)
			}
			_, err := readSecretFile(p, 10)
			if tc.ok != (err == nil) {
				t.Fatalf("mode %04o: err = %v, want ok=%v", tc.mode, err, tc.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "chmod 600") {
				t.Fatalf("error does not say what to do: %v", err)
			}
		})
	}
}

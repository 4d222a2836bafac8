//go:build unix

package server

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// DATA_DIR/ca-revoked is read at every start and every bundle
// publication. Something other than a regular file in its place (a FIFO
// that no one writes, a device) is refused at once: it would block the
// start for ever or fill memory. A symbolic link to a regular file is
// read as that file.
func TestRevokedAuthoritiesFileMustBeARegularFile(t *testing.T) {
	id := strings.Repeat("ab", 20)
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, path string)
		want  []string
		err   string
	}{
		{"fifo", func(t *testing.T, path string) {
			if err := syscall.Mkfifo(path, 0o644); err != nil {
				t.Fatal(err)
			}
		}, nil, "not a regular file"},
		{"device", func(t *testing.T, path string) {
			if err := os.Symlink("/dev/zero", path); err != nil {
				t.Fatal(err)
			}
		}, nil, "not a regular file"},
		{"too_large", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte(strings.Repeat(id+"\n", maxRevokedFileSize/41+1)), 0o644); err != nil {
				t.Fatal(err)
			}
		}, nil, "at most"},
		{"symlink_to_a_file", func(t *testing.T, path string) {
			target := filepath.Join(t.TempDir(), "ids")
			if err := os.WriteFile(target, []byte(id+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}, []string{id}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(t, filepath.Join(dir, RevokedAuthoritiesFile))
			type result struct {
				ids []string
				err error
			}
			done := make(chan result, 1)
			go func() {
				ids, err := readRevokedAuthorities(dir)
				done <- result{ids, err}
			}()
			var r result
			select {
			case r = <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("reading ca-revoked did not return")
			}
			if tc.err != "" {
				if r.err == nil || !strings.Contains(r.err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", r.err, tc.err)
				}
				return
			}
			if r.err != nil || len(r.ids) != 1 || r.ids[0] != id {
				t.Fatalf("= %v, %v; want %v", r.ids, r.err, tc.want)
			}
		})
	}
}

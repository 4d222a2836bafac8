package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSecretFilesStayPrivate: a command that writes a secret (the admin
// private key, the TOTP QR code) to a path that already exists must not
// leave it readable by others nor write through a link planted there.
// Before, os.WriteFile kept an existing file's mode (the QR code of a
// user's TOTP key stayed 0644) and followed symlinks (the admin key was
// written into whatever file a link at DIR/admin-key.pem pointed to, then
// chmod-ed only afterwards).
func TestSecretFilesStayPrivate(t *testing.T) {
	env := startServer(t)
	if code, _, stderr := runCLI(t, env, "oauth", "user", "create", "--name", "alice", "--password-file", writeFile(t, t.TempDir(), "pw", "a long enough password\n")); code != ExitOK {
		t.Fatalf("user create: %s", stderr)
	}
	cases := []struct {
		name string
		// plant prepares dir and returns the args and the secret file.
		plant func(t *testing.T, dir string) ([]string, string)
		// elsewhere is a file outside the command's target that must stay
		// untouched ("" when none).
		elsewhere string
	}{
		{"qr_file_existing_world_readable", func(t *testing.T, dir string) ([]string, string) {
			qr := writeFile(t, dir, "qr.png", "old")
			if err := os.Chmod(qr, 0o644); err != nil {
				t.Fatal(err)
			}
			return []string{"oauth", "user", "mfa-enroll", "alice", "--qr-file", qr, "-o", "json"}, qr
		}, ""},
		{"admin_key_existing_world_readable", func(t *testing.T, dir string) ([]string, string) {
			key := writeFile(t, dir, "admin-key.pem", "old")
			if err := os.Chmod(key, 0o644); err != nil {
				t.Fatal(err)
			}
			return []string{"ca", "issue-admin", "--out", dir}, key
		}, ""},
		{"admin_key_symlink_planted", func(t *testing.T, dir string) ([]string, string) {
			key := filepath.Join(dir, "admin-key.pem")
			if err := os.Symlink(filepath.Join(filepath.Dir(dir), "planted"), key); err != nil {
				t.Fatal(err)
			}
			return []string{"ca", "issue-admin", "--out", dir}, key
		}, "planted"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "out")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if tc.elsewhere != "" {
				if err := os.WriteFile(filepath.Join(root, tc.elsewhere), []byte("attacker's file\n"), 0o666); err != nil {
					t.Fatal(err)
				}
			}
			args, secret := tc.plant(t, dir)
			if code, _, stderr := runCLI(t, env, args...); code != ExitOK {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			fi, err := os.Lstat(secret)
			if err != nil {
				t.Fatal(err)
			}
			if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
				t.Fatalf("%s: mode %v, want a regular file with 0600", secret, fi.Mode())
			}
			if b, _ := os.ReadFile(secret); string(b) == "old" {
				t.Fatalf("%s was not rewritten", secret)
			}
			if tc.elsewhere != "" {
				if b, _ := os.ReadFile(filepath.Join(root, tc.elsewhere)); strings.Contains(string(b), "PRIVATE KEY") {
					t.Fatalf("the secret was written through the planted link into %s", tc.elsewhere)
				}
			}
		})
	}
}

//go:build unix

package privdir

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	use := Use{What: "data directory", Setting: "--data-dir", Risk: "replace the key"}
	tests := []struct {
		name  string
		setup func(t *testing.T) string
		root  bool
		want  string // "" accepts
	}{
		{"private_0700", func(t *testing.T) string { return t.TempDir() }, false, ""},
		{"private_0755", func(t *testing.T) string {
			d := t.TempDir()
			os.Chmod(d, 0o755)
			return d
		}, false, ""},
		{"group_writable", func(t *testing.T) string {
			d := t.TempDir()
			os.Chmod(d, 0o775)
			return d
		}, false, "data directory %s is writable by others (mode 0775): another user could replace the key; chmod go-w %s or choose another --data-dir"},
		// Sticky or not, a directory of its own others may write is
		// refused: they can add entries (a planted file the process
		// later opens by name).
		{"world_writable_sticky", func(t *testing.T) string {
			d := t.TempDir()
			chmodVerified(t, d, 0o777|os.ModeSticky)
			return d
		}, false, "is writable by others (mode 0777)"},
		{"symlink_to_private_dir", func(t *testing.T) string {
			l := filepath.Join(t.TempDir(), "l")
			os.Symlink(t.TempDir(), l)
			return l
		}, false, "data directory %s is a symbolic link: whoever controls its target could replace the key; give --data-dir a real directory"},
		{"a_file", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "f")
			os.WriteFile(p, nil, 0o600)
			return p
		}, false, "data directory %s is not a directory"},
		{"another_users", func(t *testing.T) string {
			d := t.TempDir()
			if err := os.Chown(d, 4242, 4242); err != nil {
				t.Fatal(err)
			}
			return d
		}, true, "data directory %s belongs to uid 4242, not to this process's user (uid 0): whoever owns it could replace the key; remove it or choose another --data-dir"},
		// Whoever may rename entries of a directory above can move the
		// directory away and put their own in its place.
		{"parent_group_writable", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "p")
			os.Mkdir(p, 0o775)
			os.Chmod(p, 0o775)
			d := filepath.Join(p, "d")
			os.Mkdir(d, 0o700)
			return d
		}, false, "data directory %s is inside %s/.., which others may write (mode 0775, not sticky): another user could replace the data directory with their own and replace the key; chmod go-w"},
		{"parent_world_writable_sticky_like_tmp", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "p")
			os.Mkdir(p, 0o777)
			chmodVerified(t, p, os.ModeSticky|0o777)
			d := filepath.Join(p, "d")
			os.Mkdir(d, 0o700)
			return d
		}, false, ""},
		{"parent_world_writable_not_sticky", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "p")
			os.Mkdir(p, 0o777)
			chmodVerified(t, p, 0o777)
			d := filepath.Join(p, "d")
			os.Mkdir(d, 0o700)
			return d
		}, false, "data directory %s is inside %s/.., which others may write (mode 0777, not sticky)"},
		{"grandparent_of_another_user", func(t *testing.T) string {
			g := filepath.Join(t.TempDir(), "g")
			os.Mkdir(g, 0o755)
			if err := os.Chown(g, 4242, 4242); err != nil {
				t.Fatal(err)
			}
			d := filepath.Join(g, "p", "d")
			os.MkdirAll(d, 0o700)
			return d
		}, true, "is inside %s/../.., which belongs to uid 4242: whoever owns it could replace the data directory with their own"},
		{"parent_reached_through_a_link_into_a_writable_directory", func(t *testing.T) string {
			base := t.TempDir()
			w := filepath.Join(base, "w")
			os.Mkdir(w, 0o777)
			os.Chmod(w, 0o777)
			os.Mkdir(filepath.Join(w, "p"), 0o755)
			os.Symlink(filepath.Join(w, "p"), filepath.Join(base, "link"))
			d := filepath.Join(base, "link", "d")
			os.Mkdir(d, 0o700)
			return d
		}, false, "which others may write (mode 0777, not sticky)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.root && os.Geteuid() != 0 {
				t.Skip("needs root to give a directory to another uid")
			}
			dir := tt.setup(t)
			err := Check(dir, use)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Check = %v, want nil", err)
				}
				return
			}
			want := strings.ReplaceAll(tt.want, "%s/../..", filepath.Dir(filepath.Dir(dir)))
			want = strings.ReplaceAll(want, "%s/..", filepath.Dir(dir))
			want = strings.ReplaceAll(want, "%s", dir)
			if !errors.Is(err, ErrNotPrivate) || !strings.Contains(err.Error(), want) {
				t.Fatalf("Check = %v, want ErrNotPrivate saying %q", err, want)
			}
		})
	}
	t.Run("missing", func(t *testing.T) {
		if err := Check(filepath.Join(t.TempDir(), "no"), use); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Check = %v, want os.ErrNotExist", err)
		}
	})
}

// chmodVerified sets p's mode and fails the test unless the permission and
// sticky bits then read back as asked. os.FileMode's sticky bit is
// os.ModeSticky: os.Chmod(p, 0o1777) silently sets a plain 0777, and a
// case named sticky would test a directory that is not.
func chmodVerified(t *testing.T, p string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode() & (os.ModePerm | os.ModeSticky); got != mode {
		t.Fatalf("chmod %s %v: mode reads %v", p, mode, got)
	}
}

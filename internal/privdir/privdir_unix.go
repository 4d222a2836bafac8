//go:build unix

package privdir

import (
	"fmt"
	"os"
	"syscall"
)

// Check refuses dir (an error that is ErrNotPrivate, with a message that names
// the directory, the problem and u.Setting) unless it is a directory
// itself rather than a symbolic link to one, owned by the effective user,
// and writable by neither group nor others. A missing directory is the
// os.ErrNotExist of Lstat. Check reads only dir's own inode: the caller
// creates dir first (0700) and checks it after, so a directory another
// user made in the meantime is refused too.
func Check(dir string, u Use) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("%s: %w", u.What, err)
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return refusal("%s %s is a symbolic link: whoever controls its target could %s; give %s a real directory", u.What, dir, u.Risk, u.Setting)
	}
	if !fi.IsDir() {
		return refusal("%s %s is not a directory", u.What, dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if euid := os.Geteuid(); int(st.Uid) != euid {
		return refusal("%s %s belongs to uid %d, not to this process's user (uid %d): whoever owns it could %s; remove it or choose another %s", u.What, dir, st.Uid, euid, u.Risk, u.Setting)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return refusal("%s %s is writable by others (mode %04o): another user could %s; chmod go-w %s or choose another %s", u.What, dir, perm, u.Risk, dir, u.Setting)
	}
	return nil
}

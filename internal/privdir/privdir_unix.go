//go:build unix

package privdir

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// Check refuses dir (an error that is ErrNotPrivate, with a message that names
// the directory, the problem and u.Setting) unless it is a directory
// itself rather than a symbolic link to one, owned by the effective user,
// and writable by neither group nor others; and unless every directory
// above it, along the path given and along the path its parent resolves
// to, belongs to root or the effective user and is writable by neither
// group nor others unless it is sticky (as /tmp): whoever may rename
// entries of a directory above can move dir away and put one of their own
// in its place. A missing directory is the os.ErrNotExist of Lstat. The
// caller creates dir first (0700) and checks it after, so a directory
// another user made in the meantime is refused too.
func Check(dir string, u Use) error {
	if err := checkOwn(dir, u); err != nil {
		return err
	}
	return checkAbove(dir, u)
}

// checkAbove checks the directories above dir (see Check).
func checkAbove(dir string, u Use) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("%s: %w", u.What, err)
	}
	paths := []string{abs}
	if real, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil && real != filepath.Dir(abs) {
		paths = append(paths, filepath.Join(real, filepath.Base(abs)))
	}
	euid := os.Geteuid()
	for _, p := range paths {
		for a := filepath.Dir(p); ; a = filepath.Dir(a) {
			fi, err := os.Lstat(a)
			if err != nil {
				return fmt.Errorf("%s: %w", u.What, err)
			}
			// A symbolic link cannot be changed, only replaced through
			// its parent (checked next); its target is on the resolved
			// path.
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode()&os.ModeSymlink == 0 {
				if st.Uid != 0 && int(st.Uid) != euid {
					return refusal("%s %s is inside %s, which belongs to uid %d: whoever owns it could replace the %s with their own and %s; choose another %s", u.What, dir, a, st.Uid, u.What, u.Risk, u.Setting)
				}
				if perm := fi.Mode().Perm(); perm&0o022 != 0 && fi.Mode()&os.ModeSticky == 0 {
					return refusal("%s %s is inside %s, which others may write (mode %04o, not sticky): another user could replace the %s with their own and %s; chmod go-w %s or choose another %s", u.What, dir, a, perm, u.What, u.Risk, a, u.Setting)
				}
			}
			if a == filepath.Dir(a) {
				break
			}
		}
	}
	return nil
}

// checkOwn checks dir's own inode (see Check).
func checkOwn(dir string, u Use) error {
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

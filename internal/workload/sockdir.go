//go:build unix

package workload

import (
	"fmt"
	"os"
	"syscall"
)

// checkSocketDir refuses a socket directory that another local user
// controls. Whoever can write the directory can remove or rename the
// agent's socket and put their own in its place, and whoever created it
// first (in a world-writable /tmp, before the agent started) can serve
// identities of their own to every workload that connects: both would let
// a local user hand out SVIDs. The directory must be a real directory (not
// a symbolic link), owned by the agent's effective user, and writable by
// neither group nor others.
func checkSocketDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("workload: socket directory: %w", err)
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return fmt.Errorf("workload: socket directory %s is a symbolic link: whoever controls its target controls the socket; give --socket in a real directory", dir)
	}
	if !fi.IsDir() {
		return fmt.Errorf("workload: socket directory %s is not a directory", dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if euid := os.Geteuid(); int(st.Uid) != euid {
		return fmt.Errorf("workload: socket directory %s belongs to uid %d, not to this agent's user (uid %d): whoever created it can put a socket of their own there and serve identities; remove it or choose another --socket", dir, st.Uid, euid)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("workload: socket directory %s is writable by others (mode %04o): another user could replace the socket with their own; chmod go-w %s or choose another --socket", dir, perm, dir)
	}
	return nil
}

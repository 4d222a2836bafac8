package server

import (
	"os"
	"slices"
	"syscall"
)

// secretFromReadOnlyMount accepts the one group-readable secret file that
// is still private to this process's pod: a Kubernetes Secret volume with
// fsGroup, whose files the kubelet makes root-owned, group fsGroup, mode
// 0440, on a read-only mount. Only that exact shape passes: owned by root,
// no bit beyond owner and group read, the group one of ours, the file
// system mounted read-only (nobody rewrites the key under us). On a shared
// host a group-readable key stays refused.
func secretFromReadOnlyMount(f *os.File, fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid != 0 || fi.Mode().Perm()&^0o440 != 0 {
		return false
	}
	groups, err := os.Getgroups()
	if err != nil {
		return false
	}
	if int(st.Gid) != os.Getegid() && !slices.Contains(groups, int(st.Gid)) {
		return false
	}
	var fs syscall.Statfs_t
	if err := syscall.Fstatfs(int(f.Fd()), &fs); err != nil {
		return false
	}
	const stRdonly = 0x1 // ST_RDONLY in statfs f_flags
	return fs.Flags&stRdonly != 0
}

package userns

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The ioctls of linux/nsfs.h on a namespace descriptor.
const (
	nsGetUserNS   = 0xb701 // _IO(0xb7, 0x1): the owning user namespace
	nsGetParent   = 0xb702 // _IO(0xb7, 0x2): the parent user namespace
	nsGetOwnerUID = 0xb704 // _IO(0xb7, 0x4): the uid that made a user namespace
)

// DefaultOverflow is the kernel's overflow id when /proc/sys does not say.
const DefaultOverflow = 65534

// Overflow returns the ids the kernel reports for a uid and a gid the
// reader's user namespace does not map (procRoot/sys/kernel/overflowuid,
// overflowgid), DefaultOverflow for one it cannot read.
func Overflow(procRoot string) (uid, gid uint32) {
	read := func(name string) uint32 {
		b, err := os.ReadFile(filepath.Join(procRoot, "sys", "kernel", name))
		if err != nil || len(b) > 32 {
			return DefaultOverflow
		}
		n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
		if err != nil {
			return DefaultOverflow
		}
		return uint32(n)
	}
	return read("overflowuid"), read("overflowgid")
}

// UIDMap is this process's uid_map (procRoot/self/uid_map).
func UIDMap(procRoot string) ([]Range, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, "self", "uid_map"))
	if err != nil {
		return nil, err
	}
	if len(b) > 64<<10 {
		return nil, fmt.Errorf("userns: uid_map of %d bytes", len(b))
	}
	return ParseIDMap(b)
}

// Range is one line of a uid_map or gid_map: Count ids from Inside in the
// namespace are Outside.. in its parent.
type Range struct{ Inside, Outside, Count uint64 }

// Initial reports whether maps map every id to itself: the initial user
// namespace, where no id is unmapped.
func Initial(maps []Range) bool {
	return len(maps) == 1 && maps[0] == Range{0, 0, 1<<32 - 1}
}

// Maps reports whether id is inside one of maps' ranges.
func Maps(maps []Range, id uint32) bool {
	for _, m := range maps {
		if uint64(id) >= m.Inside && uint64(id)-m.Inside < m.Count {
			return true
		}
	}
	return false
}

// ParseIDMap reads a uid_map or gid_map as the kernel writes it: lines of
// "inside outside count", each a 32-bit number. Anything else is an error.
func ParseIDMap(b []byte) ([]Range, error) {
	var out []Range
	for line := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, fmt.Errorf("userns: id map line %q", line)
		}
		var n [3]uint64
		for i := range f {
			v, err := strconv.ParseUint(f[i], 10, 32)
			if err != nil {
				return nil, fmt.Errorf("userns: id map line %q: %w", line, err)
			}
			n[i] = v
		}
		out = append(out, Range{n[0], n[1], n[2]})
	}
	return out, nil
}

// Owner returns, as a new descriptor, the user namespace that owns the
// namespace open as fd. It fails with EPERM when that user namespace is
// outside the caller's.
func Owner(fd int) (int, error) { return unix.IoctlRetInt(fd, nsGetUserNS) }

// Parent returns, as a new descriptor, the parent of the user namespace
// open as fd; EPERM when it is outside the caller's.
func Parent(fd int) (int, error) { return unix.IoctlRetInt(fd, nsGetParent) }

// OwnerUID returns the uid, as the caller's user namespace maps it, of
// the process that made the user namespace open as fd.
func OwnerUID(fd int) (uint32, error) { return unix.IoctlGetUint32(fd, nsGetOwnerUID) }

// Same reports whether the namespace open as fd is the one at path (a
// /proc/PID/ns/ link).
func Same(fd int, path string) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Fstat(fd, &a); err != nil {
		return false, err
	}
	if err := unix.Stat(path, &b); err != nil {
		return false, err
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

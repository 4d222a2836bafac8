package proxy

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// releaseStartupPages drops this process's mappings of the resident pages
// of the executable's read-only mappings (code, read-only data, the pcln
// table) with MADV_DONTNEED. The pages stay in the page cache — shared
// with the agent and other sidecars — and fault back in (a minor fault)
// when the sidecar runs that code again. It returns the bytes advised.
//
// Only mappings that are not writable and hold no private (copy-on-write)
// page are advised: MADV_DONTNEED discards private copies, so a mapping a
// dynamic loader relocated before making it read-only (RELRO in a PIE
// build), or code a debugger patched, is skipped rather than reset to the
// file's bytes.
func releaseStartupPages() (int, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0, fmt.Errorf("proxy: release pages: %w", err)
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0, fmt.Errorf("proxy: release pages: %w", err)
	}
	ranges, err := cleanReadOnlyMappings(f, exe)
	f.Close()
	if err != nil {
		return 0, fmt.Errorf("proxy: release pages: %w", err)
	}
	advised := 0
	for _, r := range ranges {
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, r[0], r[1]-r[0], unix.MADV_DONTNEED); errno != 0 {
			return advised, fmt.Errorf("proxy: release pages: madvise: %w", errno)
		}
		advised += int(r[1] - r[0])
	}
	return advised, nil
}

// cleanReadOnlyMappings reads /proc/PID/smaps and returns the [start, end)
// address ranges of the mappings of path that are not writable and have no
// anonymous (copy-on-write) pages.
func cleanReadOnlyMappings(r io.Reader, path string) ([][2]uintptr, error) {
	var out [][2]uintptr
	var cur [2]uintptr
	candidate := false
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if name, rest, ok := strings.Cut(fields[0], "-"); ok && !strings.HasSuffix(fields[0], ":") {
			// A mapping header: "start-end perms offset dev inode [path]".
			candidate = false
			lo, err1 := strconv.ParseUint(name, 16, 64)
			hi, err2 := strconv.ParseUint(rest, 16, 64)
			if err1 != nil || err2 != nil || hi <= lo || len(fields) < 6 || len(fields[1]) < 4 {
				continue
			}
			if fields[5] != path || fields[1][1] == 'w' || fields[1][3] != 'p' {
				continue
			}
			cur, candidate = [2]uintptr{uintptr(lo), uintptr(hi)}, true
			continue
		}
		if candidate && fields[0] == "Anonymous:" && len(fields) >= 2 {
			candidate = false
			if kb, err := strconv.ParseUint(fields[1], 10, 64); err == nil && kb == 0 {
				out = append(out, cur)
			}
		}
	}
	return out, sc.Err()
}

//go:build unix

package workload

import "syscall"

// defaultMaxConns is half of the descriptors the agent's RLIMIT_NOFILE
// leaves after a quarter of it, at most 1,024, kept for its own use (each
// connection takes two: the socket and a pidfd).
func defaultMaxConns() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == 0 {
		return 256
	}
	limit := int(min(rl.Cur, 1<<30))
	return max((limit-min(limit/4, 1024))/2, 16)
}

//go:build !unix

package workload

import "errors"

// checkSocketDir cannot tell who owns a directory here; the agent serves
// the Workload API on Linux only (moatless agent says so at start).
func checkSocketDir(string) error {
	return errors.New("workload: the Workload API socket is served on Linux only")
}

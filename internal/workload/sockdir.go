//go:build unix

package workload

import (
	"fmt"

	"github.com/moatless/moatless/internal/privdir"
)

// checkSocketDir refuses a socket directory that another local user
// controls (privdir.Check). Whoever can write the directory can remove or
// rename the agent's socket and put their own in its place, and whoever
// created it first (in a world-writable /tmp, before the agent started)
// can serve identities of their own to every workload that connects: both
// would let a local user hand out SVIDs.
func checkSocketDir(dir string) error {
	if err := privdir.Check(dir, privdir.Use{What: "socket directory", Setting: "--socket",
		Risk: "put a socket of their own in place of the agent's and serve identities"}); err != nil {
		return fmt.Errorf("workload: %w", err)
	}
	return nil
}

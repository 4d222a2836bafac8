package cli

import "context"

// runSVID is a placeholder until the svid command lands.
func runSVID(_ context.Context, e *Env, _ []string) int {
	return e.errorf(ExitFailure, "svid: not implemented yet")
}

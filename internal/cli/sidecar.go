package cli

import "context"

// runSidecar is a placeholder until the sidecar command lands.
func runSidecar(_ context.Context, e *Env, _ []string) int {
	return e.errorf(ExitFailure, "sidecar: not implemented yet")
}

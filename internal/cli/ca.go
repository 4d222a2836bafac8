package cli

import "context"

// runCA is a placeholder until the ca command lands.
func runCA(_ context.Context, e *Env, _ []string) int {
	return e.errorf(ExitFailure, "ca: not implemented yet")
}

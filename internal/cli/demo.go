package cli

import "context"

// runDemo is a placeholder until the demo command lands.
func runDemo(_ context.Context, e *Env, _ []string) int {
	return e.errorf(ExitFailure, "demo: not implemented yet")
}

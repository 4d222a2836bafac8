package cli

import "context"

// runEntry is a placeholder until the entry command lands.
func runEntry(_ context.Context, e *Env, _ []string) int {
	return e.errorf(ExitFailure, "entry: not implemented yet")
}

package cli

import "context"

// runAgent is a placeholder until the agent command lands.
func runAgent(_ context.Context, e *Env, _ []string) int {
	return e.errorf(ExitFailure, "agent: not implemented yet")
}

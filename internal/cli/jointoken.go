package cli

import "context"

// runJoinToken is a placeholder until the jointoken command lands.
func runJoinToken(_ context.Context, e *Env, _ []string) int {
	return e.errorf(ExitFailure, "jointoken: not implemented yet")
}

package cli

import "context"

// runServer is a placeholder until the server command lands.
func runServer(_ context.Context, e *Env, _ []string) int {
	return e.errorf(ExitFailure, "server: not implemented yet")
}

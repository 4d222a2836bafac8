package cli

import "context"

// runOAuth is a placeholder until the oauth command lands.
func runOAuth(_ context.Context, e *Env, _ []string) int {
	return e.errorf(ExitFailure, "oauth: not implemented yet")
}

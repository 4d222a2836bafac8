package cli

import "context"

// runPolicy is a placeholder until the policy command lands.
func runPolicy(_ context.Context, e *Env, _ []string) int {
	return e.errorf(ExitFailure, "policy: not implemented yet")
}

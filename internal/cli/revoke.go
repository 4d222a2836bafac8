package cli

import "context"

// runRevoke is a placeholder until the revoke command lands.
func runRevoke(_ context.Context, e *Env, _ []string) int {
	return e.errorf(ExitFailure, "revoke: not implemented yet")
}

package cli

import "context"

// runAudit is a placeholder until the audit command lands.
func runAudit(_ context.Context, e *Env, _ []string) int {
	return e.errorf(ExitFailure, "audit: not implemented yet")
}

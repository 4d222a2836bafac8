package cli

import "context"

// Placeholders for the server-backed policy commands; the server engineer
// replaces this file with the admin-API implementations.

func runPolicyApply(_ context.Context, e *Env, _ []string) int {
	return e.errorf(ExitFailure, "policy apply: not implemented yet")
}

func runPolicyGet(_ context.Context, e *Env, _ []string) int {
	return e.errorf(ExitFailure, "policy get: not implemented yet")
}

func runPolicyDelete(_ context.Context, e *Env, _ []string) int {
	return e.errorf(ExitFailure, "policy delete: not implemented yet")
}

func runPolicyHistory(_ context.Context, e *Env, _ []string) int {
	return e.errorf(ExitFailure, "policy history: not implemented yet")
}

func runPolicyRollback(_ context.Context, e *Env, _ []string) int {
	return e.errorf(ExitFailure, "policy rollback: not implemented yet")
}

func runPolicyStatus(_ context.Context, e *Env, _ []string) int {
	return e.errorf(ExitFailure, "policy status: not implemented yet")
}

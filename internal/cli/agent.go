package cli

import (
	"context"

	"github.com/moatless/moatless/internal/cli/dataplane"
)

// runAgent runs the node agent until interrupted (dataplane.RunAgent, the
// same command moatless-sidecar runs), or "agent list", the admin view of
// attested agents (agent_admin.go).
func runAgent(ctx context.Context, e *Env, args []string) int {
	if len(args) > 0 && args[0] == "list" {
		return runAgentList(ctx, e, args[1:])
	}
	return dataplane.RunAgent(ctx, e.dp(), args)
}

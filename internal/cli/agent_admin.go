package cli

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/moatless/moatless/internal/server"
)

// runAgentList is "moatless agent list": every attested node, whether it is
// connected, and whether it acknowledged everything it must apply.
// internal/cli/agent.go dispatches "agent list" here.
func runAgentList(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("agent list")
	fs := cmd.fs
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless agent list [-o json]")
		fmt.Fprintln(fs.Output(), "\nShows attested agents (and sidecars attested as their own agent): connection, acknowledged version, SVID expiry.")
		fs.PrintDefaults()
	}
	c, code, ok := cmd.connect(args)
	if !ok {
		return code
	}
	var out []server.NodeStatus
	if err := c.do(ctx, "GET", server.PathAdminNodes, nil, &out); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printList(out, 0)
	}
	tw := newTable(e.Stdout)
	// Columns are the JSON field names (output.go).
	fmt.Fprintln(tw, "SPIFFE ID\tCOMPONENT\tCONNECTED\tACKED VERSION\tREQUIRED VERSION\tIN SYNC\tPOLICY VERSION\tLAST SEEN\tSVID EXPIRES AT")
	yn := map[bool]string{true: "yes", false: "no"}
	for _, n := range out {
		comp := n.Component
		if comp == "" {
			comp = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%d\t%s\t%s\n", n.SPIFFEID, comp, connectedCell(n.Connected, n.Revocation), n.AckedVersion, n.RequiredVersion,
			yn[n.InSync], n.PolicyVersion, n.LastSeen.Local().Format(time.RFC3339), n.NotAfter.Local().Format(time.RFC3339))
	}
	tw.Flush()
	for _, n := range out {
		if n.Revoked {
			fmt.Fprintln(e.Stdout, revokedLine(n.SPIFFEID, n.Revocation))
		}
	}
	return ExitOK
}

// fileExists reports whether p names an existing file.
func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

package cli

import (
	"context"
	"flag"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/moatless/moatless/internal/server"
)

// runAgentList is "moatless agent list": every attested node, whether it is
// connected, and whether it acknowledged everything it must apply.
// internal/cli/agent.go dispatches "agent list" here.
func runAgentList(ctx context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("agent list", flag.ContinueOnError)
	var af adminFlags
	af.register(fs, e)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless agent list [-o json]")
		fmt.Fprintln(fs.Output(), "\nShows attested agents (and sidecars attested as their own agent): connection, acknowledged version, SVID expiry.")
		fs.PrintDefaults()
	}
	if code, ok := e.parseFlags(fs, args); !ok {
		return code
	}
	c, err := af.client()
	if err != nil {
		return e.errorf(ExitUsage, "agent list: %v", err)
	}
	var out []server.NodeStatus
	if err := c.do(ctx, "GET", server.PathAdminNodes, nil, &out); err != nil {
		return e.fail(err)
	}
	if af.json() {
		return e.printJSON(out)
	}
	tw := tabwriter.NewWriter(e.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SPIFFE ID\tCOMPONENT\tCONNECTED\tACKED\tREQUIRED\tIN SYNC\tPOLICY\tLAST SEEN\tSVID EXPIRES")
	yn := map[bool]string{true: "yes", false: "no"}
	for _, n := range out {
		comp := n.Component
		if comp == "" {
			comp = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%d\t%s\t%s\n", n.SPIFFEID, comp, yn[n.Connected], n.AckedVersion, n.RequiredVersion,
			yn[n.InSync], n.PolicyVersion, n.LastSeen.Local().Format(time.RFC3339), n.NotAfter.Local().Format(time.RFC3339))
	}
	tw.Flush()
	return ExitOK
}

// fileExists reports whether p names an existing file.
func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

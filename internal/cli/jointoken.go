package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/moatless/moatless/internal/server"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

// runJoinToken is "moatless jointoken create|list|delete".
func runJoinToken(ctx context.Context, e *Env, args []string) int {
	return e.subcommand(ctx, "jointoken", []command{
		{"create", "create a single-use join token bound to one agent SPIFFE ID", runJoinTokenCreate},
		{"list", "list unused join tokens (--all: also used and expired ones)", runJoinTokenList},
		{"delete", "delete a join token by id", runJoinTokenDelete},
	}, args)
}

func runJoinTokenCreate(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("jointoken create")
	fs := cmd.fs
	id := fs.String("spiffe-id", "", "SPIFFE `ID` the agent will have, e.g. spiffe://moatless.local/agent/node1 (required)")
	ttl := fs.Duration("ttl", 0, "how long the token stays usable (default: the server's, 15m)")
	replace := fs.Bool("replace", false, "the agent that attests with it replaces the node: every node SVID issued for the ID before is revoked (re-provisioning a machine, after a compromise); without it earlier holders keep theirs")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless jointoken create --spiffe-id ID [--ttl D] [--replace] [-o json]")
		fmt.Fprintln(fs.Output(), "\nPrints the token alone (more with -o json). The server keeps only its hash: it is shown once.")
		fs.PrintDefaults()
	}
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	if *id == "" {
		return e.errorf(ExitUsage, "jointoken create: --spiffe-id is required")
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var out server.JoinTokenResponse
	if err := c.do(ctx, "POST", server.PathAdminJoinTokens, server.JoinTokenRequest{SPIFFEID: *id, TTL: wire.Duration(*ttl), Replace: *replace}, &out); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(out)
	}
	fmt.Fprintln(e.Stdout, out.Token)
	return ExitOK
}

func runJoinTokenList(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("jointoken list")
	fs := cmd.fs
	all := fs.Bool("all", false, "include used and expired tokens")
	c, code, ok := cmd.connect(args)
	if !ok {
		return code
	}
	path := server.PathAdminJoinTokens
	if *all {
		path += "?all=true"
	}
	var out []store.JoinToken
	if err := c.do(ctx, "GET", path, nil, &out); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printList(out, 0)
	}
	tw := newTable(e.Stdout)
	fmt.Fprintln(tw, "ID\tSPIFFE ID\tEXPIRES AT\tUSED AT")
	for _, t := range out {
		used := "-"
		if !t.UsedAt.IsZero() {
			used = t.UsedAt.Local().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.ID, t.SPIFFEID, t.ExpiresAt.Local().Format(time.RFC3339), used)
	}
	tw.Flush()
	return ExitOK
}

func runJoinTokenDelete(ctx context.Context, e *Env, args []string) int {
	id, rest := positional(args)
	cmd := e.newAdminCommand("jointoken delete")
	fs := cmd.fs
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless jointoken delete ID")
		fs.PrintDefaults()
	}
	if code, ok := cmd.parse(rest); !ok {
		return code
	}
	if id == "" {
		return e.errorf(ExitUsage, "jointoken delete: the token id is required (see \"moatless jointoken list\")")
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var out store.JoinToken
	if err := c.do(ctx, "DELETE", server.PathAdminJoinTokens+"/"+pathEscape(id), nil, &out); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(out)
	}
	fmt.Fprintf(e.Stdout, "deleted join token %s (%s)\n", out.ID, out.SPIFFEID)
	return ExitOK
}

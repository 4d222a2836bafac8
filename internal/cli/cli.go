// Package cli is the moatless command line: a visible table of subcommands,
// one file per command, each with its own flag set and no global flag
// variables. Main is what cmd/moatless calls and what tests drive.
package cli

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/moatless/moatless/internal/cli/dataplane"
)

// Exit codes that scripts can rely on. They are documented in docs/cli.md.
const (
	ExitOK       = dataplane.ExitOK       // the command did what was asked
	ExitFailure  = dataplane.ExitFailure  // it could not: server unreachable, server error, I/O
	ExitUsage    = dataplane.ExitUsage    // bad flags or bad input; nothing was changed
	ExitNotFound = dataplane.ExitNotFound // the named object does not exist
	ExitDenied   = dataplane.ExitDenied   // the credential was missing, wrong or not allowed
)

// Env is everything a command may touch of the outside world, so tests can
// run commands in-process with their own streams and environment. Its
// fields are dataplane.Env's, so the data-plane commands run on it as they
// are (dp).
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads an environment variable; nil means os.Getenv.
	Getenv func(string) string
}

// dp is e as the data-plane commands' Env: the same streams and
// environment.
func (e *Env) dp() *dataplane.Env { return (*dataplane.Env)(e) }

func (e *Env) getenv(k string) string { return e.dp().Env(k) }

// errorf prints "moatless: ..." to stderr and returns code.
func (e *Env) errorf(code int, format string, args ...any) int {
	return e.dp().Errorf(code, format, args...)
}

// A command is one row of the table. run receives the arguments after the
// command name and returns an exit code.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, env *Env, args []string) int
}

// commands is the subcommand table. Each run function lives in the file
// named after its command.
var commands = []command{
	{"server", "run the control plane (CA, registry, policy store, token service, audit)", runServer},
	{"agent", "run the node agent that serves the SPIFFE Workload API", runAgent},
	{"sidecar", "run the mTLS sidecar in front of one workload", func(ctx context.Context, e *Env, args []string) int { return dataplane.RunSidecar(ctx, e.dp(), args) }},
	{"gateway", "run the edge gateway: TLS, WAF, rate limits, IP rules, JWT, policy, then mTLS into the mesh", runGateway},
	{"authz", "serve Envoy's ext_authz (gRPC) with the same decisions, from policy files", runAuthz},
	{"jointoken", "create single-use join tokens for agents and sidecars", runJoinToken},
	{"entry", "create, list, show and delete registration entries", runEntry},
	{"revoke", "revoke a SPIFFE ID or a certificate serial everywhere", runRevoke},
	{"ca", "show and rotate the certificate authority", runCA},
	{"svid", "fetch SVIDs and bundles from a Workload API socket", runSVID},
	{"policy", "policies: check, lint and test offline; apply, get, delete; history and rollback of versions; rollout status; recommend and what-if from recorded traffic; networkpolicy (Kubernetes L4 fences)", runPolicy},
	{"oauth", "manage OAuth 2.0 / OIDC clients, users and tokens", runOAuth},
	{"secrets", "KV, transit, database credentials, leases and access policies (Vault-compatible API)", runSecrets},
	{"audit", "verify and read the audit log", runAudit},
	{"incident", "findings, incidents and containment: list, show, isolate, release, export", runIncident},
	{"playbook", "apply, show and version the playbooks that contain compromised identities", runPlaybook},
	{"store", "migrate, back up and restore the server's store", runStore},
	{"demo", "run a server, three services and a reporting job, each behind a sidecar with its own join token (no agent), and show policy at work", runDemo},
	{"version", "print the version", func(ctx context.Context, e *Env, args []string) int { return dataplane.RunVersion(ctx, e.dp(), args) }},
}

// Main runs the command named by args[0] and returns its exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	env := &Env{Stdin: stdin, Stdout: stdout, Stderr: stderr}
	return env.main(ctx, args)
}

func (e *Env) main(ctx context.Context, args []string) int {
	if len(args) == 0 {
		e.usage(e.Stderr)
		return ExitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		e.usage(e.Stdout)
		return ExitOK
	case "-v", "-version", "--version":
		args = []string{"version"}
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(ctx, e, args[1:])
		}
	}
	return e.errorf(ExitUsage, "unknown command %q; run \"moatless help\" for the list", args[0])
}

func (e *Env) usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: moatless <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	width := 0
	for _, c := range commands {
		width = max(width, len(c.name))
	}
	for _, c := range commands {
		fmt.Fprintf(w, "  %-*s  %s\n", width, c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, `Run "moatless <command> -h" for a command's flags.`)
	fmt.Fprintln(w, "Admin commands read MOATLESS_ADDR, MOATLESS_TOKEN and MOATLESS_CACERT.")
}

// subcommand dispatches to a nested table such as "entry create".
func (e *Env) subcommand(ctx context.Context, parent string, table []command, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		w := e.Stderr
		code := ExitUsage
		if len(args) > 0 {
			w, code = e.Stdout, ExitOK
		}
		fmt.Fprintf(w, "Usage: moatless %s <subcommand> [flags]\n\nSubcommands:\n", parent)
		for _, c := range table {
			fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
		}
		return code
	}
	for _, c := range table {
		if c.name == args[0] {
			return c.run(ctx, e, args[1:])
		}
	}
	names := make([]string, len(table))
	for i, c := range table {
		names[i] = c.name
	}
	return e.errorf(ExitUsage, "unknown subcommand %q for %q; want one of: %s", args[0], parent, strings.Join(names, ", "))
}

package dataplane

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/moatless/moatless/internal/policy"
)

// Main is moatless-sidecar: the sidecar and version, and nothing of the
// control plane. Its arguments are those of "moatless sidecar"
// (moatless-sidecar -config FILE [-check] ...), or a command name first,
// the way the one binary takes them: "sidecar", "version" or "help". So a
// command line written for "moatless sidecar" runs unchanged with the
// executable's name swapped.
//
// The node agent is not dispatched here, though RunAgent is in this
// package: it runs once per node, and the code it reaches cost every
// sidecar process 0.7 MB of executable and 1.4–1.8 MB of RSS idle (0.2–0.6
// MB at 1,000 requests/s), measured (docs/benchmarks.md). Unreachable,
// the linker leaves it out.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return (&Env{Stdin: stdin, Stdout: stdout, Stderr: stderr}).Main(ctx, args)
}

// Main is the package's Main in e: what tests drive.
func (e *Env) Main(ctx context.Context, args []string) int {
	if len(args) == 0 {
		usage(e.Stderr)
		return ExitUsage
	}
	switch args[0] {
	case "help", "-help", "--help":
		usage(e.Stdout)
		return ExitOK
	case "-v", "-version", "--version", "version":
		return RunVersion(ctx, e, args[1:])
	case "sidecar":
		return RunSidecar(ctx, e, args[1:])
	}
	if strings.HasPrefix(args[0], "-") {
		return RunSidecar(ctx, e, args)
	}
	return e.Errorf(ExitUsage, "unknown command %q; moatless-sidecar runs sidecar and version (run \"moatless-sidecar help\"); the other commands, the agent among them, are in moatless", args[0])
}

func usage(w io.Writer) {
	fmt.Fprint(w, `Usage: moatless-sidecar -config FILE [flags]     (the same as "moatless sidecar")
       moatless-sidecar <command> [flags]

The sidecar alone, built from the same code as "moatless sidecar" without the
control plane, the agent, the gateway or the WAF, for a smaller process (one
sidecar per workload).

Commands:
  sidecar  run the mTLS sidecar in front of one workload (the default)
  version  print the version

Run "moatless-sidecar -h" for the sidecar's flags. Every other command
(server, agent, gateway, policy, ...) is in moatless.
`)
	if !policy.RegoAvailable() {
		fmt.Fprint(w, `
Built without OPA: requests that a CUSTOM policy decided by a RegoProvider
applies to are denied; run "moatless sidecar" to evaluate Rego.
`)
	}
}

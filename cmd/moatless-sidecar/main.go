// Command moatless-sidecar is the sidecar of moatless alone: the same
// function "moatless sidecar" runs (and version), in an executable that
// links none of the control plane, the gateway or the WAF — a smaller
// process for the sidecar that runs once per workload. Run
// "moatless-sidecar help".
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/moatless/moatless/internal/cli/dataplane"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dataplane.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Package dataplane is the data-plane commands — sidecar, agent and
// version — and the command-line plumbing they share with the rest of
// moatless: exit codes, the Env a command runs in, flag parsing, logging,
// tracing. Both executables run these same functions: "moatless sidecar"
// (internal/cli, the one binary) and "moatless-sidecar"
// (cmd/moatless-sidecar, Main here, which runs the sidecar and version).
//
// The package exists for what it does not import: the control plane
// (server, store, CA), detection, the dashboard, the gateway and its WAF.
// Every package a Go program links runs its initializers and keeps its
// package-level data in memory in every role, so the sidecar that runs
// once per pod is built from this package alone (docs/benchmarks.md,
// "moatless-sidecar, the data plane alone").
// TestDataPlaneDoesNotLinkControlPlane (internal/cli) holds the line.
package dataplane

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
)

// Exit codes that scripts can rely on. They are documented in docs/cli.md.
const (
	ExitOK       = 0 // the command did what was asked
	ExitFailure  = 1 // it could not: server unreachable, server error, I/O
	ExitUsage    = 2 // bad flags or bad input; nothing was changed
	ExitNotFound = 3 // the named object does not exist
	ExitDenied   = 4 // the credential was missing, wrong or not allowed
)

// Env is everything a command may touch of the outside world, so tests can
// run commands in-process with their own streams and environment.
// internal/cli's Env has the same fields, so either converts to the other.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads an environment variable; nil means os.Getenv.
	Getenv func(string) string
}

// Env reads the environment variable k through e.Getenv.
func (e *Env) Env(k string) string {
	if e.Getenv == nil {
		return os.Getenv(k)
	}
	return e.Getenv(k)
}

// Errorf prints "moatless: ..." to stderr and returns code.
func (e *Env) Errorf(code int, format string, args ...any) int {
	fmt.Fprintf(e.Stderr, "moatless: "+format+"\n", args...)
	return code
}

// ParseFlags parses args into fs, printing errors to stderr. It returns
// false with the exit code to use when parsing failed or help was asked.
// Positional arguments are an error.
func (e *Env) ParseFlags(fs *flag.FlagSet, args []string) (int, bool) {
	if code, ok := e.ParseFlagSet(fs, args); !ok {
		return code, false
	}
	if fs.NArg() > 0 {
		return e.Errorf(ExitUsage, "%s: unexpected argument %q", fs.Name(), fs.Arg(0)), false
	}
	return 0, true
}

// ParseFlagSet parses args with fs, the one way every command parses its
// flags. -h prints the command's usage to stdout (asked for, so not an
// error: exit 0). A bad flag is one line on stderr, "moatless: CMD: what
// is wrong (run "moatless CMD -h" for its flags)", exit 2: the flag
// package would print the whole usage after the error, burying it.
// Positional arguments are left in fs.Args().
func (e *Env) ParseFlagSet(fs *flag.FlagSet, args []string) (int, bool) {
	usage := fs.Usage
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.Usage = usage
	fs.SetOutput(e.Stdout)
	switch {
	case errors.Is(err, flag.ErrHelp):
		if usage != nil {
			usage()
		} else {
			fmt.Fprintf(e.Stdout, "Usage of moatless %s:\n", fs.Name())
			fs.PrintDefaults()
		}
		return ExitOK, false
	case err != nil:
		return e.Errorf(ExitUsage, "%s: %v (run \"moatless %s -h\" for its flags)", fs.Name(), err, fs.Name()), false
	}
	fs.SetOutput(e.Stderr)
	return ExitOK, true
}

// CheckOutput validates a -o value: text or json. It prints the error for
// cmd and returns false with ExitUsage otherwise.
func (e *Env) CheckOutput(cmd, output string) (int, bool) {
	if output != "text" && output != "json" {
		return e.Errorf(ExitUsage, "%s: -o must be text or json, not %q", cmd, output), false
	}
	return ExitOK, true
}

// PrintJSON writes v to stdout as indented JSON.
func (e *Env) PrintJSON(v any) int {
	enc := json.NewEncoder(e.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return e.Errorf(ExitFailure, "write output: %v", err)
	}
	return ExitOK
}

// NewTable is the writer of every table and key/value listing the
// commands print: columns two spaces apart, padded with spaces. Flush it
// at the end.
func NewTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

// StringList is a repeatable string flag.
type StringList []string

func (s *StringList) String() string     { return strings.Join(*s, ",") }
func (s *StringList) Set(v string) error { *s = append(*s, v); return nil }

// TokenLimit bounds a token or secret read from a file or standard input:
// far above any real one, far below what would hurt to hold in memory.
const TokenLimit = 64 << 10

// ReadTokenFile reads a token kept in a file (the admin token, a join
// token): its content without surrounding white space.
func ReadTokenFile(path string) (string, error) {
	b, err := ReadSmallFile(path, TokenLimit)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// ReadSmallFile reads the file at path; more than limit bytes is an
// error that names it.
func ReadSmallFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadLimited(f, path, limit)
}

// ReadLimited reads r to the end; more than limit bytes is an error that
// names it.
func ReadLimited(r io.Reader, name string, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, limit)
	}
	return b, nil
}

// GOOS is the system the binary runs on; tests set it to see what other
// systems get.
var GOOS = runtime.GOOS

// LinuxOnly is the answer of the long-running commands (server, agent,
// sidecar, authz, demo) on a system other than Linux: they are built and
// tested for Linux only. The agent and the sidecar identify local callers
// by the kernel's word (SO_PEERCRED, /proc, sock_diag), which other
// systems do not give in that form, and serving identities without it
// would hand them to anyone. The admin commands (entry, policy, oauth,
// audit, revoke, secrets, ca, jointoken, svid) work everywhere. ok is
// false, with the exit code, outside Linux.
func (e *Env) LinuxOnly(name string) (int, bool) {
	if GOOS == "linux" {
		return ExitOK, true
	}
	return e.Errorf(ExitFailure, "%s runs on Linux only (this is %s/%s); the admin commands work here: point them at a server on Linux with --addr or MOATLESS_ADDR",
		name, GOOS, runtime.GOARCH), false
}

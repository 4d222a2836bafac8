package dataplane

import (
	"context"
	"flag"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/moatless/moatless/internal/policy"
)

// Version overrides the version the Go toolchain stamped into the binary;
// set it with -ldflags "-X github.com/moatless/moatless/internal/cli/dataplane.Version=v1.2.3".
// Left "dev", the module version from the build information is used.
var Version = "dev"

// modulePath is this module's path.
const modulePath = "github.com/moatless/moatless"

// buildInfo is what "moatless version" reports: the module version and
// the version-control state the binary was built from, as the Go
// toolchain recorded them (runtime/debug.ReadBuildInfo).
type buildInfo struct {
	// Version is the module version: a tag (v1.2.3), a pseudo-version
	// (v0.0.0-20261206154800-e506f75abcde, "+dirty" when built from a
	// modified checkout), or "dev" when the toolchain recorded none
	// ("go run", "go test").
	Version string `json:"version"`
	Module  string `json:"module"`
	// Revision is the commit built from, "" when unknown.
	Revision string `json:"revision,omitempty"`
	// RevisionTime is the commit's time, RFC 3339.
	RevisionTime string `json:"revision_time,omitempty"`
	// Modified: the checkout had uncommitted changes.
	Modified bool   `json:"modified"`
	Go       string `json:"go"`
	OS       string `json:"os"`
	Arch     string `json:"arch"`
	// Rego reports whether this executable evaluates Rego: false for
	// moatless-sidecar, built without OPA (policy.RegoAvailable).
	Rego bool `json:"rego"`
}

// readBuildInfo describes this binary from read (debug.ReadBuildInfo in
// production) and the Version override.
func readBuildInfo(read func() (*debug.BuildInfo, bool), override string) buildInfo {
	out := buildInfo{Version: "dev", Module: modulePath, Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	if bi, ok := read(); ok && bi != nil {
		if bi.Main.Path != "" {
			out.Module = bi.Main.Path
		}
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			out.Version = v
		}
		if bi.GoVersion != "" {
			out.Go = bi.GoVersion
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				out.Revision = s.Value
			case "vcs.time":
				out.RevisionTime = s.Value
			case "vcs.modified":
				out.Modified = s.Value == "true"
			case "GOOS":
				out.OS = s.Value
			case "GOARCH":
				out.Arch = s.Value
			}
		}
	}
	if override != "" && override != "dev" {
		out.Version = override
	}
	return out
}

func RunVersion(_ context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	output := fs.String("o", "text", "output format: text or json")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless version [-o json]")
		fmt.Fprintln(fs.Output(), "\nPrints the module version and the commit the binary was built from.")
		fs.PrintDefaults()
	}
	if code, ok := e.ParseFlags(fs, args); !ok {
		return code
	}
	if code, ok := e.CheckOutput("version", *output); !ok {
		return code
	}
	bi := readBuildInfo(debug.ReadBuildInfo, Version)
	bi.Rego = policy.RegoAvailable()
	if *output == "json" {
		return e.PrintJSON(bi)
	}
	fmt.Fprintf(e.Stdout, "moatless %s\n", bi.Version)
	tw := NewTable(e.Stdout)
	if bi.Revision != "" {
		rev := bi.Revision
		if bi.Modified {
			rev += " (modified)"
		}
		fmt.Fprintf(tw, "revision\t%s\n", rev)
	}
	if bi.RevisionTime != "" {
		fmt.Fprintf(tw, "revision time\t%s\n", bi.RevisionTime)
	}
	fmt.Fprintf(tw, "go\t%s %s/%s\n", bi.Go, bi.OS, bi.Arch)
	if bi.Rego {
		fmt.Fprintf(tw, "rego\tevaluated\n")
	} else {
		fmt.Fprintf(tw, "rego\tnot built in: run the sidecar as \"moatless sidecar\" to evaluate Rego\n")
	}
	tw.Flush()
	return ExitOK
}

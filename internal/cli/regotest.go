package cli

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/wire"
)

const policyTestUsage = `Usage: moatless policy test [flags] PATH [PATH ...]

Runs the Rego unit tests of the modules under PATH (files, or directories
searched recursively for *.rego modules and data.json / data.yaml data), as
"opa test" does: every rule named test_* must be true; todo_test_* rules are
skipped. Modules are checked as "policy apply" checks them (OPA's errors with
file and line; no http.send, net.lookup_ip_addr or opa.runtime).

Exit status: 0 when every test passed, 1 when one failed or none was found,
2 on bad input (a module that does not compile, malformed data).

Flags:
`

func runPolicyTest(ctx context.Context, e *Env, args []string) int {
	fset := flag.NewFlagSet("policy test", flag.ContinueOnError)
	var (
		verbose bool
		run     string
		timeout time.Duration
		output  string
	)
	fset.BoolVar(&verbose, "v", false, "list every test with its outcome, and what print() wrote")
	fset.StringVar(&run, "run", "", "only tests whose data.PACKAGE.NAME matches this `regexp`")
	fset.DurationVar(&timeout, "timeout", 5*time.Second, "bound on each test")
	fset.StringVar(&output, "o", "text", "output format: text or json")
	fset.Usage = func() {
		fmt.Fprint(fset.Output(), policyTestUsage)
		fset.PrintDefaults()
	}
	// Paths may come before the flags ("policy test DIR -v") or after.
	var paths []string
	for len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		paths, args = append(paths, args[0]), args[1:]
	}
	if code, ok := e.parseFlagSet(fset, args); !ok {
		return code
	}
	paths = append(paths, fset.Args()...)
	if len(paths) == 0 {
		return e.errorf(ExitUsage, "policy test: give the files or directories of the modules to test")
	}
	if output != "text" && output != "json" {
		return e.errorf(ExitUsage, "policy test: -o must be text or json, not %q", output)
	}
	var b policy.Bundle
	for _, arg := range paths {
		paths, err := regoTestPaths(arg)
		if err != nil {
			return e.errorf(ExitUsage, "policy test: %v", err)
		}
		for _, p := range paths {
			content, err := os.ReadFile(p)
			if err != nil {
				return e.errorf(ExitUsage, "policy test: %v", err)
			}
			if kind, _ := policy.PolicyFileKind(p); kind == policy.FileRego {
				// Test files sit beside the modules they test, often
				// with the same base name in several directories: the
				// path names the module here.
				id := filepath.ToSlash(filepath.Clean(p))
				if policy.ValidRegoID(id) != nil {
					id = policy.RegoModuleID(p)
				}
				if err := policy.CheckRegoModule(id, string(content)); err != nil {
					return e.errorf(ExitUsage, "policy test: %v", err)
				}
				b.Modules = append(b.Modules, wire.RegoModule{ID: id, Source: string(content)})
				continue
			}
			if err := b.Add(p, content); err != nil {
				return e.errorf(ExitUsage, "policy test: %v", err)
			}
		}
	}
	if len(b.Modules) == 0 {
		return e.errorf(ExitUsage, "policy test: no .rego module under %s", strings.Join(paths, ", "))
	}
	results, err := policy.RunRegoTests(ctx, b.Modules, b.Data, run, timeout)
	if err != nil {
		return e.errorf(ExitUsage, "policy test: %v", err)
	}
	sort.SliceStable(results, func(i, j int) bool {
		if results[i].File != results[j].File {
			return results[i].File < results[j].File
		}
		return results[i].Row < results[j].Row
	})
	pass, fail := 0, 0
	for _, r := range results {
		switch r.Outcome {
		case "PASS":
			pass++
		case "FAIL", "ERROR":
			fail++
		}
	}
	code := ExitOK
	if fail > 0 || len(results) == 0 {
		code = ExitFailure
	}
	if output == "json" {
		if c := e.printList(results, 0); c != ExitOK {
			return c
		}
		return code
	}
	if len(results) == 0 {
		fmt.Fprintln(e.Stdout, "no tests found (rules named test_*)")
		return code
	}
	for _, r := range results {
		if !verbose && (r.Outcome == "PASS" || r.Outcome == "SKIPPED") {
			continue
		}
		fmt.Fprintf(e.Stdout, "%s:%d: %s.%s: %s (%s)\n", r.File, r.Row, r.Package, r.Name, r.Outcome, r.Duration.Round(time.Microsecond))
		if r.Error != "" {
			fmt.Fprintf(e.Stdout, "  %s\n", r.Error)
		}
		if verbose && r.Output != "" {
			for _, l := range strings.Split(strings.TrimRight(r.Output, "\n"), "\n") {
				fmt.Fprintf(e.Stdout, "  print: %s\n", l)
			}
		}
	}
	if fail > 0 || verbose {
		fmt.Fprintln(e.Stdout, strings.Repeat("-", 80))
	}
	fmt.Fprintf(e.Stdout, "PASS: %d/%d\n", pass, len(results))
	if fail > 0 {
		fmt.Fprintf(e.Stdout, "FAIL: %d/%d\n", fail, len(results))
	}
	return code
}

// regoTestPaths expands a path into the .rego and data files under it.
func regoTestPaths(arg string) ([]string, error) {
	st, err := os.Stat(arg)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return []string{arg}, nil
	}
	var out []string
	err = filepath.WalkDir(arg, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != arg && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		if kind, ok := policy.PolicyFileKind(p); ok && (kind == policy.FileRego || kind == policy.FileData) {
			out = append(out, p)
		}
		return nil
	})
	return out, err
}

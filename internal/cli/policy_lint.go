package cli

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"

	"github.com/moatless/moatless/internal/policy"
)

const policyLintUsage = `Usage: moatless policy lint -f FILE_OR_DIR [-f ...] [-o json] [flags]

Checks policy files the way "policy apply" and a sidecar would, and reports
every problem in every document at once, for CI: errors (what Moatless
refuses; exit 2) and warnings (what Istio refuses or what does not do what
it seems to; exit 0). A file that fails to parse does not stop the others
from being checked. Nothing is sent anywhere.

Flags:
`

// lintProblem is one finding of "policy lint", a row of its -o json
// items: where (file, document, line, object, field path) and what.
type lintProblem struct {
	Severity string `json:"severity"` // error or warning
	File     string `json:"file,omitempty"`
	Document int    `json:"document,omitempty"`
	Line     int    `json:"line,omitempty"`
	Object   string `json:"object,omitempty"`
	Path     string `json:"path,omitempty"`
	Message  string `json:"message"`
}

func (p lintProblem) String() string {
	pe := policy.ParseError{Source: p.File, Document: p.Document, Line: p.Line, Object: p.Object, Path: p.Path, Msg: p.Message}
	return p.Severity + ": " + pe.Error()
}

func runPolicyLint(_ context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("policy lint", flag.ContinueOnError)
	var (
		files  stringList
		root   string
		norm   string
		output string
	)
	fs.Var(&files, "f", "policy `file or directory` (repeatable; - for stdin)")
	fs.StringVar(&root, "root-namespace", policy.DefaultRootNamespace, "root `namespace`: its policies apply mesh-wide")
	fs.StringVar(&norm, "path-normalization", "BASE", "path normalization: NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES")
	fs.StringVar(&output, "o", "text", "output format: text or json")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), policyLintUsage)
		fs.PrintDefaults()
	}
	if code, ok := e.parseFlags(fs, args); !ok {
		return code
	}
	if code, ok := e.checkOutput("policy lint", output); !ok {
		return code
	}
	if len(files) == 0 {
		return e.errorf(ExitUsage, "policy lint: give policies with -f FILE_OR_DIR")
	}
	mode, err := policy.ParsePathNormalization(norm)
	if err != nil {
		return e.errorf(ExitUsage, "policy lint: --path-normalization: %v", err)
	}
	pf, err := e.readPolicyFiles("policy lint", files)
	if err != nil {
		return e.errorf(ExitUsage, "%v", err)
	}
	var problems []lintProblem
	// Each file alone first, so that one broken file does not hide the
	// problems of the others; then what parsed, together.
	var b policy.Bundle
	for _, f := range pf {
		if kind, _ := policy.PolicyFileKind(f.Name); kind == policy.FileDocuments {
			// The valid documents of a file with invalid ones are still
			// checked (warnings, duplicates across files).
			docs, err := policy.ParseSourceEach(f.Name, []byte(f.Content))
			if err != nil {
				problems = append(problems, lintErrors(f.Name, err)...)
			}
			b.Docs = append(b.Docs, docs...)
			continue
		}
		if err := b.Add(f.Name, []byte(f.Content)); err != nil {
			problems = append(problems, lintErrors(f.Name, err)...)
		}
	}
	set, err := b.Compile(policy.Options{RootNamespace: root, PathNormalization: mode})
	if err != nil {
		if !errors.Is(err, policy.ErrInvalid) {
			return e.errorf(ExitUsage, "policy lint: --root-namespace: %v", err)
		}
		problems = append(problems, lintErrors("", err)...)
	}
	// Warnings with their document's place where the document says them;
	// the rest (between documents: two namespace-wide PeerAuthentications)
	// as the set says them.
	perDoc := map[string]bool{}
	for _, d := range b.Docs {
		for _, w := range d.Warnings {
			problems = append(problems, lintProblem{Severity: "warning", File: d.Source, Document: d.Index, Line: d.Line, Object: d.Kind + " " + d.Ref(), Message: w})
			perDoc[d.Kind+" "+d.Ref()+": "+w] = true
		}
	}
	if set != nil {
		for _, w := range set.Warnings() {
			if !perDoc[w] {
				problems = append(problems, lintProblem{Severity: "warning", Message: w})
			}
		}
	}
	nerr := 0
	for _, p := range problems {
		if p.Severity == "error" {
			nerr++
		}
	}
	code := ExitOK
	if nerr > 0 {
		code = ExitUsage
	}
	if output == "json" {
		if c := e.printList(problems, 0); c != ExitOK {
			return c
		}
		return code
	}
	for _, p := range problems {
		fmt.Fprintln(e.Stdout, p)
	}
	fmt.Fprintf(e.Stdout, "%d error(s), %d warning(s) in %d file(s), %d document(s)\n", nerr, len(problems)-nerr, len(pf), len(b.Docs))
	return code
}

// lintErrors splits a loader or compiler error (one *policy.ParseError, or
// several joined) into problems; other errors (Rego, data) are one problem
// of file.
func lintErrors(file string, err error) []lintProblem {
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	out := make([]lintProblem, 0, len(errs))
	for _, err := range errs {
		var pe *policy.ParseError
		if errors.As(err, &pe) {
			out = append(out, lintProblem{Severity: "error", File: cmp.Or(pe.Source, file), Document: pe.Document, Line: pe.Line, Object: pe.Object, Path: pe.Path, Message: pe.Msg})
			continue
		}
		msg := err.Error()
		if file != "" {
			msg = strings.TrimPrefix(msg, file+": ")
		}
		out = append(out, lintProblem{Severity: "error", File: file, Message: msg})
	}
	return out
}

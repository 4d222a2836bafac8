//go:build !norego

package policy

import (
	"context"
	"fmt"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/tester"

	"github.com/moatless/moatless/internal/wire"
)

// RegoTestResult is one Rego test rule's outcome ("opa test" semantics:
// rules named test_* pass when they are true; todo_test_* are skipped).
type RegoTestResult struct {
	Package  string        `json:"package"`
	Name     string        `json:"name"`
	File     string        `json:"file"`
	Row      int           `json:"row"`
	Outcome  string        `json:"outcome"` // PASS, FAIL, ERROR, SKIPPED
	Error    string        `json:"error,omitempty"`
	Output   string        `json:"output,omitempty"` // what print() wrote
	Duration time.Duration `json:"duration_ns"`
}

// RunRegoTests runs the test rules of modules against data, as "opa
// test" does, with the same restrictions as a decision (no http.send,
// net.lookup_ip_addr or opa.runtime) but print() captured. filter, when
// set, is a regular expression selecting tests by "package.name"; timeout
// bounds each test (0: 5s). Modules that do not compile are a *RegoError.
func RunRegoTests(ctx context.Context, modules []wire.RegoModule, data []wire.DataDocument, filter string, timeout time.Duration) ([]RegoTestResult, error) {
	r, err := CompileRego(modules, data) // validates everything, OPA's errors on failure
	if err != nil {
		return nil, err
	}
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	compiler := ast.NewCompiler().
		WithUnsafeBuiltins(regoUnsafeBuiltins).
		WithEnablePrintStatements(true)
	run := tester.NewRunner().
		SetCompiler(compiler).
		SetStore(r.store).
		CapturePrintOutput(true).
		SetTimeout(timeout)
	if filter != "" {
		run = run.Filter(filter)
	}
	ch, err := run.Run(ctx, r.parsed)
	if err != nil {
		return nil, asRegoError(err)
	}
	var out []RegoTestResult
	for res := range ch {
		tr := RegoTestResult{Package: res.Package, Name: res.Name, Duration: res.Duration, Output: string(res.Output)}
		if res.Location != nil {
			tr.File, tr.Row = res.Location.File, res.Location.Row
		}
		switch {
		case res.Skip:
			tr.Outcome = "SKIPPED"
		case res.Error != nil:
			tr.Outcome, tr.Error = "ERROR", res.Error.Error()
		case res.Fail:
			tr.Outcome = "FAIL"
			if res.FailedAt != nil {
				tr.Error = fmt.Sprintf("failed at %s", res.FailedAt.String())
				if res.FailedAt.Location != nil {
					tr.Error = fmt.Sprintf("%s:%d: failed at %s", res.FailedAt.Location.File, res.FailedAt.Location.Row, res.FailedAt.String())
				}
			}
		default:
			tr.Outcome = "PASS"
		}
		out = append(out, tr)
	}
	return out, nil
}

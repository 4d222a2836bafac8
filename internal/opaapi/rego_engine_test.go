//go:build !norego

package opaapi

// The package's tests run with OPA's evaluator registered, as moatless
// links it; "go test -tags norego" runs them without any, as
// moatless-sidecar (which does not import regoopa) runs.
import _ "github.com/moatless/moatless/internal/policy/regoopa"

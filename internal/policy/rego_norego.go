//go:build norego

package policy

import (
	"github.com/moatless/moatless/internal/wire"
)

// This file is Rego in an executable built without OPA (build tag
// norego: moatless-sidecar, whose memory OPA's code, tables and
// initializers would double). Modules and data documents are checked as
// far as they can be without OPA (IDs, keys, sizes, counts, strict JSON)
// and kept, so that the policy version they belong to loads and the rest
// of it is enforced; a CUSTOM policy decided by a RegoProvider denies
// (regoProvider.eval), as Istio denies when an ext_authz provider cannot
// be reached and failOpen is not set.

// RegoAvailable reports whether this executable evaluates Rego.
const RegoAvailable = false

// regoErrors are OPA's errors; there are none without OPA.
type regoErrors = []error

// checkRegoModule checks a module's ID and size; its source is not
// parsed without OPA.
func checkRegoModule(id, src string) error { return checkRegoSource(id, src) }

// Rego is the Rego modules and data documents of one policy version,
// checked but not compiled (no OPA in this executable). Immutable.
type Rego struct {
	modules []wire.RegoModule // sorted by ID
	data    []wire.DataDocument
}

// CompileRego checks modules and data as far as it can without OPA: the
// limits, module IDs and sizes, duplicates, data keys and strict JSON.
// What needs OPA (parsing, compiling, a data document at a package's
// path) is not checked; it could only change a deny into a refusal.
// Errors are *RegoError (wrapping ErrInvalid). The inputs are copied.
func CompileRego(modules []wire.RegoModule, data []wire.DataDocument) (*Rego, error) {
	r := &Rego{}
	var err error
	if r.modules, err = checkRegoModules(modules, data, nil); err != nil {
		return nil, err
	}
	if _, r.data, err = decodeDataDocuments(data); err != nil {
		return nil, err
	}
	return r, nil
}

//go:build norego

package policy

import (
	"fmt"
	"strings"
)

// Without OPA a provider has no prepared query and its input mappings no
// terms.
type (
	regoQuery struct{}
	regoTerm  struct{}
)

func stringTerms([]string) []regoTerm { return nil }

// prepare has nothing to prepare without OPA: eval denies.
func (rp *regoProvider) prepare(*Rego, fieldPath) *fieldError { return nil }

// parseRegoQuery checks a provider's query as far as it can without
// OPA's parser: a reference into data (data.a.b or data["a-b"]), on one
// line. It is never evaluated here, so a query OPA would refuse can only
// deny; the full executable and "moatless policy check" refuse it.
func parseRegoQuery(q string) (string, bool) {
	if !strings.HasPrefix(q, "data.") && !strings.HasPrefix(q, "data[") || len(q) > maxValueLen {
		return "", false
	}
	for _, r := range q {
		if r < 0x20 || r == 0x7f || r == ' ' {
			return "", false
		}
	}
	return q, true
}

// eval denies: this executable cannot evaluate Rego (ErrRegoUnavailable).
// The result is "unavailable", counted apart from a policy's own deny.
func (p *regoProvider) eval(*Request, string) customResult {
	return customResult{
		reason: "rego provider " + p.name + " unavailable: " + ErrRegoUnavailable.Error(),
		eval:   CustomEval{Provider: p.name, Query: p.query, Result: "unavailable", Error: ErrRegoUnavailable.Error()},
	}
}

// RegoFailures needs OPA's tracer: ErrRegoUnavailable.
func (s *Set) RegoFailures(provider string, _ *Request) ([]string, error) {
	return nil, fmt.Errorf("policy: rego provider %q: %w", provider, ErrRegoUnavailable)
}

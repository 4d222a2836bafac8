package proxy

import "github.com/moatless/moatless/internal/policy"

// regoSource is an optional capability of an Authorizer (the policy
// engine's *Set has it): the Rego modules and data it decides with.
type regoSource interface {
	Rego() *policy.Rego
}

// Rego is the compiled Rego modules and data of the policy in force, nil
// without any: what the admin listener's read-only OPA API answers from.
func (s *Sidecar) Rego() *policy.Rego {
	a, _ := s.authorizer()
	if rs, ok := a.(regoSource); ok {
		return rs.Rego()
	}
	return nil
}

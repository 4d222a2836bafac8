package proxy

import (
	"fmt"
	"strings"

	"github.com/moatless/moatless/internal/policy"
)

// regoSource is an optional capability of an Authorizer (the policy
// engine's *Set has it): the Rego modules and data it decides with, and
// the RegoProviders whose queries decide its CUSTOM policies.
type regoSource interface {
	Rego() *policy.Rego
	RegoProviders() []string
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

// RegoUnavailable says what of the policy in force needs Rego, in an
// executable that cannot evaluate it (policy.RegoAvailable false: an
// executable without OPA, moatless-sidecar); nil when nothing does or Rego is
// available. The error wraps policy.ErrRegoUnavailable.
func (s *Sidecar) RegoUnavailable() error {
	a, _ := s.authorizer()
	return regoUnavailable(a)
}

func regoUnavailable(a Authorizer) error {
	rs, ok := a.(regoSource)
	if policy.RegoAvailable() || !ok {
		return nil
	}
	var what []string
	if ps := rs.RegoProviders(); len(ps) > 0 {
		what = append(what, "RegoProviders "+strings.Join(ps, ", "))
	}
	if r := rs.Rego(); r != nil {
		var ids []string
		for _, m := range r.Modules() {
			ids = append(ids, m.ID)
		}
		if len(ids) > 0 {
			what = append(what, "Rego modules "+strings.Join(ids, ", "))
		}
		if n := len(r.Data()); n > 0 {
			what = append(what, fmt.Sprintf("%d data documents", n))
		}
	}
	if len(what) == 0 {
		return nil
	}
	return fmt.Errorf("the policy holds %s: requests its CUSTOM policies decided by a RegoProvider apply to are denied: %w", strings.Join(what, "; "), policy.ErrRegoUnavailable)
}

// warnRegoUnavailable logs, once per policy version, that the version
// needs Rego this executable cannot evaluate. Each request denied for it
// is counted in moatless_sidecar_custom_decisions_total with result
// "unavailable".
func (s *Sidecar) warnRegoUnavailable(version uint64, a Authorizer) {
	if err := regoUnavailable(a); err != nil {
		s.log.Warn("policy needs Rego, which this executable cannot evaluate", "policy_version", version, "err", err)
	}
}

package server

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/extauthz"
	"github.com/moatless/moatless/internal/policy"
)

// authzCache is the policy set in force compiled for decisions the server
// makes itself (Envoy ext_authz), once per policy version.
type authzCache struct {
	mu      sync.Mutex
	version uint64
	set     *policy.Set
	checked time.Time // when the version in the store was last read
}

// authzRecheck is how often a check looks for a new policy version: a
// change (applied here or on another replica) decides checks within it.
const authzRecheck = 250 * time.Millisecond

// AuthzPolicy is the policy set in force (documents, Rego modules and
// data), compiled once per policy version, and its version: what "moatless
// server --ext-authz" decides Envoy's checks with. The store's version is
// read at most every authzRecheck. Before any policy was applied, or when
// the set in force cannot be read, it is nil: every check is denied.
func (s *Server) AuthzPolicy() (*policy.Set, uint64) {
	c := &s.authzSet
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if c.set != nil && now.Sub(c.checked) < authzRecheck {
		return c.set, c.version
	}
	ctx := context.Background()
	cur, err := s.db.CurrentPolicyVersion(ctx, s.db.SQL())
	if err != nil {
		s.log.Error("ext_authz: read the policy version", "err", err)
		return c.set, c.version // the version in force keeps deciding
	}
	c.checked = now
	if cur == 0 {
		return nil, 0
	}
	if c.set != nil && c.version == cur {
		return c.set, c.version
	}
	ps, err := s.policySet(ctx)
	if err != nil {
		s.log.Error("ext_authz: read the policy set", "err", err)
		return c.set, c.version
	}
	set, err := policy.FromWire(ps, policy.Options{})
	if err != nil {
		s.log.Error("ext_authz: the policy set in force does not compile; keeping the previous one", "version", ps.Version, "err", err)
		return c.set, c.version
	}
	c.version, c.set = ps.Version, set
	return set, ps.Version
}

// AuditAuthzDecision records an ext_authz denial in the audit log, as the
// sidecars' reported denials are: kind decision.deny (or
// decision.unauthenticated), the caller as subject.
func (s *Server) AuditAuthzDecision(ctx context.Context, r extauthz.Record) {
	kind := audit.KindDecisionDeny
	if r.Decision.Outcome == policy.Unauthenticated {
		kind = audit.KindDecisionUnauthenticated
	}
	subject := r.Source
	if subject == "" {
		subject = r.SourceIP
	}
	// As a sidecar's report: "source" names a caller that passed mTLS
	// with its own SVID (Envoy's source principal), so a revoked token it
	// relays for its users is judged as the token's, not as the caller's
	// (detection); the token's issuer and subject when its signature
	// verified, clipped like a report's.
	d := map[string]string{
		"listener": "ext_authz", "source": r.Source, "source_ip": r.SourceIP, "destination": r.Destination,
		"method": r.Method, "path": r.Path,
		"policy": r.Decision.Policy, "rule": strconv.Itoa(r.Decision.Rule), "reason": r.Decision.Reason,
		"policy_version": strconv.FormatUint(r.PolicyVersion, 10),
	}
	if r.Decision.Outcome == policy.Unauthenticated {
		d["token_issuer"], d["token_subject"] = clipReported(r.TokenIssuer, maxReportName), clipReported(r.TokenSubject, maxReportName)
	}
	if n := len(r.Decision.Custom); n > 0 {
		d["rego_query"], d["input_sha256"] = r.Decision.Custom[n-1].Query, r.Decision.Custom[n-1].InputSHA256
	}
	for k, v := range d {
		if v == "" {
			delete(d, k)
		}
	}
	ev := audit.Event{Kind: kind, Actor: "ext_authz", Subject: subject, Outcome: audit.Denied, Details: d}
	if err := s.audit.Append(ctx, ev); err != nil {
		s.log.Error("audit log unavailable: ext_authz denial not recorded", "err", err)
	}
}

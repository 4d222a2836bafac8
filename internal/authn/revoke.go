package authn

import "github.com/moatless/moatless/internal/wire"

// revocationSet is an immutable set of revoked jti values, swapped whole.
type revocationSet struct {
	jtis map[string]struct{}
}

func (s *revocationSet) contains(jti string) bool {
	if s == nil || len(s.jtis) == 0 {
		return false
	}
	_, ok := s.jtis[jti]
	return ok
}

// SetRevokedTokens replaces the set of revoked token IDs with ids, as the
// watch stream delivers them (each update carries the whole list). From
// the moment it returns, every Verify refuses a token whose jti is in the
// set with ErrRevoked, whether or not the token is in the verified-token
// cache: the check runs on every use. Entries whose ExpiresAt (the
// token's own expiry) is more than the leeway in the past are dropped,
// since such tokens fail the exp check anyway. Safe for concurrent use.
func (v *Verifier) SetRevokedTokens(ids []wire.RevokedTokenID) {
	now := v.now()
	set := &revocationSet{jtis: make(map[string]struct{}, len(ids))}
	for _, id := range ids {
		if id.JTI == "" {
			continue
		}
		if !id.ExpiresAt.IsZero() && id.ExpiresAt.Add(v.leeway).Before(now) {
			continue
		}
		set.jtis[id.JTI] = struct{}{}
	}
	v.revoked.Store(set)
	v.log.Info("authn: revoked token list replaced", "count", len(set.jtis))
}

// isRevoked consults the pushed set and then Options.Revoked.
func (v *Verifier) isRevoked(jti string) bool {
	if jti == "" {
		return false
	}
	if v.revoked.Load().contains(jti) {
		return true
	}
	return v.opts.Revoked != nil && v.opts.Revoked(jti)
}

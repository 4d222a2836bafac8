package server

import (
	"time"

	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/wire"
)

// Revocation says that a node's identity is revoked, when and why. Status
// listings show a revoked node as revoked, never as connected or among the
// nodes a convergence waits for: it is cut off.
type Revocation struct {
	Revoked          bool      `json:"revoked"`
	RevokedAt        time.Time `json:"revoked_at,omitzero"`
	RevocationReason string    `json:"revocation_reason,omitempty"`
}

// nodeRevocation reports whether n's SPIFFE ID or current SVID serial is
// revoked, with the revocation's time and reason (the ID's when both are).
func (s *Server) nodeRevocation(n store.Node) Revocation {
	set := s.revs.Load()
	if set == nil {
		return Revocation{}
	}
	for _, k := range []string{n.SPIFFEID, n.Serial} {
		if k == "" || !(set.ids[k] || set.serials[k]) {
			continue
		}
		w := set.why[k]
		return Revocation{Revoked: true, RevokedAt: w.at, RevocationReason: w.reason}
	}
	return Revocation{}
}

// describe says which of id and serial is revoked, when and why, for the
// refusal a revoked node gets: it shows that message in its /readyz.
func (r *revocationSet) describe(id, serial string) string {
	what, w := id, r.why[id]
	if !r.ids[id] {
		what, w = "certificate "+serial+" of "+id, r.why[serial]
	}
	return wire.RevokedIDDetail{SPIFFEID: what, RevokedAt: w.at, Reason: w.reason}.String()
}

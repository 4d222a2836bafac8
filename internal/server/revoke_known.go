package server

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/store"
)

// maxNearestScan bounds the known IDs compared with an unknown one.
const maxNearestScan = 100000

// checkKnownID refuses to revoke a SPIFFE ID that no entry, node, SVID,
// join token or earlier revocation names, unless force: a typo would
// otherwise revoke nothing and report success while the identity meant
// stays trusted. The error (store.ErrNotFound) names the nearest known
// IDs. Revoking ahead of time is legitimate: force allows it.
func (s *Server) checkKnownID(ctx context.Context, id string, force bool) error {
	if force {
		return nil
	}
	known, err := s.db.IsKnownSPIFFEID(ctx, id)
	if err != nil || known {
		return err
	}
	all, err := s.db.KnownSPIFFEIDs(ctx, maxNearestScan)
	if err != nil {
		return err
	}
	// The server's own ID cannot be revoked: never suggest it.
	all = slices.DeleteFunc(all, func(k string) bool { return k == s.id.String() })
	msg := fmt.Sprintf("%s: no registration entry, node or SVID has this SPIFFE ID, so revoking it would cut off nothing", id)
	if near := nearestIDs(id, all, 3); len(near) > 0 {
		msg += "; nearest known: " + strings.Join(near, ", ")
	}
	return fmt.Errorf("%w: %s (to revoke it ahead of time anyway: moatless revoke --force, or \"force\": true)", store.ErrNotFound, msg)
}

// nearestIDs returns up to n of known, closest to id by edit distance
// first (ties in lexical order).
func nearestIDs(id string, known []string, n int) []string {
	type scored struct {
		id string
		d  int
	}
	var all []scored
	for _, k := range known {
		all = append(all, scored{k, policy.Levenshtein(id, k)})
	}
	slices.SortFunc(all, func(a, b scored) int {
		if a.d != b.d {
			return a.d - b.d
		}
		return strings.Compare(a.id, b.id)
	})
	var out []string
	for _, s := range all[:min(n, len(all))] {
		out = append(out, s.id)
	}
	return out
}

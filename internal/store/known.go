package store

import (
	"context"
	"fmt"
)

// knownIDsQuery is every SPIFFE ID the server has a record of: a
// registration entry, an attested node, an issued SVID not yet pruned, a
// join token, or a revocation.
const knownIDsQuery = `SELECT spiffe_id FROM entries UNION SELECT spiffe_id FROM nodes
UNION SELECT spiffe_id FROM svids UNION SELECT spiffe_id FROM join_tokens UNION SELECT spiffe_id FROM revoked_ids`

// IsKnownSPIFFEID reports whether id names a registration entry, an
// attested node, an issued SVID, a join token or a revocation.
func (s *DB) IsKnownSPIFFEID(ctx context.Context, id string) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM ("+knownIDsQuery+") AS known WHERE spiffe_id = $1", id).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("store: look up SPIFFE ID: %w", err)
	}
	return n > 0, nil
}

// KnownSPIFFEIDs lists what IsKnownSPIFFEID knows, at most limit IDs in
// no particular order.
func (s *DB) KnownSPIFFEIDs(ctx context.Context, limit int) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, knownIDsQuery+" LIMIT $1", limit)
	if err != nil {
		return nil, fmt.Errorf("store: list SPIFFE IDs: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("store: list SPIFFE IDs: %w", err)
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// RevokedID is a revoked SPIFFE ID. It stays revoked until an admin lifts it.
type RevokedID struct {
	SPIFFEID  string    `json:"spiffe_id"`
	Reason    string    `json:"reason,omitempty"`
	RevokedBy string    `json:"revoked_by"`
	RevokedAt time.Time `json:"revoked_at"`
}

// RevokedSerial is a revoked certificate, kept until it expires.
type RevokedSerial struct {
	Serial    string    `json:"serial"`
	SPIFFEID  string    `json:"spiffe_id"`
	ExpiresAt time.Time `json:"expires_at"`
	Reason    string    `json:"reason,omitempty"`
	RevokedBy string    `json:"revoked_by"`
	RevokedAt time.Time `json:"revoked_at"`
}

// RevocationList is every revocation in force.
type RevocationList struct {
	IDs     []RevokedID     `json:"spiffe_ids"`
	Serials []RevokedSerial `json:"serials"`
}

// RevokeID revokes a SPIFFE ID and bumps the revocations version.
// ErrConflict if it is revoked already.
func (s *DB) RevokeID(ctx context.Context, tx *sql.Tx, r RevokedID) (uint64, error) {
	_, err := tx.ExecContext(ctx, "INSERT INTO revoked_ids (spiffe_id, reason, revoked_by, revoked_at) VALUES ($1,$2,$3,$4)",
		r.SPIFFEID, r.Reason, r.RevokedBy, ns(r.RevokedAt))
	if isUniqueViolation(err) {
		return 0, fmt.Errorf("%w: %s is revoked already", ErrConflict, r.SPIFFEID)
	}
	if err != nil {
		return 0, fmt.Errorf("store: revoke id: %w", err)
	}
	return s.BumpVersion(ctx, tx, SectionRevocations)
}

// UnrevokeID lifts the revocation of a SPIFFE ID; ErrNotFound if it was
// not revoked.
func (s *DB) UnrevokeID(ctx context.Context, tx *sql.Tx, id string) (uint64, error) {
	res, err := tx.ExecContext(ctx, "DELETE FROM revoked_ids WHERE spiffe_id = $1", id)
	if err != nil {
		return 0, fmt.Errorf("store: lift revocation: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return 0, ErrNotFound
	}
	return s.BumpVersion(ctx, tx, SectionRevocations)
}

// RevokeSerial revokes a certificate by serial and bumps the revocations
// version. ErrConflict if it is revoked already.
func (s *DB) RevokeSerial(ctx context.Context, tx *sql.Tx, r RevokedSerial) (uint64, error) {
	_, err := tx.ExecContext(ctx, `INSERT INTO revoked_serials (serial, spiffe_id, expires_at, reason, revoked_by, revoked_at)
		VALUES ($1,$2,$3,$4,$5,$6)`, r.Serial, r.SPIFFEID, ns(r.ExpiresAt), r.Reason, r.RevokedBy, ns(r.RevokedAt))
	if isUniqueViolation(err) {
		return 0, fmt.Errorf("%w: serial %s is revoked already", ErrConflict, r.Serial)
	}
	if err != nil {
		return 0, fmt.Errorf("store: revoke serial: %w", err)
	}
	return s.BumpVersion(ctx, tx, SectionRevocations)
}

// Revocations returns the revocations in force at now: every revoked ID and
// the revoked serials that have not expired.
func (s *DB) Revocations(ctx context.Context, now time.Time) (RevocationList, error) {
	l := RevocationList{IDs: []RevokedID{}, Serials: []RevokedSerial{}}
	rows, err := s.db.QueryContext(ctx, "SELECT spiffe_id, reason, revoked_by, revoked_at FROM revoked_ids ORDER BY spiffe_id")
	if err != nil {
		return l, fmt.Errorf("store: list revocations: %w", err)
	}
	for rows.Next() {
		var r RevokedID
		var at int64
		if err := rows.Scan(&r.SPIFFEID, &r.Reason, &r.RevokedBy, &at); err != nil {
			rows.Close()
			return l, fmt.Errorf("store: list revocations: %w", err)
		}
		r.RevokedAt = fromNS(at)
		l.IDs = append(l.IDs, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return l, err
	}
	rows, err = s.db.QueryContext(ctx, `SELECT serial, spiffe_id, expires_at, reason, revoked_by, revoked_at FROM revoked_serials
		WHERE expires_at > $1 ORDER BY serial`, ns(now))
	if err != nil {
		return l, fmt.Errorf("store: list revocations: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r RevokedSerial
		var x, at int64
		if err := rows.Scan(&r.Serial, &r.SPIFFEID, &x, &r.Reason, &r.RevokedBy, &at); err != nil {
			return l, fmt.Errorf("store: list revocations: %w", err)
		}
		r.ExpiresAt, r.RevokedAt = fromNS(x), fromNS(at)
		l.Serials = append(l.Serials, r)
	}
	return l, rows.Err()
}

// IsRevokedID reports whether id is revoked.
func (s *DB) IsRevokedID(ctx context.Context, id string) (bool, error) {
	return isRevokedID(ctx, s.db, id)
}

// IsRevokedIDTx is IsRevokedID inside tx.
func (s *DB) IsRevokedIDTx(ctx context.Context, tx *sql.Tx, id string) (bool, error) {
	return isRevokedID(ctx, tx, id)
}

func isRevokedID(ctx context.Context, q Queryer, id string) (bool, error) {
	return rowExists(ctx, q, "SELECT spiffe_id FROM revoked_ids WHERE spiffe_id = $1", id)
}

// IsRevokedSerialTx reports, inside tx, whether the certificate with
// serial is revoked (expired entries included: a caller checks expiry
// itself).
func (s *DB) IsRevokedSerialTx(ctx context.Context, tx *sql.Tx, serial string) (bool, error) {
	return rowExists(ctx, tx, "SELECT serial FROM revoked_serials WHERE serial = $1", serial)
}

// rowExists reports whether query (one column, one argument) finds a row.
func rowExists(ctx context.Context, q Queryer, query, arg string) (bool, error) {
	var x string
	err := q.QueryRowContext(ctx, query, arg).Scan(&x)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store: read revocation: %w", err)
	}
	return true, nil
}

// PruneRevokedSerials drops revoked serials whose certificates expired at
// or before now, bumping the revocations version when any went.
func (s *DB) PruneRevokedSerials(ctx context.Context, tx *sql.Tx, now time.Time) (int64, error) {
	res, err := tx.ExecContext(ctx, "DELETE FROM revoked_serials WHERE expires_at <= $1", ns(now))
	if err != nil {
		return 0, fmt.Errorf("store: prune revoked serials: %w", err)
	}
	n, _ := res.RowsAffected()
	if n > 0 {
		if _, err := s.BumpVersion(ctx, tx, SectionRevocations); err != nil {
			return 0, err
		}
	}
	return n, nil
}

package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// FindingKey is what repeated detections merge by (detect.Key): the
// detector, the identity, and the destination ("" for detectors that key
// by identity alone).
type FindingKey struct{ Detector, Identity, Destination string }

// FoldFunc folds a detection into the stored finding it merges with and
// returns the row to store in its place (same ID); stored is nil when
// the detection opens a finding of its own, and the row to insert is
// returned. It runs inside MergeFinding's transaction, with the stored
// row locked: it must not touch the store.
type FoldFunc func(stored *FindingRow) (FindingRow, error)

// MergeFinding persists a detection of key, first sighted by its engine
// as finding id and last at lastAt, in one transaction that claims the
// key (detect_open_findings):
//
//   - when no finding of the key is open (none claimed it, or its last
//     sighting is before openSince, the caller's suppress window back from
//     lastAt) or id holds the claim already, id claims it; fold gets id's
//     stored row, or nil when id is not stored yet, and its result is
//     inserted;
//   - otherwise the detection belongs to the finding that holds the
//     claim: fold gets that one's row and its result replaces it.
//
// The claim is a row keyed by the key, locked until the transaction
// ends, and the stored finding is read locked: of replicas persisting
// the same key at once, one inserts and the others fold into its row in
// turn, each seeing the row as the one before left it, so no detection
// is counted twice or lost. MergeFinding returns the row stored and
// whether it was inserted (the detection opened a finding).
func (s *DB) MergeFinding(ctx context.Context, key FindingKey, id string, lastAt, openSince time.Time, fold FoldFunc) (FindingRow, bool, error) {
	var out FindingRow
	var inserted bool
	err := s.Tx(ctx, func(tx *sql.Tx) error {
		owner, err := s.claimFinding(ctx, tx, key, id, lastAt, openSince)
		if err != nil {
			return err
		}
		stored, err := s.findingForUpdate(ctx, tx, owner)
		if err != nil {
			return err
		}
		if stored == nil && owner != id {
			// The claimed finding is gone (removed by hand): the claim
			// passes to this one.
			if _, err := tx.ExecContext(ctx, `UPDATE detect_open_findings SET finding_id = $4
				WHERE detector = $1 AND identity = $2 AND destination = $3`, key.Detector, key.Identity, key.Destination, id); err != nil {
				return fmt.Errorf("store: claim finding %s: %w", id, err)
			}
			owner = id
		}
		row, err := fold(stored)
		if err != nil {
			return err
		}
		if row.ID != owner {
			return fmt.Errorf("store: merge finding: fold returned finding %q for %q", row.ID, owner)
		}
		if stored == nil {
			_, err = tx.ExecContext(ctx, `INSERT INTO detect_findings (id, at, last_at, detector, severity, identity, destination, count, incident_id, body)
				VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)`,
				row.ID, ns(row.At), ns(row.LastAt), row.Detector, row.Severity, row.Identity, row.Destination, i64(row.Count), row.IncidentID, string(row.Body))
		} else {
			_, err = tx.ExecContext(ctx, `UPDATE detect_findings SET at = $2, last_at = $3, severity = $4, count = $5, incident_id = $6, body = $7 WHERE id = $1`,
				row.ID, ns(row.At), ns(row.LastAt), row.Severity, i64(row.Count), row.IncidentID, string(row.Body))
		}
		if err != nil {
			return fmt.Errorf("store: record finding %s: %w", row.ID, err)
		}
		// The claim lasts from the finding's last sighting, whoever saw it.
		if _, err := tx.ExecContext(ctx, `UPDATE detect_open_findings SET last_at = $4
			WHERE detector = $1 AND identity = $2 AND destination = $3 AND last_at < $4`,
			key.Detector, key.Identity, key.Destination, ns(row.LastAt)); err != nil {
			return fmt.Errorf("store: claim finding %s: %w", row.ID, err)
		}
		out, inserted = row, stored == nil
		return nil
	})
	return out, inserted, err
}

// claimFinding makes id the open finding of key unless another one
// holds an open claim (last seen at or after openSince), and returns the
// holder. Under PostgreSQL the conflicting insert waits for a concurrent
// claimant to commit and locks the claim row, updated or not.
func (s *DB) claimFinding(ctx context.Context, tx *sql.Tx, key FindingKey, id string, lastAt, openSince time.Time) (string, error) {
	res, err := tx.ExecContext(ctx, `INSERT INTO detect_open_findings (detector, identity, destination, finding_id, last_at) VALUES ($1,$2,$3,$4,$5)
		ON CONFLICT (detector, identity, destination) DO UPDATE SET finding_id = excluded.finding_id, last_at = excluded.last_at
		WHERE detect_open_findings.finding_id = excluded.finding_id OR detect_open_findings.last_at < $6`,
		key.Detector, key.Identity, key.Destination, id, ns(lastAt), ns(openSince))
	if err != nil {
		return "", fmt.Errorf("store: claim finding %s: %w", id, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return "", fmt.Errorf("store: claim finding %s: %w", id, err)
	} else if n == 1 {
		return id, nil
	}
	var owner string
	if err := tx.QueryRowContext(ctx, `SELECT finding_id FROM detect_open_findings WHERE detector = $1 AND identity = $2 AND destination = $3`+s.forUpdate(),
		key.Detector, key.Identity, key.Destination).Scan(&owner); err != nil {
		return "", fmt.Errorf("store: read the open finding of %s %s: %w", key.Detector, key.Identity, err)
	}
	return owner, nil
}

// findingForUpdate reads one finding inside tx, locked under PostgreSQL
// until tx ends; nil when it is not stored.
func (s *DB) findingForUpdate(ctx context.Context, tx *sql.Tx, id string) (*FindingRow, error) {
	var f FindingRow
	var at, last, n int64
	var body string
	err := tx.QueryRowContext(ctx, "SELECT id, at, last_at, detector, severity, identity, destination, count, incident_id, body FROM detect_findings WHERE id = $1"+s.forUpdate(), id).
		Scan(&f.ID, &at, &last, &f.Detector, &f.Severity, &f.Identity, &f.Destination, &n, &f.IncidentID, &body)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: read finding %s: %w", id, err)
	}
	f.At, f.LastAt, f.Count, f.Body = fromNS(at), fromNS(last), uint64(n), []byte(body)
	return &f, nil
}

// LinkFinding links a stored finding to an incident (incident_id, which
// readers take over the body's), changing nothing else: the finding's
// count and sightings belong to MergeFinding, which other replicas may be
// running on it at the same time. ErrNotFound when it is not stored.
func (s *DB) LinkFinding(ctx context.Context, q Queryer, id, incidentID string) error {
	res, err := q.ExecContext(ctx, "UPDATE detect_findings SET incident_id = $2 WHERE id = $1", id, incidentID)
	if err != nil {
		return fmt.Errorf("store: link finding %s to incident %s: %w", id, incidentID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: no finding %q", ErrNotFound, id)
	}
	return nil
}

// PruneOpenFindings deletes the claims of findings last seen before
// before (their suppress window has passed: a new detection opens a new
// finding anyway).
func (s *DB) PruneOpenFindings(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, "DELETE FROM detect_open_findings WHERE last_at < $1", ns(before))
	if err != nil {
		return 0, fmt.Errorf("store: prune open findings: %w", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

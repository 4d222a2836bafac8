package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// StaleNodes lists up to limit nodes whose node SVID expired before
// cutoff: they stopped renewing (an agent renews at half life) and are due
// for eviction. Oldest expiry first.
func (s *DB) StaleNodes(ctx context.Context, cutoff time.Time, limit int) ([]Node, error) {
	return s.queryNodes(ctx, " WHERE not_after < $1 ORDER BY not_after LIMIT $2", ns(cutoff), limit)
}

// EvictNode removes node id if its node SVID still expired before cutoff
// (a renewal on another replica in the meantime saves it: evicted false),
// and revokes every certificate issued to it (its own and its workloads')
// that is still valid at now, so nothing the node obtained outlives it.
// Its registration entries stay: a node that attests again with a new
// join token serves them again. The revocations version moves when
// anything was revoked; the caller appends the audit record in tx.
func (s *DB) EvictNode(ctx context.Context, tx *sql.Tx, id string, cutoff, now time.Time, by string) (evicted bool, revoked int64, err error) {
	res, err := tx.ExecContext(ctx, "DELETE FROM nodes WHERE spiffe_id = $1 AND not_after < $2", id, ns(cutoff))
	if err != nil {
		return false, 0, fmt.Errorf("store: evict node: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return false, 0, err
	}
	res, err = tx.ExecContext(ctx, `INSERT INTO revoked_serials (serial, spiffe_id, expires_at, reason, revoked_by, revoked_at)
		SELECT serial, spiffe_id, not_after, 'node evicted', $2, $3 FROM svids WHERE issued_to = $1 AND not_after > $3
		ON CONFLICT (serial) DO NOTHING`, id, by, ns(now))
	if err != nil {
		return false, 0, fmt.Errorf("store: revoke certificates of evicted node: %w", err)
	}
	if revoked, err = res.RowsAffected(); err != nil {
		return false, 0, fmt.Errorf("store: revoke certificates of evicted node: %w", err)
	}
	if revoked > 0 {
		if _, err := s.BumpVersion(ctx, tx, SectionRevocations); err != nil {
			return false, 0, err
		}
	}
	return true, revoked, nil
}

// SupersedeNodeSVIDs revokes, in tx, every node SVID issued for id that
// is still valid at now, except keep (the one a re-attestation just
// issued), with reason "node re-attested"; it bumps the revocations
// version when it revoked any and returns how many.
func (s *DB) SupersedeNodeSVIDs(ctx context.Context, tx *sql.Tx, id, keep string, now time.Time, by string) (int64, error) {
	res, err := tx.ExecContext(ctx, `INSERT INTO revoked_serials (serial, spiffe_id, expires_at, reason, revoked_by, revoked_at)
		SELECT serial, spiffe_id, not_after, 'node re-attested', $3, $4 FROM svids
		WHERE issued_to = $1 AND spiffe_id = $1 AND kind = $5 AND serial <> $2 AND not_after > $4
		ON CONFLICT (serial) DO NOTHING`, id, keep, by, ns(now), SVIDKindNode)
	if err != nil {
		return 0, fmt.Errorf("store: revoke superseded node SVIDs: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("store: revoke superseded node SVIDs: %w", err)
	}
	if n > 0 {
		if _, err := s.BumpVersion(ctx, tx, SectionRevocations); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// AuditSegment is one archived stretch of the audit log.
type AuditSegment struct {
	FirstSeq   uint64    `json:"first_seq"`
	LastSeq    uint64    `json:"last_seq"`
	LastHash   []byte    `json:"last_hash"`
	Records    uint64    `json:"records"`
	File       string    `json:"file"`
	FileSHA256 string    `json:"file_sha256"`
	ArchivedAt time.Time `json:"archived_at"`
	ArchivedBy string    `json:"archived_by"`
}

// ErrArchiveMoved: another archiver committed first; nothing changed.
var ErrArchiveMoved = errors.New("store: the audit log was archived concurrently")

// AuditBase is where the audit log in the store starts: the sequence
// number and hash of the last archived record (0 and nil when nothing was
// archived). The first record in audit_log has seq base+1 and that hash as
// its previous hash.
func (s *DB) AuditBase(ctx context.Context) (uint64, []byte, error) {
	return auditBase(ctx, s.db)
}

func auditBase(ctx context.Context, q Queryer) (uint64, []byte, error) {
	var seq int64
	var hash []byte
	err := q.QueryRowContext(ctx, "SELECT last_seq, last_hash FROM audit_archive ORDER BY last_seq DESC LIMIT 1").Scan(&seq, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("store: read audit base: %w", err)
	}
	return uint64(seq), hash, nil
}

// Base is AuditBase within the snapshot.
func (a *AuditSnapshot) Base(ctx context.Context) (uint64, []byte, error) {
	return auditBase(ctx, a.tx)
}

// AuditSegments lists the archived segments, oldest first.
func (s *DB) AuditSegments(ctx context.Context) ([]AuditSegment, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT first_seq, last_seq, last_hash, records, file, file_sha256, archived_at, archived_by
		FROM audit_archive ORDER BY first_seq`)
	if err != nil {
		return nil, fmt.Errorf("store: list audit segments: %w", err)
	}
	defer rows.Close()
	var out []AuditSegment
	for rows.Next() {
		var g AuditSegment
		var first, last, n, at int64
		if err := rows.Scan(&first, &last, &g.LastHash, &n, &g.File, &g.FileSHA256, &at, &g.ArchivedBy); err != nil {
			return nil, fmt.Errorf("store: list audit segments: %w", err)
		}
		g.FirstSeq, g.LastSeq, g.Records, g.ArchivedAt = uint64(first), uint64(last), uint64(n), fromNS(at)
		out = append(out, g)
	}
	return out, rows.Err()
}

// AuditRowsBefore returns up to limit records after seq after whose time
// is before before, in seq order: the candidates of the next segment.
// Records are in seq order and their times never decrease much, but only
// a prefix of old records may be archived, so the scan stops at the first
// record that is not old enough.
func (s *DB) AuditRowsBefore(ctx context.Context, after uint64, before time.Time, limit int) ([]AuditRow, error) {
	q, err := s.db.QueryContext(ctx, `SELECT seq, at, kind, actor, subject, outcome, details, prev_hash, hash
		FROM audit_log WHERE `+s.intSeq()+` AND seq > $1 ORDER BY seq LIMIT $2`, int64(after), limit)
	if err != nil {
		return nil, fmt.Errorf("store: read audit log: %w", err)
	}
	rows, err := scanAuditRows(q, true)
	if err != nil {
		return nil, err
	}
	for i, r := range rows {
		if r.At >= before.UnixNano() {
			return rows[:i], nil
		}
	}
	return rows, nil
}

// CommitAuditSegment records seg as archived and deletes its records from
// audit_log, inside tx, after checking under the chain head's lock that
// the log still starts where the segment does (no concurrent archive) and
// that the stored records are exactly the ones archived (hashes compared
// record by record): the rows deleted are the rows written to the file.
// ErrArchiveMoved when another archiver got there first.
func (s *DB) CommitAuditSegment(ctx context.Context, tx *sql.Tx, seg AuditSegment, hashes [][]byte, now time.Time) error {
	if _, _, err := s.LockAuditHead(ctx, tx); err != nil {
		return err
	}
	base, _, err := auditBase(ctx, tx)
	if err != nil {
		return err
	}
	if base+1 != seg.FirstSeq || seg.LastSeq < seg.FirstSeq || uint64(len(hashes)) != seg.LastSeq-seg.FirstSeq+1 {
		return fmt.Errorf("%w (the log now starts after %d, the segment at %d)", ErrArchiveMoved, base, seg.FirstSeq)
	}
	rows, err := tx.QueryContext(ctx, "SELECT seq, hash FROM audit_log WHERE seq >= $1 AND seq <= $2 ORDER BY seq", int64(seg.FirstSeq), int64(seg.LastSeq))
	if err != nil {
		return fmt.Errorf("store: archive audit log: %w", err)
	}
	i := 0
	for rows.Next() {
		var seq int64
		var h []byte
		if err := rows.Scan(&seq, &h); err != nil {
			rows.Close()
			return fmt.Errorf("store: archive audit log: %w", err)
		}
		if i >= len(hashes) || uint64(seq) != seg.FirstSeq+uint64(i) || string(h) != string(hashes[i]) {
			rows.Close()
			return fmt.Errorf("store: archive audit log: record %d changed while it was archived; nothing deleted", seq)
		}
		i++
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("store: archive audit log: %w", err)
	}
	if i != len(hashes) {
		return fmt.Errorf("store: archive audit log: %d of %d records found; nothing deleted", i, len(hashes))
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO audit_archive (first_seq, last_seq, last_hash, records, file, file_sha256, archived_at, archived_by)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, int64(seg.FirstSeq), int64(seg.LastSeq), seg.LastHash, int64(seg.Records),
		seg.File, seg.FileSHA256, ns(now), seg.ArchivedBy); err != nil {
		return fmt.Errorf("store: record audit segment: %w", err)
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM audit_log WHERE seq >= $1 AND seq <= $2", int64(seg.FirstSeq), int64(seg.LastSeq)); err != nil {
		return fmt.Errorf("store: delete archived audit records: %w", err)
	}
	return nil
}

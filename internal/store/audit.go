package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// AuditRow is one stored audit record. The hashing and verification rules
// live in package audit; the store only keeps rows and the chain head.
type AuditRow struct {
	Seq      uint64
	At       int64 // Unix nanoseconds
	Kind     string
	Actor    string
	Subject  string
	Outcome  string
	Details  string // canonical JSON object
	PrevHash []byte
	Hash     []byte
}

// LockAuditHead returns the chain head (last sequence number and hash; 0
// and nil for an empty log) and, under PostgreSQL, locks its row until tx
// ends so appends from several replicas serialize.
func (s *DB) LockAuditHead(ctx context.Context, tx *sql.Tx) (uint64, []byte, error) {
	var seq int64
	var hash []byte
	err := tx.QueryRowContext(ctx, "SELECT seq, hash FROM audit_head WHERE id = 1"+s.forUpdate()).Scan(&seq, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		// First append ever: create the head. Concurrent first appenders
		// race on the primary key; the loser's transaction fails and retries.
		if _, err := tx.ExecContext(ctx, "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, $1)", []byte{}); err != nil {
			return 0, nil, fmt.Errorf("store: create audit head: %w", err)
		}
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("store: lock audit head: %w", err)
	}
	if len(hash) == 0 {
		hash = nil
	}
	return uint64(seq), hash, nil
}

// AppendAuditRows inserts rows (already chained by the caller) and moves the
// head to the last one. Call it in the transaction that called
// LockAuditHead.
func (s *DB) AppendAuditRows(ctx context.Context, tx *sql.Tx, rows []AuditRow) error {
	if len(rows) == 0 {
		return nil
	}
	// Multi-row INSERTs: one statement per chunk, not per record, is most of
	// the cost of a group commit.
	const chunk = 100
	for start := 0; start < len(rows); start += chunk {
		part := rows[start:min(start+chunk, len(rows))]
		args := make([]any, 0, len(part)*9)
		for _, r := range part {
			args = append(args, int64(r.Seq), r.At, r.Kind, r.Actor, r.Subject, r.Outcome, r.Details, nonNil(r.PrevHash), r.Hash)
		}
		q := insertValues("INSERT INTO audit_log (seq, at, kind, actor, subject, outcome, details, prev_hash, hash)", len(part), 9)
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("store: append audit records %d-%d: %w", part[0].Seq, part[len(part)-1].Seq, err)
		}
	}
	last := rows[len(rows)-1]
	if _, err := tx.ExecContext(ctx, "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1", int64(last.Seq), last.Hash); err != nil {
		return fmt.Errorf("store: move audit head: %w", err)
	}
	return nil
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// AuditHead returns the chain head without locking it.
func (s *DB) AuditHead(ctx context.Context) (uint64, []byte, error) {
	var seq int64
	var hash []byte
	err := s.db.QueryRowContext(ctx, "SELECT seq, hash FROM audit_head WHERE id = 1").Scan(&seq, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("store: read audit head: %w", err)
	}
	if len(hash) == 0 {
		hash = nil
	}
	return uint64(seq), hash, nil
}

// AuditRows returns up to limit records with seq > after, in storage order
// of seq. Verification reads the whole log with it page by page.
func (s *DB) AuditRows(ctx context.Context, after uint64, limit int) ([]AuditRow, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT seq, at, kind, actor, subject, outcome, details, prev_hash, hash
		FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2`, int64(after), limit)
	if err != nil {
		return nil, fmt.Errorf("store: read audit log: %w", err)
	}
	return scanAuditRows(rows)
}

// scanAuditRows reads all of rows, the result of a query for the audit_log
// columns seq, at, kind, actor, subject, outcome, details, prev_hash, hash
// in that order, and closes it. A scan error is "store: read audit log:
// ..."; a query that matched nothing yields nil.
func scanAuditRows(rows *sql.Rows) ([]AuditRow, error) {
	defer rows.Close()
	var out []AuditRow
	for rows.Next() {
		var r AuditRow
		var seq int64
		if err := rows.Scan(&seq, &r.At, &r.Kind, &r.Actor, &r.Subject, &r.Outcome, &r.Details, &r.PrevHash, &r.Hash); err != nil {
			return nil, fmt.Errorf("store: read audit log: %w", err)
		}
		r.Seq = uint64(seq)
		out = append(out, r)
	}
	return out, rows.Err()
}

// AuditRowsDesc returns up to limit records with seq < before (0: from the
// newest), newest first, for listing.
func (s *DB) AuditRowsDesc(ctx context.Context, before uint64, limit int) ([]AuditRow, error) {
	q := `SELECT seq, at, kind, actor, subject, outcome, details, prev_hash, hash FROM audit_log`
	args := []any{limit}
	if before > 0 {
		q += " WHERE seq < $2"
		args = append(args, int64(before))
	}
	rows, err := s.db.QueryContext(ctx, q+" ORDER BY seq DESC LIMIT $1", args...)
	if err != nil {
		return nil, fmt.Errorf("store: read audit log: %w", err)
	}
	return scanAuditRows(rows)
}

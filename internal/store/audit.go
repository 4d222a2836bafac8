package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"sort"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// AuditRow is one stored audit record. The hashing and verification rules
// live in package audit; the store only keeps rows and the chain head.
type AuditRow struct {
	// Seq is the sequence number as stored. The chain is 1..head; the
	// column itself holds any BIGINT, so readers that judge the log (audit
	// verify) must see values below 1 too.
	Seq      int64
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
	if seq < 0 {
		// Only an edit of the table does this; chaining after it would
		// wrap the sequence. Appends fail until the log is repaired.
		return 0, nil, fmt.Errorf("store: audit head names record %d, but sequence numbers start at 1: the log was edited (run moatless audit verify)", seq)
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
			args = append(args, r.Seq, r.At, r.Kind, r.Actor, r.Subject, r.Outcome, r.Details, nonNil(r.PrevHash), r.Hash)
		}
		q := insertValues("INSERT INTO audit_log (seq, at, kind, actor, subject, outcome, details, prev_hash, hash)", len(part), 9)
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("store: append audit records %d-%d: %w", part[0].Seq, part[len(part)-1].Seq, err)
		}
	}
	last := rows[len(rows)-1]
	if _, err := tx.ExecContext(ctx, "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1", last.Seq, last.Hash); err != nil {
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
	seq, hash, err := auditHead(ctx, s.db)
	if err == nil && seq < 0 {
		err = fmt.Errorf("store: audit head names record %d: sequence numbers start at 1", seq)
	}
	return uint64(max(seq, 0)), hash, err
}

// querier is what *sql.DB and *sql.Tx share.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// auditHead reads the chain head as stored (0 and nil when there is none).
func auditHead(ctx context.Context, q querier) (int64, []byte, error) {
	var seq int64
	var hash []byte
	err := q.QueryRowContext(ctx, "SELECT seq, hash FROM audit_head WHERE id = 1").Scan(&seq, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("store: read audit head: %w", err)
	}
	if len(hash) == 0 {
		hash = nil
	}
	return seq, hash, nil
}

// intSeq is a condition on audit_log.seq that keeps rows whose sequence
// number is an integer. PostgreSQL's BIGINT holds nothing else; SQLite
// stores whatever it is given in a column of integer affinity (NULL, text,
// a fraction), and such rows are reported by AuditSnapshot.Anomalies, not
// read as records.
func (s *DB) intSeq() string {
	if s.dialect == Postgres {
		return "TRUE"
	}
	return "typeof(seq) = 'integer'"
}

// AuditRowsDesc returns up to limit records with 1 <= seq <= upTo, newest
// first, for listing. Rows outside that range are not part of the chain
// (audit verify reports them), so a listing never shows them.
func (s *DB) AuditRowsDesc(ctx context.Context, upTo uint64, limit int) ([]AuditRow, error) {
	if upTo == 0 {
		return nil, nil
	}
	rows, err := s.db.QueryContext(ctx, `SELECT seq, at, kind, actor, subject, outcome, details, prev_hash, hash
		FROM audit_log WHERE `+s.intSeq()+` AND seq >= 1 AND seq <= $1 ORDER BY seq DESC LIMIT $2`, int64(min(upTo, math.MaxInt64)), limit)
	if err != nil {
		return nil, fmt.Errorf("store: read audit log: %w", err)
	}
	return scanAuditRows(rows, true)
}

// AuditRowsDescKinds is AuditRowsDesc for records whose kind starts with
// one of prefixes (each a literal prefix such as "oauth.", matched byte
// for byte).
func (s *DB) AuditRowsDescKinds(ctx context.Context, upTo uint64, limit int, prefixes []string) ([]AuditRow, error) {
	if len(prefixes) == 0 {
		return s.AuditRowsDesc(ctx, upTo, limit)
	}
	return s.AuditRowsRangeKinds(ctx, 1, upTo, limit, prefixes)
}

// AuditRowsRangeKinds is AuditRowsDescKinds for the records with
// from <= seq <= upTo: the bound keeps a search for rare kinds from
// reading the whole log.
//
// It reads through the audit_log_kind index (kind, seq) (migration 0063):
// first the distinct kinds under each prefix (auditKinds, one index probe
// per kind), then for each kind its newest limit records in that range (an
// index walk that stops at limit), merged newest first. A page costs about
// the same whether its kinds are rare or most of the log; a filter over
// the log back from its head read the whole log for a rare kind, and a
// range over the index sorted every record of a common one.
func (s *DB) AuditRowsRangeKinds(ctx context.Context, from, upTo uint64, limit int, prefixes []string) ([]AuditRow, error) {
	return s.auditRange(ctx, from, upTo, limit, prefixes, true)
}

// AuditEventsDescKinds is AuditRowsDescKinds without the hashes (PrevHash
// and Hash are nil): for readers that show events and do not judge the
// chain (the dashboard's service graph), which then neither read nor copy
// them.
func (s *DB) AuditEventsDescKinds(ctx context.Context, upTo uint64, limit int, prefixes []string) ([]AuditRow, error) {
	return s.auditRange(ctx, 1, upTo, limit, prefixes, false)
}

// auditColumns are the audit_log columns a read selects, in scanAuditRows'
// order: with or without the hashes.
func auditColumns(hashes bool) string {
	if hashes {
		return "seq, at, kind, actor, subject, outcome, details, prev_hash, hash"
	}
	return "seq, at, kind, actor, subject, outcome, details"
}

func (s *DB) auditRange(ctx context.Context, from, upTo uint64, limit int, prefixes []string, hashes bool) ([]AuditRow, error) {
	from = max(from, 1)
	if upTo < from || limit <= 0 {
		return nil, nil
	}
	hi, lo := int64(min(upTo, math.MaxInt64)), int64(min(from, math.MaxInt64))
	if len(prefixes) == 0 {
		rows, err := s.db.QueryContext(ctx, `SELECT `+auditColumns(hashes)+`
			FROM audit_log WHERE `+s.intSeq()+` AND seq >= $3 AND seq <= $1 ORDER BY seq DESC LIMIT $2`, hi, limit, lo)
		if err != nil {
			return nil, fmt.Errorf("store: read audit log: %w", err)
		}
		return scanAuditRows(rows, hashes)
	}
	for _, p := range prefixes {
		if !utf8.ValidString(p) {
			return nil, fmt.Errorf("store: read audit log: kind prefix %q is not UTF-8", p)
		}
	}
	kinds, err := s.auditKinds(ctx, prefixes)
	if err != nil {
		return nil, err
	}
	var out []AuditRow
	for _, k := range kinds {
		rows, err := s.db.QueryContext(ctx, s.auditKindRowsQuery(hashes), s.customPlan(hi, limit, lo, k)...)
		if err != nil {
			return nil, fmt.Errorf("store: read audit log: %w", err)
		}
		l, err := scanAuditRows(rows, hashes)
		if err != nil {
			return nil, err
		}
		out = append(out, l...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Seq > out[j].Seq })
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// auditKinds lists the distinct kinds in the audit log that start with
// one of prefixes, in byte order. It skips through the audit_log_kind
// index (a loose index scan: one probe for the least kind above the last
// one found), so it costs one probe per kind, not one per record. A
// prefix is the byte range [prefix, its successor), compared in the
// index's collation: exact for any text, where LIKE would be
// case-insensitive in SQLite and unindexed in PostgreSQL outside the C
// collation.
func (s *DB) auditKinds(ctx context.Context, prefixes []string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	for _, p := range prefixes {
		q, args := s.auditKindsQuery(p)
		rows, err := s.db.QueryContext(ctx, q, args...)
		if err != nil {
			return nil, fmt.Errorf("store: read audit kinds: %w", err)
		}
		for rows.Next() {
			var k string
			if err := rows.Scan(&k); err != nil {
				rows.Close()
				return nil, fmt.Errorf("store: read audit kinds: %w", err)
			}
			if !seen[k] {
				seen[k] = true
				out = append(out, k)
			}
		}
		if err := rows.Close(); err != nil {
			return nil, fmt.Errorf("store: read audit kinds: %w", err)
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("store: read audit kinds: %w", err)
		}
	}
	sort.Strings(out)
	return out, nil
}

// scanAuditRows reads all of rows, the result of a query for the audit_log
// columns auditColumns(hashes) (seq, at, kind, actor, subject, outcome,
// details, and prev_hash, hash with hashes), and closes it. A scan error
// is "store: read audit log: ..."; a query that matched nothing yields nil.
func scanAuditRows(rows *sql.Rows, hashes bool) ([]AuditRow, error) {
	defer rows.Close()
	var out []AuditRow
	for rows.Next() {
		var r AuditRow
		dst := []any{&r.Seq, &r.At, &r.Kind, &r.Actor, &r.Subject, &r.Outcome, &r.Details}
		if hashes {
			dst = append(dst, &r.PrevHash, &r.Hash)
		}
		if err := rows.Scan(dst...); err != nil {
			return nil, fmt.Errorf("store: read audit log: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// AuditSnapshot reads the audit tables as of one instant, for checks that
// compare several reads (the rows, their count, the head) and must not
// mistake an append committed between two of them for tampering.
// It is one ReadTx: it holds no write lock, so appends go on while it is
// open. It is valid only inside the function given to ReadAudit.
type AuditSnapshot struct {
	s  *DB
	tx *sql.Tx
}

// ReadAudit runs fn with a consistent snapshot of the audit tables. It
// writes nothing.
func (s *DB) ReadAudit(ctx context.Context, fn func(*AuditSnapshot) error) error {
	return s.ReadTx(ctx, func(tx *sql.Tx) error {
		return fn(&AuditSnapshot{s: s, tx: tx})
	})
}

// Head is the chain head within the snapshot, as stored: the sequence
// number may be below 0 in a store someone edited.
func (a *AuditSnapshot) Head(ctx context.Context) (int64, []byte, error) {
	return auditHead(ctx, a.tx)
}

// RowsFrom returns up to limit records with seq >= from, in order of seq.
// Reading from math.MinInt64 visits every row whose sequence number is an
// integer, including any below 1.
func (a *AuditSnapshot) RowsFrom(ctx context.Context, from int64, limit int) ([]AuditRow, error) {
	rows, err := a.tx.QueryContext(ctx, `SELECT seq, at, kind, actor, subject, outcome, details, prev_hash, hash
		FROM audit_log WHERE `+a.s.intSeq()+` AND seq >= $1 ORDER BY seq LIMIT $2`, from, limit)
	if err != nil {
		return nil, fmt.Errorf("store: read audit log: %w", err)
	}
	return scanAuditRows(rows, true)
}

// AuditAnomalies are facts about the audit tables that no append through
// the audit sink produces; verification reports each as tampering.
type AuditAnomalies struct {
	// Rows counts every row of audit_log, whatever its sequence number.
	Rows int64
	// NonInteger is, for the first row whose sequence number is not an
	// integer (SQLite only: NULL, text, a fraction, a blob), that value as
	// text ("NULL" for NULL); "" when there is none.
	NonInteger string
	// Duplicate is the lowest sequence number stored more than once
	// (possible only if the primary key was dropped); HasDuplicate says
	// whether there is one.
	Duplicate    int64
	HasDuplicate bool
	// ExtraHeadID and ExtraHeadSeq name a row of audit_head other than the
	// one chain head (id 1); HasExtraHead says whether there is one.
	ExtraHeadID, ExtraHeadSeq int64
	HasExtraHead              bool
}

// Anomalies reads AuditAnomalies within the snapshot.
func (a *AuditSnapshot) Anomalies(ctx context.Context) (AuditAnomalies, error) {
	var an AuditAnomalies
	if err := a.tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM audit_log").Scan(&an.Rows); err != nil {
		return an, fmt.Errorf("store: count audit log: %w", err)
	}
	if a.s.dialect != Postgres {
		err := a.tx.QueryRowContext(ctx, `SELECT COALESCE(quote(seq), 'NULL') FROM audit_log
			WHERE typeof(seq) != 'integer' LIMIT 1`).Scan(&an.NonInteger)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return an, fmt.Errorf("store: read audit log: %w", err)
		}
	}
	err := a.tx.QueryRowContext(ctx, `SELECT seq FROM audit_log WHERE `+a.s.intSeq()+`
		GROUP BY seq HAVING COUNT(*) > 1 ORDER BY seq LIMIT 1`).Scan(&an.Duplicate)
	switch {
	case err == nil:
		an.HasDuplicate = true
	case !errors.Is(err, sql.ErrNoRows):
		return an, fmt.Errorf("store: read audit log: %w", err)
	}
	err = a.tx.QueryRowContext(ctx, "SELECT id, seq FROM audit_head WHERE id != 1 ORDER BY id LIMIT 1").Scan(&an.ExtraHeadID, &an.ExtraHeadSeq)
	switch {
	case err == nil:
		an.HasExtraHead = true
	case !errors.Is(err, sql.ErrNoRows):
		return an, fmt.Errorf("store: read audit head: %w", err)
	}
	return an, nil
}

// auditKindRowsQuery selects the newest records of one kind ($4) with
// $3 <= seq <= $1, at most $2, walking the audit_log_kind index backwards.
// Under PostgreSQL it must run with customPlan.
func (s *DB) auditKindRowsQuery(hashes bool) string {
	return `SELECT ` + auditColumns(hashes) + `
		FROM audit_log WHERE kind ` + s.collateC() + ` = $4 AND ` + s.intSeq() + ` AND seq >= $3 AND seq <= $1 ORDER BY seq DESC LIMIT $2`
}

// customPlan is args for a query whose plan depends on its parameters'
// values: under PostgreSQL it runs as an unnamed statement, planned anew
// with the values each time, rather than from pgx's statement cache,
// whose generic plan (after five runs) cannot tell a rare kind from a
// common one. For a rare kind the generic plan walked the primary key
// back from the head and filtered, reading the whole log.
func (s *DB) customPlan(args ...any) []any {
	if s.dialect != Postgres {
		return args
	}
	return append([]any{pgx.QueryExecModeExec}, args...)
}

// auditKindsQuery selects the distinct kinds starting with prefix, each
// found by one probe of the audit_log_kind index for the least kind above
// the one before.
func (s *DB) auditKindsQuery(prefix string) (string, []any) {
	c := s.collateC()
	args := []any{prefix}
	upper := ""
	if succ, ok := prefixSuccessor(prefix); ok {
		args = append(args, succ)
		upper = " AND kind " + c + " < $2"
	}
	next := func(cmp, from string) string {
		return "SELECT kind " + c + " FROM audit_log WHERE kind " + c + " " + cmp + " " + from + upper + " ORDER BY kind " + c + " LIMIT 1"
	}
	return "WITH RECURSIVE k(kind) AS (SELECT (" + next(">=", "$1") + ") UNION ALL SELECT (" + next(">", "k.kind") + ") FROM k WHERE k.kind IS NOT NULL) " +
		"SELECT kind FROM k WHERE kind IS NOT NULL", args
}

// prefixSuccessor is the least string greater than every string that
// starts with p, in byte order, and valid UTF-8 like p (PostgreSQL refuses
// anything else as text): p with its last code point raised by one (past
// the surrogates) and what follows it dropped. UTF-8's byte order is its
// code point order, so [p, successor) holds exactly the strings starting
// with p. ok is false when there is none (p empty or all U+10FFFF):
// every string at or above p starts with it.
func prefixSuccessor(p string) (string, bool) {
	rs := []rune(p)
	for i := len(rs) - 1; i >= 0; i-- {
		switch r := rs[i]; {
		case r >= utf8.MaxRune:
			continue
		case r == 0xD7FF:
			rs[i] = 0xE000
		default:
			rs[i] = r + 1
		}
		return string(rs[:i+1]), true
	}
	return "", false
}

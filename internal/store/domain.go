package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
)

// Queryer is what the domain functions of this package run on: a *sql.DB
// for single statements or the *sql.Tx of DB.Tx when a change and its audit
// record must commit together.
type Queryer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// ns converts a time to the Unix nanoseconds the schema stores; the zero
// time is 0.
func ns(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// fromNS is the inverse of ns, in UTC.
func fromNS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.Unix(0, v).UTC()
}

// isUniqueViolation reports whether err is a unique or primary key
// constraint failure on either engine.
func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23505"
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == 2067 || se.Code() == 1555 // SQLITE_CONSTRAINT_UNIQUE, _PRIMARYKEY
	}
	return false
}

// insertValues returns the multi-row INSERT statement "head VALUES
// ($1,...,$cols),($cols+1,...),..." with rows tuples of cols placeholders,
// numbered on across the tuples, for arguments given row by row. Both
// engines take $N placeholders.
func insertValues(head string, rows, cols int) string {
	var b strings.Builder
	b.WriteString(head)
	b.WriteString(" VALUES ")
	n := 0
	for i := range rows {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('(')
		for j := range cols {
			if j > 0 {
				b.WriteByte(',')
			}
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
		}
		b.WriteByte(')')
	}
	return b.String()
}

// forUpdate is the row-lock suffix of a SELECT under PostgreSQL. SQLite has
// no row locks; its transactions take the database write lock at BEGIN
// (IMMEDIATE), which serializes writers already.
func (s *DB) forUpdate() string {
	if s.dialect == Postgres {
		return " FOR UPDATE"
	}
	return ""
}

// Meta returns the value of a server-wide setting, or ErrNotFound.
func (s *DB) Meta(ctx context.Context, key string) (string, error) {
	var v string
	err := s.db.QueryRowContext(ctx, "SELECT value FROM meta WHERE key = $1", key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("store: read meta %s: %w", key, err)
	}
	return v, nil
}

// SetMetaIfAbsent stores key=value unless key is already set. It reports
// whether it stored the value; concurrent callers (replicas starting
// together) agree on a single winner.
func (s *DB) SetMetaIfAbsent(ctx context.Context, q Queryer, key, value string) (bool, error) {
	res, err := q.ExecContext(ctx, "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", key, value)
	if err != nil {
		return false, fmt.Errorf("store: write meta %s: %w", key, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("store: write meta %s: %w", key, err)
	}
	return n == 1, nil
}

// SetMeta stores key=value, replacing any earlier value.
func (s *DB) SetMeta(ctx context.Context, q Queryer, key, value string) error {
	_, err := q.ExecContext(ctx, "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value", key, value)
	if err != nil {
		return fmt.Errorf("store: write meta %s: %w", key, err)
	}
	return nil
}

// LoadCAState returns the CA's sealed state, or ErrNotFound before the CA
// first saved it. The server adapts this to the CA's StateStore.
func (s *DB) LoadCAState(ctx context.Context) ([]byte, error) {
	var b []byte
	err := s.db.QueryRowContext(ctx, "SELECT state FROM ca_state WHERE id = 1").Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("store: load CA state: %w", err)
	}
	return b, nil
}

// SaveCAState replaces the CA's sealed state durably (the write is
// committed before it returns).
func (s *DB) SaveCAState(ctx context.Context, sealed []byte) error {
	if len(sealed) == 0 {
		return errors.New("store: refusing to save empty CA state")
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO ca_state (id, state, updated_at) VALUES (1, $1, $2)
		ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at`, sealed, ns(s.now()))
	if err != nil {
		return fmt.Errorf("store: save CA state: %w", err)
	}
	return nil
}

// SwapCAState replaces the CA's sealed state only if the stored state is
// still old (nil old: only if nothing is stored yet), so two server
// replicas stepping the CA at once cannot overwrite each other's step: the
// loser gets ErrConflict, changes nothing, and adopts the winner's state.
func (s *DB) SwapCAState(ctx context.Context, old, sealed []byte) error {
	if len(sealed) == 0 {
		return errors.New("store: refusing to save empty CA state")
	}
	var res sql.Result
	var err error
	if old == nil {
		res, err = s.db.ExecContext(ctx, "INSERT INTO ca_state (id, state, updated_at) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING", sealed, ns(s.now()))
	} else {
		res, err = s.db.ExecContext(ctx, "UPDATE ca_state SET state = $1, updated_at = $2 WHERE id = 1 AND state = $3", sealed, ns(s.now()), old)
	}
	if err != nil {
		return fmt.Errorf("store: save CA state: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("store: save CA state: %w", err)
	}
	if n != 1 {
		return fmt.Errorf("%w: the CA state was changed by another server", ErrConflict)
	}
	return nil
}

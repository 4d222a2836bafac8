package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// ErrNotEmpty: the destination of a copy already holds data.
var ErrNotEmpty = errors.New("store: the destination store is not empty")

// TableCount is how many rows of one table a copy moved.
type TableCount struct {
	Table string `json:"table"`
	Rows  int64  `json:"rows"`
}

// CopyOptions tune Copy.
type CopyOptions struct {
	// NewEpoch gives the destination a new epoch instead of the source's
	// (see DB.Epoch): for a restore from a backup, whose history may have
	// moved on since. A migration keeps the epoch, so watch clients resume
	// across it.
	NewEpoch bool
	// Progress, when set, is called after each table.
	Progress func(TableCount)
}

// Copy copies every row of every Moatless table from src to dst, which
// must be an empty store (opened read-write, so its schema exists) at the
// same schema version as src. It reads src in one read-only snapshot
// transaction, so a live source yields a consistent copy (backups), and
// writes dst in one transaction: the destination holds all of it or none.
// Tables are copied parents first (foreign keys), values converted to the
// destination's column types (SQLite's BLOB and PostgreSQL's BYTEA,
// INTEGER and BIGINT), and PostgreSQL sequences moved past the copied
// keys. It returns the rows copied per table, in copy order.
//
// Copy does not check that src is not in use; callers that need the source
// to stand still (a migration) check first (SQLiteInUse, PostgresSessions).
func Copy(ctx context.Context, src, dst *DB, o CopyOptions) ([]TableCount, error) {
	if err := sameSchema(ctx, src, dst); err != nil {
		return nil, err
	}
	tables, err := dst.copyOrder(ctx)
	if err != nil {
		return nil, err
	}
	if err := dst.checkEmpty(ctx, tables); err != nil {
		return nil, err
	}
	var counts []TableCount
	// One snapshot of the source for every table (ReadTx).
	err = src.ReadTx(ctx, func(rtx *sql.Tx) error {
		return dst.Tx(ctx, func(wtx *sql.Tx) error {
			counts = counts[:0]
			// What Open wrote into the empty destination (counters at 0, its
			// own epoch) gives way to the source's.
			for _, t := range []string{"meta", "counters"} {
				if _, err := wtx.ExecContext(ctx, "DELETE FROM "+t); err != nil {
					return fmt.Errorf("store: copy: clear %s: %w", t, err)
				}
			}
			for _, t := range tables {
				n, err := copyTable(ctx, rtx, wtx, dst, t)
				if err != nil {
					return err
				}
				tc := TableCount{Table: t, Rows: n}
				counts = append(counts, tc)
				if o.Progress != nil {
					o.Progress(tc)
				}
			}
			if o.NewEpoch {
				if err := dst.NewEpoch(ctx, wtx); err != nil {
					return err
				}
			} else if _, err := dst.SetMetaIfAbsent(ctx, wtx, epochMetaKey, newEpoch()); err != nil {
				// A source that never had an epoch (a store no server of
				// this version opened) leaves the copy with a new one.
				return err
			}
			return dst.resetSequences(ctx, wtx)
		})
	})
	if err != nil {
		return nil, err
	}
	return counts, nil
}

// sameSchema requires both stores to have applied exactly the same
// migrations.
func sameSchema(ctx context.Context, src, dst *DB) error {
	a, err := src.appliedMigrations(ctx)
	if err != nil {
		return err
	}
	b, err := dst.appliedMigrations(ctx)
	if err != nil {
		return err
	}
	if !slices.Equal(a, b) {
		return fmt.Errorf("store: copy: the source has %d migrations applied and the destination %d: run both with the same moatless version (start a server on the source once to migrate it)", len(a), len(b))
	}
	return nil
}

func (s *DB) appliedMigrations(ctx context.Context) ([]int, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT version FROM schema_migrations ORDER BY version")
	if err != nil {
		return nil, fmt.Errorf("store: read schema version: %w", err)
	}
	defer rows.Close()
	var out []int
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			return nil, fmt.Errorf("store: read schema version: %w", err)
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// Tables lists the store's tables (not schema_migrations, not the
// engine's own), sorted by name.
func (s *DB) Tables(ctx context.Context) ([]string, error) {
	q := `SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> 'schema_migrations'`
	if s.dialect == Postgres {
		q = `SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = current_schema() AND tablename <> 'schema_migrations'`
	}
	return s.strings(ctx, q+" ORDER BY 1")
}

func (s *DB) strings(ctx context.Context, q string, args ...any) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("store: read schema: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, fmt.Errorf("store: read schema: %w", err)
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// copyOrder lists the tables so that every table comes after the tables
// its foreign keys reference.
func (s *DB) copyOrder(ctx context.Context) ([]string, error) {
	tables, err := s.Tables(ctx)
	if err != nil {
		return nil, err
	}
	deps := map[string][]string{}
	for _, t := range tables {
		q := `SELECT "table" FROM pragma_foreign_key_list($1)`
		if s.dialect == Postgres {
			q = `SELECT ccu.table_name FROM information_schema.table_constraints tc
				JOIN information_schema.constraint_column_usage ccu
				ON tc.constraint_name = ccu.constraint_name AND tc.table_schema = ccu.table_schema
				WHERE tc.constraint_type = 'FOREIGN KEY' AND tc.table_schema = current_schema() AND tc.table_name = $1`
		}
		if deps[t], err = s.strings(ctx, q, t); err != nil {
			return nil, err
		}
	}
	var out []string
	done := map[string]bool{}
	var visit func(t string, path []string) error
	visit = func(t string, path []string) error {
		if done[t] {
			return nil
		}
		if slices.Contains(path, t) {
			return fmt.Errorf("store: copy: foreign keys form a cycle through %s", t)
		}
		for _, d := range deps[t] {
			if d != t {
				if err := visit(d, append(path, t)); err != nil {
					return err
				}
			}
		}
		done[t] = true
		out = append(out, t)
		return nil
	}
	for _, t := range tables {
		if err := visit(t, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// checkEmpty refuses a destination that holds anything besides what Open
// writes into a new store.
func (s *DB) checkEmpty(ctx context.Context, tables []string) error {
	for _, t := range tables {
		q := "SELECT COUNT(*) FROM " + quoteIdent(t)
		switch t {
		case "counters":
			q += " WHERE value <> 0"
		case "meta":
			q += " WHERE key <> '" + epochMetaKey + "'"
		}
		var n int64
		if err := s.db.QueryRowContext(ctx, q).Scan(&n); err != nil {
			return fmt.Errorf("store: copy: check destination: %w", err)
		}
		if n > 0 {
			return fmt.Errorf("%w: table %s has %d rows (copy into a new, empty database)", ErrNotEmpty, t, n)
		}
	}
	return nil
}

// columnKind is how a value is converted for a destination column.
type columnKind int

const (
	kindOther columnKind = iota
	kindInt
	kindText
	kindBlob
	// kindBlobNotNull: SQLite reads an empty BLOB back as NULL, which a
	// NOT NULL column refuses; it becomes an empty value again.
	kindBlobNotNull
)

// columns returns the columns of table t with their kinds, in table order.
func (s *DB) columns(ctx context.Context, t string) ([]string, []columnKind, error) {
	q := `SELECT name, type, "notnull" <> 0 FROM pragma_table_info($1) ORDER BY cid`
	if s.dialect == Postgres {
		q = `SELECT column_name, data_type, is_nullable = 'NO' FROM information_schema.columns
			WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position`
	}
	rows, err := s.db.QueryContext(ctx, q, t)
	if err != nil {
		return nil, nil, fmt.Errorf("store: copy: columns of %s: %w", t, err)
	}
	defer rows.Close()
	var names []string
	var kinds []columnKind
	for rows.Next() {
		var n, typ string
		var notNull bool
		if err := rows.Scan(&n, &typ, &notNull); err != nil {
			return nil, nil, fmt.Errorf("store: copy: columns of %s: %w", t, err)
		}
		typ = strings.ToLower(typ)
		k := kindOther
		switch {
		case strings.Contains(typ, "int"):
			k = kindInt
		case strings.Contains(typ, "text"), strings.Contains(typ, "char"):
			k = kindText
		case strings.Contains(typ, "blob"), strings.Contains(typ, "bytea"):
			k = kindBlob
			if notNull {
				k = kindBlobNotNull
			}
		}
		names = append(names, n)
		kinds = append(kinds, k)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	if len(names) == 0 {
		return nil, nil, fmt.Errorf("store: copy: table %s has no columns", t)
	}
	return names, kinds, nil
}

// convert makes a value read from one engine fit a column of kind k in
// the other. SQLite stores []byte written into a TEXT column as a BLOB;
// PostgreSQL's text wants a string.
func convert(v any, k columnKind) (any, error) {
	switch x := v.(type) {
	case nil:
		if k == kindBlobNotNull {
			return []byte{}, nil
		}
		return nil, nil
	case []byte:
		if x == nil {
			return convert(nil, k)
		}
		switch k {
		case kindText:
			return string(x), nil
		case kindInt:
			return nil, fmt.Errorf("bytes in an integer column")
		}
		return slices.Clone(x), nil
	case string:
		if k == kindBlob || k == kindBlobNotNull {
			return []byte(x), nil
		}
		if k == kindInt {
			return nil, fmt.Errorf("text %q in an integer column", x)
		}
		return x, nil
	case bool:
		if k == kindInt {
			if x {
				return int64(1), nil
			}
			return int64(0), nil
		}
	case int32:
		return int64(x), nil
	}
	return v, nil
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// copyTable copies every row of t from the read transaction to the write
// transaction, in batches.
func copyTable(ctx context.Context, rtx, wtx *sql.Tx, dst *DB, t string) (int64, error) {
	cols, kinds, err := dst.columns(ctx, t)
	if err != nil {
		return 0, err
	}
	quoted := make([]string, len(cols))
	for i, c := range cols {
		quoted[i] = quoteIdent(c)
	}
	list := strings.Join(quoted, ", ")
	rows, err := rtx.QueryContext(ctx, "SELECT "+list+" FROM "+quoteIdent(t))
	if err != nil {
		return 0, fmt.Errorf("store: copy: read %s: %w", t, err)
	}
	defer rows.Close()
	// PostgreSQL takes at most 65535 parameters per statement.
	batch := max(1, min(500, 60000/len(cols)))
	head := "INSERT INTO " + quoteIdent(t) + " (" + list + ")"
	args := make([]any, 0, batch*len(cols))
	var n int64
	flush := func(k int) error {
		if k == 0 {
			return nil
		}
		if _, err := wtx.ExecContext(ctx, insertValues(head, k, len(cols)), args...); err != nil {
			return fmt.Errorf("store: copy: write %s: %w", t, err)
		}
		args = args[:0]
		return nil
	}
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	pending := 0
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return n, fmt.Errorf("store: copy: read %s: %w", t, err)
		}
		for i, v := range vals {
			c, err := convert(v, kinds[i])
			if err != nil {
				return n, fmt.Errorf("store: copy: %s.%s: %w", t, cols[i], err)
			}
			args = append(args, c)
		}
		n++
		if pending++; pending == batch {
			if err := flush(pending); err != nil {
				return n, err
			}
			pending = 0
		}
	}
	if err := rows.Err(); err != nil {
		return n, fmt.Errorf("store: copy: read %s: %w", t, err)
	}
	return n, flush(pending)
}

// resetSequences moves every PostgreSQL sequence that feeds a column past
// the largest value copied into it; SQLite keeps AUTOINCREMENT counters
// up to date on insert by itself.
func (s *DB) resetSequences(ctx context.Context, tx *sql.Tx) error {
	if s.dialect != Postgres {
		return nil
	}
	rows, err := tx.QueryContext(ctx, `SELECT table_name, column_name FROM information_schema.columns
		WHERE table_schema = current_schema() AND column_default LIKE 'nextval(%'`)
	if err != nil {
		return fmt.Errorf("store: copy: sequences: %w", err)
	}
	type col struct{ t, c string }
	var cols []col
	for rows.Next() {
		var c col
		if err := rows.Scan(&c.t, &c.c); err != nil {
			rows.Close()
			return fmt.Errorf("store: copy: sequences: %w", err)
		}
		cols = append(cols, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	sort.Slice(cols, func(i, j int) bool { return cols[i].t+"."+cols[i].c < cols[j].t+"."+cols[j].c })
	for _, c := range cols {
		q := fmt.Sprintf("SELECT setval(pg_get_serial_sequence($1, $2), COALESCE((SELECT MAX(%s) FROM %s), 0) + 1, false)", quoteIdent(c.c), quoteIdent(c.t))
		if _, err := tx.ExecContext(ctx, q, c.t, c.c); err != nil {
			return fmt.Errorf("store: copy: sequence of %s.%s: %w", c.t, c.c, err)
		}
	}
	return nil
}

// RowCounts counts the rows of every table, for comparing a copy with its
// source.
func (s *DB) RowCounts(ctx context.Context) ([]TableCount, error) {
	tables, err := s.Tables(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]TableCount, 0, len(tables))
	for _, t := range tables {
		var n int64
		if err := s.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+quoteIdent(t)).Scan(&n); err != nil {
			return nil, fmt.Errorf("store: count %s: %w", t, err)
		}
		out = append(out, TableCount{Table: t, Rows: n})
	}
	return out, nil
}

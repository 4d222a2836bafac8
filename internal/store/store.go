// Package store is the server's SQL storage. The embedded default is SQLite
// (pure Go, no cgo, one file in the data directory); PostgreSQL is how
// several server replicas share state. Queries use $1-style placeholders,
// which both drivers accept, and SQL that both dialects run; the few places
// that differ ask DB.Dialect. Migrations are embedded SQL files applied in
// order at Open.
//
// Domain methods (entries, join tokens, CA state, audit, policies, OAuth)
// live in their own files; each is shaped by what the server needs.
package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	_ "modernc.org/sqlite"             // registers "sqlite"
)

// Sentinel errors callers branch on.
var (
	ErrNotFound = errors.New("store: not found")
	ErrConflict = errors.New("store: conflict")
	// ErrSchemaOutdated: a read-only open found migrations this binary
	// would apply; it applies none.
	ErrSchemaOutdated = errors.New("store: the store's schema is older than this binary; start the server once to migrate")
	// ErrSchemaNewer: a read-only open found migrations this binary does
	// not know; a newer server migrated the store.
	ErrSchemaNewer = errors.New("store: the store's schema is newer than this binary; use the moatless version the server runs")
)

// Dialect says which SQL engine is behind a DB.
type Dialect int

const (
	SQLite Dialect = iota
	Postgres
)

func (d Dialect) String() string {
	if d == Postgres {
		return "postgres"
	}
	return "sqlite"
}

// DB is an open store. It is safe for concurrent use.
type DB struct {
	db *sql.DB
	// ro runs ReadTx. Under SQLite opened for writing it is a second pool
	// on the same file, opened mode=ro with query_only, whose
	// transactions begin DEFERRED: db begins every transaction IMMEDIATE
	// (taking the one write lock at BEGIN), and a snapshot read must not
	// hold that lock while it reads. Otherwise it is db.
	ro      *sql.DB
	dialect Dialect
	// dsn is the PostgreSQL DSN, for the dedicated connection of
	// FollowChanges; empty under SQLite.
	dsn string
	// unlock releases the SQLite lock file taken with OpenOptions.Lock.
	unlock     func()
	unlockOnce sync.Once
	// Now is the clock used for timestamps the store writes itself;
	// time.Now when nil. Tests set it.
	Now func() time.Time
}

//go:embed migrations/*.sql
var migrationFS embed.FS

// Open opens the store named by dsn and applies pending migrations.
//
//   - "postgres://…" or "postgresql://…": PostgreSQL through pgx.
//   - "sqlite:PATH", "file:PATH" or a plain path: SQLite at PATH, created
//     with mode 0600 if missing, in WAL mode with full fsync, so a crash in
//     the middle of a write loses no committed transaction.
func Open(ctx context.Context, dsn string) (*DB, error) {
	return OpenWith(ctx, dsn, OpenOptions{})
}

// OpenOptions tune OpenWith; the zero value is Open.
type OpenOptions struct {
	// ReadOnly opens the store for tools that must never change it, such
	// as "moatless audit verify": no migration runs and no file is
	// created. SQLite opens PATH with mode=ro and query_only (a missing
	// file is an error, every write fails with SQLITE_READONLY; SQLite may
	// create the -wal and -shm files of a WAL database that has none, with
	// the database file's owner and mode, which a server opening it later
	// uses as usual). PostgreSQL sessions run with
	// default_transaction_read_only=on. The open fails with an error
	// wrapping ErrSchemaOutdated when migrations are pending (the server
	// applies them at start) and ErrSchemaNewer when the store holds
	// migrations this binary does not know, since reading a schema this
	// binary was not built for could misreport what the store holds.
	ReadOnly bool
	// Lock, for a server, marks the store as in use for as long as it is
	// open, so tools that need it to stand still (InUse) refuse to run:
	// SQLite takes an exclusive flock on PATH.lock, failing with an error
	// wrapping ErrInUse when another server holds it (two servers on one
	// SQLite file would each believe they are alone); PostgreSQL sessions
	// carry application_name moatless-server unless the DSN sets one.
	Lock bool
	// SkipSchemaCheck opens a store without looking at its schema (with
	// ReadOnly only): for InUse, which reads only catalogs.
	SkipSchemaCheck bool
}

// OpenWith is Open with options.
func OpenWith(ctx context.Context, dsn string, o OpenOptions) (_ *DB, err error) {
	var (
		db      *sql.DB
		dialect Dialect
		unlock  func() // the SQLite lock file's, when taken
	)
	defer func() {
		if err != nil && unlock != nil {
			unlock()
		}
	}()
	switch {
	case IsPostgres(dsn):
		dialect = Postgres
		if o.Lock {
			if dsn, err = withApplicationName(dsn, serverApplicationName); err != nil {
				return nil, err
			}
		}
		if o.ReadOnly {
			u, err := url.Parse(dsn)
			if err != nil {
				return nil, fmt.Errorf("store: postgres DSN: %w", err)
			}
			q := u.Query()
			q.Set("default_transaction_read_only", "on") // pgx sends unknown keys as run-time parameters
			u.RawQuery = q.Encode()
			dsn = u.String()
		}
		db, err = sql.Open("pgx", dsn)
		if err != nil {
			return nil, fmt.Errorf("store: open postgres: %w", err)
		}
		db.SetMaxOpenConns(16)
	default:
		path := sqlitePath(dsn)
		if path == "" {
			return nil, errors.New("store: empty sqlite path")
		}
		if o.Lock && !o.ReadOnly {
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				return nil, fmt.Errorf("store: %w", err)
			}
			if unlock, err = lockFile(path+lockSuffix, true); err != nil {
				return nil, err
			}
		}
		q := url.Values{}
		if o.ReadOnly {
			if _, err := os.Stat(path); err != nil {
				return nil, fmt.Errorf("store: %w", err)
			}
			q = sqliteReadOnlyQuery()
		} else {
			if err := createPrivate(path); err != nil {
				return nil, err
			}
			// secure_delete zeroes freed content, so a destroyed secret
			// version leaves no bytes behind in the file (secrets service).
			for _, p := range []string{"busy_timeout(10000)", "journal_mode(WAL)", "synchronous(FULL)", "foreign_keys(1)", "secure_delete(1)"} {
				q.Add("_pragma", p)
			}
			q.Set("_txlock", "immediate")
		}
		db, err = sql.Open("sqlite", "file:"+path+"?"+q.Encode())
		if err != nil {
			return nil, fmt.Errorf("store: open sqlite: %w", err)
		}
		// One writer at a time is SQLite's model; a small pool lets
		// readers proceed under WAL.
		db.SetMaxOpenConns(4)
	}
	s := &DB{db: db, ro: db, dialect: dialect, unlock: unlock}
	if dialect == Postgres {
		s.dsn = dsn
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: connect to %s: %w", dialect, err)
	}
	switch {
	case o.ReadOnly && o.SkipSchemaCheck:
	case o.ReadOnly:
		err = s.checkSchema(ctx)
	default:
		if err = s.migrate(ctx); err != nil {
			break
		}
		err = s.ensureEpoch(ctx)
	}
	if err == nil && dialect == SQLite && !o.ReadOnly {
		// Opened after the migrations, so the file has its schema and is
		// in WAL mode, where readers and the writer do not block each other.
		err = s.openSQLiteReadPool(ctx, sqlitePath(dsn))
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// sqliteReadOnlyQuery is the DSN query of a SQLite connection that never
// writes: mode=ro, and query_only so even a statement that reached it by
// mistake fails with SQLITE_READONLY instead of taking the write lock.
func sqliteReadOnlyQuery() url.Values {
	q := url.Values{}
	q.Set("mode", "ro")
	for _, p := range []string{"busy_timeout(10000)", "query_only(1)"} {
		q.Add("_pragma", p)
	}
	return q
}

// openSQLiteReadPool opens s.ro, the pool of ReadTx (see DB.ro).
func (s *DB) openSQLiteReadPool(ctx context.Context, path string) error {
	ro, err := sql.Open("sqlite", "file:"+path+"?"+sqliteReadOnlyQuery().Encode())
	if err != nil {
		return fmt.Errorf("store: open sqlite read pool: %w", err)
	}
	ro.SetMaxOpenConns(4)
	if err := ro.PingContext(ctx); err != nil {
		ro.Close()
		return fmt.Errorf("store: open sqlite read pool: %w", err)
	}
	s.ro = ro
	return nil
}

// checkSchema compares the migrations recorded in the store with the
// embedded ones, writing nothing.
func (s *DB) checkSchema(ctx context.Context) error {
	ms, err := loadMigrations()
	if err != nil {
		return err
	}
	exists := `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'`
	if s.dialect == Postgres {
		exists = `SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema() AND tablename = 'schema_migrations'`
	}
	var n int
	if err := s.db.QueryRowContext(ctx, exists).Scan(&n); err != nil {
		return fmt.Errorf("store: read schema version: %w", err)
	}
	if n == 0 {
		return fmt.Errorf("%w (it has no Moatless schema at all: is this the right store?)", ErrSchemaOutdated)
	}
	applied := map[int]bool{}
	rows, err := s.db.QueryContext(ctx, "SELECT version FROM schema_migrations")
	if err != nil {
		return fmt.Errorf("store: read schema version: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			return fmt.Errorf("store: read schema version: %w", err)
		}
		applied[v] = true
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("store: read schema version: %w", err)
	}
	var pending []string
	for _, m := range ms {
		if !applied[m.version] {
			pending = append(pending, m.name)
		}
		delete(applied, m.version)
	}
	if len(pending) > 0 {
		return fmt.Errorf("%w (%d migrations pending, first %s)", ErrSchemaOutdated, len(pending), pending[0])
	}
	if len(applied) > 0 {
		unknown := make([]int, 0, len(applied))
		for v := range applied {
			unknown = append(unknown, v)
		}
		sort.Ints(unknown)
		return fmt.Errorf("%w (%d migrations unknown to it, first %04d)", ErrSchemaNewer, len(unknown), unknown[0])
	}
	return nil
}

func createPrivate(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return f.Close()
}

// Close closes the database and releases the lock taken with
// OpenOptions.Lock. It is safe to call more than once.
func (s *DB) Close() error {
	if s == nil || s.db == nil {
		return nil
	}
	err := s.db.Close()
	if s.ro != nil && s.ro != s.db {
		err = errors.Join(err, s.ro.Close())
	}
	s.unlockOnce.Do(func() {
		if s.unlock != nil {
			s.unlock()
		}
	})
	return err
}

// Dialect reports the SQL engine.
func (s *DB) Dialect() Dialect { return s.dialect }

// SQL exposes the handle for the domain files of this package and for tests.
func (s *DB) SQL() *sql.DB { return s.db }

func (s *DB) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Tx runs fn in a transaction and commits it if fn returns nil. Under
// SQLite the transaction takes the write lock at BEGIN (IMMEDIATE), so two
// writers never deadlock on upgrade; under PostgreSQL it runs at READ
// COMMITTED and domain code takes row locks where it needs them.
func (s *DB) Tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: begin: %w", err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	return nil
}

// ReadTx runs fn in a read-only transaction that sees one snapshot of the
// store, for readers that compare several reads (audit verify, Copy) and
// must not mistake a write committed between two of them for an
// inconsistency. It never takes the write lock, so however long fn reads,
// writers (Tx) proceed: under SQLite it is a DEFERRED transaction on the
// read-only pool, whose WAL snapshot starts at fn's first read; under
// PostgreSQL it is READ ONLY at REPEATABLE READ. A write inside fn fails in
// both. The transaction is rolled back when fn returns; ReadTx returns
// fn's error.
func (s *DB) ReadTx(ctx context.Context, fn func(*sql.Tx) error) error {
	opts := &sql.TxOptions{ReadOnly: true}
	if s.dialect == Postgres {
		opts.Isolation = sql.LevelRepeatableRead
	}
	tx, err := s.ro.BeginTx(ctx, opts)
	if err != nil {
		return fmt.Errorf("store: begin read: %w", err)
	}
	defer tx.Rollback()
	return fn(tx)
}

// txKey carries a transaction in a context (WithTx).
type txKey struct{}

// WithTx returns ctx carrying tx. Store methods that accept a context
// and support it (OAuth's) run their statements in tx instead of
// starting their own, so a caller can make several of them, and its own
// writes such as an audit record (audit.StoreSink.AppendTx), one
// transaction.
func WithTx(ctx context.Context, tx *sql.Tx) context.Context {
	return context.WithValue(ctx, txKey{}, tx)
}

// TxFrom returns the transaction ctx carries (WithTx), if any.
func TxFrom(ctx context.Context) (*sql.Tx, bool) {
	tx, ok := ctx.Value(txKey{}).(*sql.Tx)
	return tx, ok && tx != nil
}

// rewrite adapts a migration to the dialect. Migrations write {{blob}} for
// binary columns, {{serial}} for an auto-increment integer primary key and
// {{collate_c}} for byte-order comparison of text (collateC).
func (s *DB) rewrite(q string) string {
	blob, serial := "BLOB", "INTEGER PRIMARY KEY AUTOINCREMENT"
	if s.dialect == Postgres {
		blob, serial = "BYTEA", "BIGSERIAL PRIMARY KEY"
	}
	return strings.NewReplacer("{{blob}}", blob, "{{serial}}", serial, "{{collate_c}}", s.collateC()).Replace(q)
}

// collateC is the collation that compares text byte by byte: ranges over
// it are exact prefix matches, and an index declared with it serves them.
func (s *DB) collateC() string {
	if s.dialect == Postgres {
		return `COLLATE "C"`
	}
	return "COLLATE BINARY"
}

type migration struct {
	version int
	name    string
	sql     string
}

func loadMigrations() ([]migration, error) {
	names, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var ms []migration
	seen := map[int]string{}
	for _, n := range names {
		base := filepath.Base(n)
		num, _, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("store: migration %s: name must be NNNN_name.sql", base)
		}
		if prev, dup := seen[v]; dup {
			return nil, fmt.Errorf("store: migrations %s and %s share number %d", prev, base, v)
		}
		seen[v] = base
		b, err := migrationFS.ReadFile(n)
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: base, sql: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	return ms, nil
}

// migrate applies every embedded migration not yet recorded, each in its
// own transaction together with its record. Under PostgreSQL an advisory
// lock makes concurrent replicas take turns.
func (s *DB) migrate(ctx context.Context) error {
	ms, err := loadMigrations()
	if err != nil {
		return err
	}
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	defer conn.Close()
	if s.dialect == Postgres {
		if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock(7462817)"); err != nil {
			return fmt.Errorf("store: migrate lock: %w", err)
		}
		defer conn.ExecContext(context.Background(), "SELECT pg_advisory_unlock(7462817)")
	}
	if _, err := conn.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version INTEGER PRIMARY KEY,
		name TEXT NOT NULL,
		applied_at BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	applied := map[int]bool{}
	rows, err := conn.QueryContext(ctx, "SELECT version FROM schema_migrations")
	if err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return err
		}
		applied[v] = true
	}
	rows.Close()
	for _, m := range ms {
		if applied[m.version] {
			continue
		}
		tx, err := conn.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("store: migrate %s: %w", m.name, err)
		}
		for _, stmt := range splitStatements(s.rewrite(m.sql)) {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				tx.Rollback()
				return fmt.Errorf("store: migrate %s: %w", m.name, err)
			}
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
			m.version, m.name, s.now().Unix()); err != nil {
			tx.Rollback()
			return fmt.Errorf("store: migrate %s: %w", m.name, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("store: migrate %s: %w", m.name, err)
		}
	}
	return nil
}

// splitStatements splits a migration on semicolons at line ends. Migrations
// keep to one statement per ";\n" and no semicolons inside literals.
func splitStatements(q string) []string {
	var out []string
	for _, part := range strings.Split(q, ";\n") {
		var b strings.Builder
		for _, line := range strings.Split(part, "\n") {
			if t := strings.TrimSpace(line); t == "" || strings.HasPrefix(t, "--") {
				continue
			}
			b.WriteString(line)
			b.WriteByte('\n')
		}
		if st := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(b.String()), ";")); st != "" {
			out = append(out, st)
		}
	}
	return out
}

package store

import (
	"context"
	"database/sql"
	"strings"
)

// AuditKindPlans returns the query plans of the two queries a read by
// kind runs, as they run: the kinds under prefix, and the newest records
// of kind. Under SQLite they are EXPLAIN QUERY PLAN's; under PostgreSQL,
// EXPLAIN's of the kinds query's generic plan (pgx caches the statement)
// and of the rows query planned with its values (customPlan).
func (s *DB) AuditKindPlans(ctx context.Context, prefix, kind string) (kinds, rows string, err error) {
	explain := "EXPLAIN QUERY PLAN "
	if s.dialect == Postgres {
		explain = "EXPLAIN "
	}
	q, args := s.auditKindsQuery(prefix)
	if s.dialect == Postgres {
		conn, err := s.db.Conn(ctx)
		if err != nil {
			return "", "", err
		}
		defer conn.Close()
		if _, err := conn.ExecContext(ctx, "SET plan_cache_mode = force_generic_plan"); err != nil {
			return "", "", err
		}
		defer conn.ExecContext(ctx, "RESET plan_cache_mode")
		if _, err := conn.ExecContext(ctx, "PREPARE moatless_kinds AS "+q); err != nil {
			return "", "", err
		}
		defer conn.ExecContext(ctx, "DEALLOCATE moatless_kinds")
		succ, _ := prefixSuccessor(prefix)
		lit := func(v string) string { return "'" + strings.ReplaceAll(v, "'", "''") + "'" }
		if kinds, err = collect(conn.QueryContext(ctx, "EXPLAIN EXECUTE moatless_kinds("+lit(prefix)+", "+lit(succ)+")")); err != nil {
			return "", "", err
		}
	} else if kinds, err = collect(s.db.QueryContext(ctx, explain+q, args...)); err != nil {
		return "", "", err
	}
	rows, err = collect(s.db.QueryContext(ctx, explain+s.auditKindRowsQuery(true), s.customPlan(int64(1<<62), 100, int64(1), kind)...))
	return kinds, rows, err
}

// collect joins the text columns of every row, a line per row.
func collect(r *sql.Rows, err error) (string, error) {
	if err != nil {
		return "", err
	}
	defer r.Close()
	cols, err := r.Columns()
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for r.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := r.Scan(ptrs...); err != nil {
			return "", err
		}
		for _, v := range vals {
			switch v := v.(type) {
			case string:
				b.WriteString(v + " ")
			case []byte:
				b.WriteString(string(v) + " ")
			}
		}
		b.WriteString("\n")
	}
	return b.String(), r.Err()
}

// FailInserts makes every insert into table fail, with a trigger, until
// the returned func drops it: a store failing in the middle of a write.
func (s *DB) FailInserts(ctx context.Context, table string) (func() error, error) {
	stmts := []string{"CREATE TRIGGER fail_" + table + " BEFORE INSERT ON " + table + " BEGIN SELECT RAISE(ABORT, 'injected failure'); END"}
	undo := []string{"DROP TRIGGER fail_" + table}
	if s.dialect == Postgres {
		stmts = []string{
			"CREATE FUNCTION fail_" + table + "() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$",
			"CREATE TRIGGER fail_" + table + " BEFORE INSERT ON " + table + " FOR EACH ROW EXECUTE FUNCTION fail_" + table + "()",
		}
		undo = []string{"DROP TRIGGER fail_" + table + " ON " + table, "DROP FUNCTION fail_" + table + "()"}
	}
	run := func(l []string) error {
		for _, q := range l {
			if _, err := s.db.ExecContext(ctx, q); err != nil {
				return err
			}
		}
		return nil
	}
	return func() error { return run(undo) }, run(stmts)
}

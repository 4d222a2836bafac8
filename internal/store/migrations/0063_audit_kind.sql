-- The dashboard, "moatless audit list --kind" and the detectors read the
-- audit log by kind prefix, newest first (AuditRowsRangeKinds): without
-- this index each such read scanned the log back from its head until it
-- had a page, the whole log when the kind is rare. The column is indexed
-- in byte order ({{collate_c}}: BINARY in SQLite, "C" in PostgreSQL) so
-- that a prefix is one index range whatever the database's collation.
CREATE INDEX IF NOT EXISTS audit_log_kind ON audit_log (kind {{collate_c}}, seq);

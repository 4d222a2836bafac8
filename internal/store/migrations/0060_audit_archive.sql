-- Archived audit segments. Records older than the retention are written to
-- segment files (internal/audit/archive.go) and deleted from audit_log; each
-- row here says which records a file held and where the chain continues:
-- the first record left in audit_log has seq last_seq + 1 and previous hash
-- last_hash of the newest segment. The file's SHA-256 lets a verifier check
-- it is the file that was written.
CREATE TABLE IF NOT EXISTS audit_archive (
    first_seq BIGINT PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    last_hash {{blob}} NOT NULL,
    records BIGINT NOT NULL,
    file TEXT NOT NULL,
    file_sha256 TEXT NOT NULL,
    archived_at BIGINT NOT NULL,
    archived_by TEXT NOT NULL
);

-- Nodes are evicted (internal/server) by the expiry of their node SVID.
CREATE INDEX IF NOT EXISTS nodes_not_after ON nodes (not_after);
CREATE INDEX IF NOT EXISTS svids_issued_to ON svids (issued_to);

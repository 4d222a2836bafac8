-- The audit log: an append-only hash chain. Each record's hash covers its
-- content and the previous record's hash (see internal/audit). audit_head
-- holds the last sequence number and hash; appenders lock it, so appends
-- from several replicas serialize, and a truncated tail is detectable.
CREATE TABLE IF NOT EXISTS audit_log (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    subject TEXT NOT NULL,
    outcome TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash {{blob}} NOT NULL,
    hash {{blob}} NOT NULL
);

CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash {{blob}} NOT NULL
);

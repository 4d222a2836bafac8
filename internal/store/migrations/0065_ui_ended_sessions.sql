-- ui_ended_sessions: dashboard sessions that were logged out, kept until
-- they would have expired anyway (their sealed cookie carries the expiry).
-- Every replica reads it on every dashboard request (internal/ui), so a
-- logout on one replica ends the session on all of them at once, even for
-- a copy of the cookie taken before. Expired rows are pruned.
CREATE TABLE IF NOT EXISTS ui_ended_sessions (
    id TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS ui_ended_sessions_expires ON ui_ended_sessions (expires_at);

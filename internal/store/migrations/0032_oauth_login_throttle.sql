-- Login throttling counters, shared by every server replica. key is an
-- HMAC of a user name or client address (never the raw input).
CREATE TABLE IF NOT EXISTS oauth_login_throttle (
    key TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    last_failure BIGINT NOT NULL,
    locked_until BIGINT NOT NULL
);

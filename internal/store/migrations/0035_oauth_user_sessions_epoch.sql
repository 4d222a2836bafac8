-- Counts how often a user's sessions were ended (password or MFA reset,
-- deletion). A login records it when the password is checked and finishes
-- only if it has not moved since, so a login in progress across a reset
-- cannot open a session.
ALTER TABLE oauth_users ADD COLUMN sessions_epoch BIGINT NOT NULL DEFAULT 0;

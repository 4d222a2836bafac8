-- Which token each exchanged access token was exchanged from (RFC 8693),
-- so revoking a token revokes every token exchanged from it. A token
-- that was exchanged from gets a row too (parent_jti empty when it was
-- not itself exchanged): an exchange and a revocation of the same token
-- both write that row first, so one of them waits for the other.
CREATE TABLE IF NOT EXISTS oauth_token_links (
    jti TEXT PRIMARY KEY,
    parent_jti TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS oauth_token_links_parent ON oauth_token_links (parent_jti);

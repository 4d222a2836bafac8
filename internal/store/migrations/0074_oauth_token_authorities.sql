-- The CA authorities (X.509 authority or JWT key IDs, as `moatless ca show`
-- lists them) that an access token's issuance relied on: the key that
-- signed the JWT-SVID it was exchanged from, the chain of the X509-SVID
-- its client authenticated with. Revoking such an authority revokes the
-- tokens (and what was exchanged from them) instead of leaving them valid
-- until they expire.
CREATE TABLE IF NOT EXISTS oauth_token_authorities (
    authority TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (authority, jti)
);

CREATE INDEX IF NOT EXISTS oauth_token_authorities_expiry ON oauth_token_authorities (expires_at);
